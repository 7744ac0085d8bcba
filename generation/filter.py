"""Stage 3c: semantic filtering (paper §III-C): detect and crop the vehicle, check its color with CLIP,
drop near-duplicates, and keep every score.

Scoring runs the models once per image (sharded and resumable like generation) and stores boxes, confidences,
crop files, CLIP color similarities and CLIP embeddings. Deciding is pure (`vehicle_diff.generation.scoring.decide`), so
`--rescore_only` re-applies other thresholds to the stored scores without loading any model.

    vehicle-diff filter --generated out/generated --output_dir out/filtered
    vehicle-diff filter --generated out/generated --output_dir out/filtered --rescore_only --near_duplicate_threshold 0.9
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vehicle_diff.config import check_ranges, parse_config, save_config
from vehicle_diff.errors import UserInputError
from vehicle_diff.io import atomic_path, sha256_file
from vehicle_diff.jobs import (
    JOB_FILE,
    Job,
    changed_parts,
    duplicates,
    output_settings,
    read_json,
    read_shard,
    shard_path,
    write_parquet,
    write_plan,
)
from vehicle_diff.loading import PrefetchedBatches, default_num_workers

from .prompts import VERI776_COLORS
from .scoring import (
    BOX_RULES,
    REJECT_REASONS,
    ClipScorer,
    Thresholds,
    VehicleDetector,
    close_identity_pairs,
    decide,
    load_image,
    near_duplicates,
    score_images,
)

SCORING_SETTINGS = (
    "detector",
    "detector_imgsz",
    "detection_floor",
    "detection_iou",
    "box_rule",
    "detection_confidence",
    "crop_margin",
    "crop_pad",
    "crop_square",
    "clip_model",
    "colors",
    "color_prompt",
    "batch_size",
    "mixed_precision",
)


@dataclass
class FilterConfig:
    """Detect + crop the vehicle, check its color with CLIP, drop near-duplicates; keep every score."""

    output_dir: str = field(
        default="vehicle-diff-output/filtered", metadata={"help": "crops/, records.parquet, summary"}
    )
    preset: str = field(default="paper", metadata={"help": "paper, toy, tiny, or a YAML file"})
    generated: str = field(default="vehicle-diff-output/generated", metadata={"help": "the generate stage's folder"})
    detector: str = field(default="yolov5x6u.pt", metadata={"help": "ultralytics weights (the paper: YOLOv5x6)"})
    detector_imgsz: int = field(default=1280, metadata={"help": "inference size (YOLOv5x6 is trained at 1280)"})
    detection_floor: float = field(default=0.05, metadata={"help": "boxes below this are not even recorded"})
    detection_iou: float = field(default=0.45, metadata={"help": "NMS IoU (YOLOv5's detect.py: 0.45)"})
    box_rule: str = field(
        default="most_confident",
        metadata={"help": "the one box: most_confident (YOLOv5 max_det=1, the paper) or largest (confident boxes)"},
    )
    detection_confidence: float = field(default=0.65, metadata={"help": "keep boxes at or above (paper: 0.65)"})
    min_box_side: float = field(default=250, metadata={"help": "drop a box whose width or height is <= this ..."})
    reference_side: float = field(default=1024, metadata={"help": "... on images of this size; scales with the image"})
    crop_margin: float = field(default=0.0, metadata={"help": "grow each side of the crop by this fraction of the box"})
    crop_pad: float = field(default=0.0, metadata={"help": "... and by this many pixels"})
    crop_square: bool = False
    clip_model: str = field(default="hf-hub:timm/vit_large_patch14_clip_224.openai", metadata={"help": "open_clip id"})
    colors: list[str] = field(default_factory=lambda: list(VERI776_COLORS), metadata={"help": "the prompt library's"})
    color_prompt: str = field(default="a {color} vehicle", metadata={"help": "paper: 'a red vehicle'"})
    color_check: bool = True
    near_duplicate_threshold: float = field(default=0.95, metadata={"help": "CLIP cosine; 1 switches it off"})
    identity_pair_threshold: float = field(default=0.95, metadata={"help": "report identity pairs closer than this"})
    min_images_per_identity: int = 2
    batch_size: int = 16
    mixed_precision: str = field(default="no", metadata={"help": "no or fp16 (the CLIP model)"})
    dataloader_num_workers: int | None = field(
        default=None, metadata={"help": "processes that decode the next batches (default: one a spare CPU core)"}
    )
    contact_sheet_images: int = 24
    rescore_only: bool = field(default=False, metadata={"help": "re-decide from stored scores; load no model"})
    overwrite: bool = field(default=False, metadata={"help": "replace this stage's earlier outputs in --output_dir"})
    dry_run: bool = field(default=False, metadata={"help": "print and write plan.json; load no model"})

    def __post_init__(self):
        check_ranges(self, non_negative=("contact_sheet_images", "dataloader_num_workers"))
        if not self.colors:
            raise UserInputError("--colors: give at least one color")
        if self.box_rule not in BOX_RULES:
            raise UserInputError(f"--box_rule {self.box_rule!r}: use one of {', '.join(BOX_RULES)}")
        for name in (
            "detection_floor",
            "detection_iou",
            "detection_confidence",
            "identity_pair_threshold",
            "near_duplicate_threshold",
        ):
            if not 0 <= getattr(self, name) <= 1:
                raise UserInputError(f"--{name} must be in [0, 1] (got {getattr(self, name)})")
        if self.detection_floor > self.detection_confidence:
            raise UserInputError("--detection_floor must not exceed --detection_confidence")
        for name in ("detector_imgsz", "batch_size", "reference_side"):
            if getattr(self, name) <= 0:
                raise UserInputError(f"--{name} must be positive (got {getattr(self, name)})")
        if min(self.min_box_side, self.crop_margin, self.crop_pad, self.min_images_per_identity) < 0:
            raise UserInputError("--min_box_side, --crop_margin, --crop_pad and --min_images_per_identity must be >= 0")
        if "{color}" not in self.color_prompt:
            raise UserInputError(f"--color_prompt {self.color_prompt!r} must contain {{color}}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise UserInputError(f"--mixed_precision {self.mixed_precision!r}: use no, fp16 or bf16")
        self.colors = [color.strip().lower() for color in self.colors]

    @property
    def crop_settings(self) -> dict:
        """The keyword arguments of `score_images` that come from this config (filter and select cut alike)."""
        return {"colors": self.colors, "detection_confidence": self.detection_confidence, "box_rule": self.box_rule,
                "crop_margin": self.crop_margin, "crop_pad": self.crop_pad, "crop_square": self.crop_square}  # fmt: skip

    @property
    def thresholds(self) -> Thresholds:
        return Thresholds(
            self.detection_confidence,
            self.min_box_side,
            self.reference_side,
            self.color_check,
            self.near_duplicate_threshold,
        )


def read_generation_records(generated: str):
    """The generate stage's records, checked before any model loads: finished, ids unique."""
    import pyarrow.parquet as pq

    path = Path(generated) / "records.parquet"
    if not path.is_file():
        raise UserInputError(
            f"--generated {generated}: no records.parquet; run (or finish) `vehicle-diff generate` first"
        )
    try:
        table = pq.read_table(path)
    except Exception as error:  # pyarrow raises several types for a damaged file
        raise UserInputError(f"--generated {path}: not a readable Parquet file ({error})") from error
    needed = ("image_id", "identity", "color", "file_name", "width", "height")
    missing = [c for c in needed if c not in table.column_names]
    if missing:
        raise UserInputError(f"--generated {path}: not generation records (missing columns {missing})")
    repeated = duplicates(table.column("image_id").to_pylist())
    if repeated:
        raise UserInputError(f"--generated {path}: image id(s) {repeated[:3]} appear more than once; regenerate")
    return table


def input_digest(table, generated: Path) -> str:
    """The content the scores depend on: every image's id, seed and the bytes of its file on disk. Not the hash
    the generation record carries: an image replaced or damaged since generation is scored as it is now, so
    its old scores must not be reused."""
    import hashlib

    from tqdm.auto import tqdm

    wanted = [c for c in ("image_id", "seed", "file_name") if c in table.column_names]
    digest = hashlib.sha256()
    rows = table.select(wanted).to_pylist()
    # the paper's 148,200 images take minutes to read: a bar on a terminal (none in logs and pipes)
    for row in tqdm(rows, desc="hashing generated images", unit="img", leave=False, disable=None):
        file = generated / row["file_name"]
        image_hash = sha256_file(file) if file.is_file() else "missing"
        digest.update(f"{row['image_id']}\0{row.get('seed')}\0{image_hash}\n".encode())
    return digest.hexdigest()


def score_batch(
    records: list[dict], loaded: list, config: FilterConfig, out_dir: Path, detector, clip, color_texts: np.ndarray
) -> tuple[list[dict], np.ndarray]:
    """Run the models on one batch of decoded images (`load_image` of each record's file) and save the crops: the
    records with their scores, and the embeddings."""
    scores, crops, embeddings = score_images(
        [image for image, _ in loaded],
        [record["color"] for record in records],
        detector,
        clip,
        color_texts,
        **config.crop_settings,
    )
    scored = []
    for record, (_, error), score, crop in zip(records, loaded, scores, crops, strict=True):
        row = {**record, **score, "unreadable_error": error, "crop_file": None, "crop_sha256": None}
        if crop is not None:
            row["crop_file"] = f"crops/{record['identity']}/{record['image_id']}.png"
            with atomic_path(out_dir / row["crop_file"]) as tmp:
                crop.save(tmp, format="PNG")
                row["crop_sha256"] = sha256_file(tmp)
        scored.append(row)
    return scored, embeddings


def decided_records(scores_dir: Path, num_batches: int, thresholds: Thresholds):
    """Stream (record with decision, embedding) identity by identity, in generation order."""

    def finish(group):
        records = [record for record, _ in group]
        reasons = [decide(record, thresholds) for record in records]
        similarity, duplicate = near_duplicates(
            np.stack([e for _, e in group]), [r is None for r in reasons], thresholds.near_duplicate
        )
        for (record, embedding), reason, score, is_duplicate in zip(group, reasons, similarity, duplicate, strict=True):
            reason = "near_duplicate" if is_duplicate else reason
            yield (
                {**record, "near_duplicate_similarity": score, "kept": reason is None, "reject_reason": reason},
                embedding,
            )

    group, finished = [], set()
    for batch_index in range(num_batches):
        embeddings = np.load(scores_dir / f"batch-{batch_index:07d}.npy")
        records = read_shard(scores_dir / f"batch-{batch_index:07d}.jsonl")
        for record, embedding in zip(records, embeddings, strict=True):
            if group and record["identity"] != group[0][0]["identity"]:
                finished.add(group[0][0]["identity"])
                yield from finish(group)
                group = []
            if record["identity"] in finished:
                raise UserInputError(
                    f"{scores_dir}: identity {record['identity']} is not contiguous; regenerate the records"
                )
            group.append((record, embedding))
    if group:
        yield from finish(group)


def summarize(records_file: Path, config: FilterConfig, identity_embeddings: dict) -> dict:
    import pyarrow.parquet as pq

    table = pq.read_table(records_file, columns=["identity", "color", "predicted_color", "kept", "reject_reason"])
    columns = table.to_pydict()
    reasons = Counter(reason or "kept" for reason in columns["reject_reason"])
    confusion = defaultdict(Counter)
    for color, predicted in zip(columns["color"], columns["predicted_color"], strict=True):
        if predicted is not None:
            confusion[color][predicted] += 1
    kept_per_identity = Counter(i for i, kept in zip(columns["identity"], columns["kept"], strict=True) if kept)
    identities = sorted(set(columns["identity"]))
    too_few = [i for i in identities if kept_per_identity[i] < config.min_images_per_identity]
    with_kept = sorted(identity_embeddings)
    pairs = close_identity_pairs(
        with_kept,
        np.stack([identity_embeddings[i] for i in with_kept]) if with_kept else np.zeros((0, 1)),
        config.identity_pair_threshold,
    )
    counts = list(kept_per_identity.values()) or [0]
    return {
        "images": table.num_rows,
        "kept": reasons.get("kept", 0),
        "pass_rate": round(reasons.get("kept", 0) / max(table.num_rows, 1), 4),
        "per_reason": {reason: reasons.get(reason, 0) for reason in ("kept", *REJECT_REASONS)},
        "identities": len(identities),
        "identities_with_enough_images": len(identities) - len(too_few),
        "min_images_per_identity": config.min_images_per_identity,
        "identities_with_too_few_images": too_few,
        "kept_per_identity": {"min": min(counts), "mean": round(sum(counts) / len(counts), 2), "max": max(counts)},
        "color_confusion": {color: dict(confusion[color]) for color in config.colors if color in confusion},
        "close_identity_pairs": [{"a": a, "b": b, "cosine": round(c, 4)} for a, b, c in pairs[:100]],
        "thresholds": {**config.thresholds.__dict__, "identity_pair_threshold": config.identity_pair_threshold},
    }


def summary_markdown(summary: dict) -> str:
    lines = [
        "# Filter summary",
        "",
        f"{summary['kept']} of {summary['images']} images kept ({summary['pass_rate']:.1%}).",
        "",
        "| reason | images |",
        "|---|---|",
    ]
    lines += [f"| {reason} | {count} |" for reason, count in summary["per_reason"].items()]
    lines += [
        "",
        f"Identities: {summary['identities']}, with at least {summary['min_images_per_identity']} kept images: "
        f"{summary['identities_with_enough_images']}. Kept per identity: {summary['kept_per_identity']}.",
        "",
        "## Color confusion (prompt color -> CLIP prediction)",
        "",
    ]
    colors = sorted({p for row in summary["color_confusion"].values() for p in row} | set(summary["color_confusion"]))
    lines += ["| prompt \\ predicted | " + " | ".join(colors) + " |", "|---" * (len(colors) + 1) + "|"]
    lines += [
        f"| {c} | " + " | ".join(str(row.get(p, 0)) for p in colors) + " |"
        for c, row in summary["color_confusion"].items()
    ]
    lines += [
        "",
        f"Close identity pairs (mean-embedding cosine > {summary['thresholds']['identity_pair_threshold']}): "
        f"{len(summary['close_identity_pairs'])}",
        "",
    ]
    return "\n".join(lines) + "\n"


def tile_caption(row: dict) -> list[str]:
    """What a contact-sheet tile says: which image, prompt color -> CLIP's color (its similarity), detection
    confidence, and why it was rejected."""
    similarity = (row.get("color_similarities") or {}).get(row.get("predicted_color"))
    color = f"{row['color']} -> {row['predicted_color'] or '-'}" + (
        f" ({similarity:.2f})" if similarity is not None else ""
    )
    confidence = f"det {row['det_confidence']:.2f}" if row.get("det_confidence") is not None else "no vehicle box"
    lines = [row["image_id"], color, confidence, row["reject_reason"] or "kept"]
    if row.get("unreadable_error"):
        lines.append(row["unreadable_error"])
    return lines


def write_contact_sheets(records_file: Path, config: FilterConfig, generated: Path, out_dir: Path) -> list[Path]:
    """One sheet of kept crops and one per reject reason (crop where there is one, else the whole image), and
    the color confusion plot."""
    import pyarrow.parquet as pq

    from vehicle_diff.contact_sheet import contact_sheet
    from vehicle_diff.plots import color_confusion

    columns = [
        "image_id",
        "file_name",
        "crop_file",
        "reject_reason",
        "predicted_color",
        "color",
        "det_confidence",
        "color_similarities",
        "unreadable_error",
    ]
    rows = pq.read_table(records_file, columns=columns).to_pylist()
    written = []
    for reason in ("kept", *REJECT_REASONS):
        chosen = [r for r in rows if (r["reject_reason"] or "kept") == reason][: config.contact_sheet_images]
        if not chosen:
            continue
        tiles = [out_dir / row["crop_file"] if row["crop_file"] else generated / row["file_name"] for row in chosen]
        borders = ["#2e7d32" if reason == "kept" else "#c62828"] * len(chosen)
        sheet = out_dir / "contact_sheets" / f"{reason}.png"
        total = sum((r["reject_reason"] or "kept") == reason for r in rows)
        with atomic_path(sheet) as tmp:
            contact_sheet(
                tiles,
                [tile_caption(row) for row in chosen],
                borders=borders,
                columns=6,
                cell=160,
                title=f"{reason}: {len(chosen)} of {total} images",
            ).save(tmp, format="PNG")
        written.append(sheet)
    scored = [r for r in rows if r["predicted_color"] is not None]
    if scored:
        color_confusion(
            [r["color"] for r in scored],
            [r["predicted_color"] for r in scored],
            config.colors,
            out_dir / "color_confusion.png",
            title="prompt color vs CLIP color (filter)",
        )
    return written


def job_for(config: FilterConfig, table=None) -> Job:
    """The filter's job: scores depend on the scoring settings and the generated images' content; the
    decisions (done-marker) on every setting."""
    from vehicle_diff.models import resolved_revision

    table = table if table is not None else read_generation_records(config.generated)
    components = {
        "settings": {name: getattr(config, name) for name in SCORING_SETTINGS},
        "generated_images": input_digest(table, Path(config.generated)),
        "detector_revision": resolved_revision(config.detector, flag="--detector"),
        "clip_revision": resolved_revision(config.clip_model, flag="--clip_model"),
    }
    return Job(
        config.output_dir,
        "filter",
        components,
        overwrite=config.overwrite,
        inputs=[config.generated],
        shards="scores",
        result_settings=output_settings(config, ignore=("generated", "rescore_only")),
        owned=[
            "crops/*/*.png",
            "records.parquet",
            "summary.json",
            "summary.md",
            *(f"contact_sheets/{reason}.png" for reason in ("kept", *REJECT_REASONS)),
            "color_confusion.png",
            "config.yaml",
            "plan.json",
        ],
    )


def check_rescore(job: Job, config: FilterConfig, num_batches: int, ids_of) -> None:
    """`--rescore_only` decides on stored scores: they must be complete and made from the same images and
    scoring settings, except a detection threshold that may only be raised."""
    stored = read_json(job.out_dir / JOB_FILE)
    if not stored or stored.get("stage") != "filter":
        raise UserInputError(f"--rescore_only: {job.out_dir} has no filter scores; run the filter without it first")
    old, new = stored["components"], job.components
    scoring = old["settings"]["detection_confidence"]
    if config.detection_confidence < scoring:
        raise UserInputError(
            f"--rescore_only can raise --detection_confidence, not lower it below the scoring "
            f"threshold {scoring}; re-run without --rescore_only"
        )

    def comparable(components):
        settings = {k: v for k, v in components["settings"].items() if k != "detection_confidence"}
        return {**components, "settings": settings}

    if comparable(old) != comparable(new):
        changes = "; ".join(changed_parts(comparable(old), comparable(new))[:4])
        raise UserInputError(
            f"--rescore_only: the scores in {job.out_dir} were made from other images or scoring "
            f"settings ({changes}); re-run without --rescore_only (and with --overwrite)"
        )
    missing = num_batches - len(job.valid_batches(num_batches, ids_of))
    if missing:
        raise UserInputError(
            f"--rescore_only: {missing} batch(es) of scores in {job.out_dir} are unfinished; run "
            "the filter without --rescore_only to finish them"
        )


def planned_generation(generated: str) -> int | None:
    """The image count of a generation that has only been planned (`generate --dry_run` wrote its plan.json
    there and no records yet), or None."""
    folder = Path(generated)
    plan = read_json(folder / "plan.json")
    if (folder / "records.parquet").is_file() or not plan or plan.get("stage") != "generate":
        return None
    return int(plan["images"])


def dry_run_plan(config: FilterConfig, images: int, *, from_plan: bool) -> dict:
    return {
        "stage": "filter",
        "images": images,
        "images_from": "generate's plan.json (not generated yet)" if from_plan else "the generation records",
        "batches": math.ceil(images / config.batch_size),
        "batch_size": config.batch_size,
        "detector": config.detector,
        "detector_imgsz": config.detector_imgsz,
        "clip_model": config.clip_model,
        "estimated_disk_gb": round(images * 0.35e6 / 1e9, 2),
        "disk_estimate_basis": "one PNG crop of ~0.35 MB per image",
    }


def filter_images(config: FilterConfig) -> Path:
    """Score every not-yet-scored batch (models run once per image), then decide, summarize and draw."""
    import torch
    from accelerate import PartialState
    from tqdm.auto import tqdm

    from vehicle_diff.models import torch_dtype

    planned = planned_generation(config.generated) if config.dry_run else None
    if planned is not None:  # the images are still to be generated: plan from generate's own plan
        return write_plan(config.output_dir, dry_run_plan(config, planned, from_plan=True))
    table = read_generation_records(config.generated)
    unknown = sorted(set(table.column("color").to_pylist()) - set(config.colors))
    if unknown:
        raise UserInputError(
            f"the generated images use color(s) {unknown} that --colors {config.colors} lacks; add them"
        )
    num_batches = math.ceil(table.num_rows / config.batch_size)
    if config.dry_run:
        return write_plan(config.output_dir, dry_run_plan(config, table.num_rows, from_plan=False))
    state = PartialState(cpu=not torch.cuda.is_available())
    generated, job = Path(config.generated), job_for(config, table)
    out_dir, scores_dir = job.out_dir, job.shards_dir

    def ids_of(batch_index: int) -> list[str]:
        return table.slice(batch_index * config.batch_size, config.batch_size).column("image_id").to_pylist()

    if config.rescore_only:
        check_rescore(job, config, num_batches, ids_of)
    else:
        job.open()
        models, progress = None, None
        order = list(range(num_batches))
        order = order[state.process_index :: state.num_processes] + order
        file_names = table.column("file_name").to_pylist()

        def files_of(batch_index: int) -> list[Path]:
            return [generated / name for name in file_names[batch_index * config.batch_size :][: config.batch_size]]

        workers = config.dataloader_num_workers
        decoded = PrefetchedBatches(
            [i for i in dict.fromkeys(order) if not shard_path(scores_dir, i).exists()],
            files_of,
            load_image,
            num_workers=default_num_workers(state.num_processes) if workers is None else workers,
        )
        for batch_index in job.batches(num_batches, ids_of, order=order):
            if models is None:
                dtype = torch_dtype(config.mixed_precision)
                detector = VehicleDetector(
                    config.detector,
                    imgsz=config.detector_imgsz,
                    device=state.device,
                    floor=config.detection_floor,
                    iou=config.detection_iou,
                )
                clip = ClipScorer(config.clip_model, device=state.device, dtype=dtype)
                color_texts = clip.encode_texts([config.color_prompt.format(color=c) for c in config.colors])
                models = (detector, clip, color_texts)
                progress = tqdm(
                    total=table.num_rows,
                    desc=f"filter [process {state.process_index}]",
                    unit="img",
                    position=state.process_index,
                )
            records = table.slice(batch_index * config.batch_size, config.batch_size).to_pylist()
            scored, embeddings = score_batch(records, decoded(batch_index), config, out_dir, *models)
            embeddings_file = scores_dir / f"batch-{batch_index:07d}.npy"
            with atomic_path(embeddings_file) as tmp:
                with open(tmp, "wb") as handle:
                    np.save(handle, embeddings.astype(np.float16))
            job.write_shard(batch_index, scored, side_files=[embeddings_file])
            progress.update(len(records))
        decoded.close()
        if progress is not None:
            progress.close()
    state.wait_for_everyone()

    if state.is_main_process:
        with job.locked():
            summary = decide_and_report(config, job, num_batches, ids_of, generated)
        print(
            f"Kept {summary['kept']} of {summary['images']} images ({summary['pass_rate']:.1%})."
            + (
                " Rejected: "
                + ", ".join(f"{r} {n}" for r, n in summary["per_reason"].items() if n and r != "kept")
                + "."
                if summary["kept"] < summary["images"]
                else ""
            )
        )
        print(
            f"Records: {out_dir / 'records.parquet'}\nSummary: {out_dir / 'summary.md'}\n"
            f"Contact sheets: {out_dir / 'contact_sheets'}"
        )
    state.wait_for_everyone()
    return out_dir


def decide_and_report(config: FilterConfig, job: Job, num_batches: int, ids_of, generated: Path) -> dict:
    """The pure decisions on the stored scores, the records file, the summary and the contact sheets."""
    out_dir = job.out_dir
    save_config(config, out_dir / "config.yaml", stage="filter")
    records_file = out_dir / "records.parquet"
    for _ in job.records(num_batches, ids_of):  # every shard whole and in the plan, before deciding
        pass
    write_parquet(
        lambda: (record for record, _ in decided_records(job.shards_dir, num_batches, config.thresholds)), records_file
    )
    identity_sums: dict[str, np.ndarray] = {}
    for record, embedding in decided_records(job.shards_dir, num_batches, config.thresholds):
        if record["kept"]:
            identity_sums[record["identity"]] = identity_sums.get(record["identity"], 0) + embedding.astype(np.float32)
    summary = summarize(records_file, config, identity_sums)
    with atomic_path(out_dir / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    with atomic_path(out_dir / "summary.md") as tmp:
        tmp.write_text(summary_markdown(summary))
    for reason in ("kept", *REJECT_REASONS):  # ours: a reason that no longer occurs must not keep its sheet
        (out_dir / "contact_sheets" / f"{reason}.png").unlink(missing_ok=True)
    (out_dir / "color_confusion.png").unlink(missing_ok=True)
    write_contact_sheets(records_file, config, generated, out_dir)
    job.mark_done({"images": summary["images"], "kept": summary["kept"]})
    return summary


def main(argv: list[str] | None = None) -> Path:
    return filter_images(parse_config(FilterConfig, "filter", argv))


if __name__ == "__main__":
    from vehicle_diff.cli import run_main

    run_main(main)
