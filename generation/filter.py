"""Stage 3c: semantic filtering (paper §III-C): detect and crop the vehicle, check its color with CLIP,
drop near-duplicates, and keep every score.

Scoring runs the models once per image (sharded and resumable like generation) and stores boxes, confidences,
crop files, CLIP color similarities and CLIP embeddings. Deciding is pure (`generation.scoring.decide`), so
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

from vehicle_diff.config import parse_config, save_config
from vehicle_diff.errors import UserInputError
from vehicle_diff.io import atomic_path, remove_partial_writes
from vehicle_diff.records import check_plan, done_batches, merge_shards, shard_path, write_shard

from .prompts import VERI776_COLORS
from .scoring import (  # fmt: skip
    REJECT_REASONS,
    ClipScorer,
    Thresholds,
    VehicleDetector,
    choose_box,
    close_identity_pairs,
    crop_box,
    decide,
    near_duplicates,
    predict_color,
)

SCORING_SETTINGS = ("detector", "detector_imgsz", "detection_floor", "detection_confidence", "crop_margin",
                    "crop_square", "clip_model", "colors", "color_prompt", "batch_size", "mixed_precision")  # fmt: skip


@dataclass
class FilterConfig:
    """Detect + crop the vehicle, check its color with CLIP, drop near-duplicates; keep every score."""

    output_dir: str = field(
        default="vehicle-diff-output/filtered", metadata={"help": "crops/, records.parquet, summary"}
    )
    preset: str = field(default="paper", metadata={"help": "paper, tiny, or a YAML file"})
    generated: str = field(default="vehicle-diff-output/generated", metadata={"help": "the generate stage's folder"})
    detector: str = field(default="yolov5x6u.pt", metadata={"help": "ultralytics weights (the paper: YOLOv5x6)"})
    detector_imgsz: int = field(default=1280, metadata={"help": "inference size (YOLOv5x6 is trained at 1280)"})
    detection_floor: float = field(default=0.05, metadata={"help": "boxes below this are not even recorded"})
    detection_confidence: float = field(default=0.65, metadata={"help": "keep boxes at or above (paper: 0.65)"})
    min_box_side: float = field(default=250, metadata={"help": "drop a box whose width or height is <= this ..."})
    reference_side: float = field(default=1024, metadata={"help": "... on images of this size; scales with the image"})
    crop_margin: float = field(default=0.0, metadata={"help": "grow the crop by this fraction of the box"})
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
    contact_sheet_images: int = 24
    rescore_only: bool = field(default=False, metadata={"help": "re-decide from stored scores; load no model"})

    def __post_init__(self):
        for name in ("detection_floor", "detection_confidence", "identity_pair_threshold", "near_duplicate_threshold"):
            if not 0 <= getattr(self, name) <= 1:
                raise UserInputError(f"--{name} must be in [0, 1] (got {getattr(self, name)})")
        if self.detection_floor > self.detection_confidence:
            raise UserInputError("--detection_floor must not exceed --detection_confidence")
        for name in ("detector_imgsz", "batch_size", "reference_side"):
            if getattr(self, name) <= 0:
                raise UserInputError(f"--{name} must be positive (got {getattr(self, name)})")
        if self.min_box_side < 0 or self.crop_margin < 0 or self.min_images_per_identity < 0:
            raise UserInputError("--min_box_side, --crop_margin and --min_images_per_identity must be >= 0")
        if "{color}" not in self.color_prompt:
            raise UserInputError(f"--color_prompt {self.color_prompt!r} must contain {{color}}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise UserInputError(f"--mixed_precision {self.mixed_precision!r}: use no, fp16 or bf16")
        self.colors = [color.strip().lower() for color in self.colors]

    @property
    def thresholds(self) -> Thresholds:
        return Thresholds(self.detection_confidence, self.min_box_side, self.reference_side, self.color_check,
                          self.near_duplicate_threshold)  # fmt: skip


def read_generation_records(generated: str):
    import pyarrow.parquet as pq

    path = Path(generated) / "records.parquet"
    if not path.is_file():
        raise UserInputError(
            f"--generated {generated}: no records.parquet; run (or finish) `vehicle-diff generate` first"
        )
    return pq.read_table(path)


def load_image(path: Path):
    """The RGB image, or the reason it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.convert("RGB"), None
    except (OSError, ValueError, SyntaxError) as error:  # missing, truncated, not an image
        return None, f"{type(error).__name__}: {error}"


def score_batch(records: list[dict], config: FilterConfig, generated: Path, out_dir: Path, detector, clip,
                color_texts: np.ndarray) -> tuple[list[dict], np.ndarray]:  # fmt: skip
    """Run the models on one batch: detection, crop, CLIP embedding and color similarities."""
    loaded = [load_image(generated / record["file_name"]) for record in records]
    readable = [i for i, (image, _) in enumerate(loaded) if image is not None]
    detections = dict(zip(readable, detector([loaded[i][0] for i in readable]), strict=True))
    scored, crops, crop_rows = [], [], []
    for index, (record, (image, error)) in enumerate(zip(records, loaded, strict=True)):
        row = {**record, "unreadable_error": error, "det_box": None, "det_class": None, "det_confidence": None,
               "det_num_vehicles": 0, "crop_file": None, "crop_width": None, "crop_height": None,
               "color_similarities": None, "predicted_color": None}  # fmt: skip
        if image is not None:
            found = detections[index]
            row["det_num_vehicles"] = len(found["boxes"])
            chosen = choose_box(
                found["boxes"], found["confidences"], found["classes"], min_confidence=config.detection_confidence
            )
            if chosen is not None:
                box = [round(v, 2) for v in found["boxes"][chosen]]
                rectangle = crop_box(
                    box, image.width, image.height, margin=config.crop_margin, square=config.crop_square
                )
                crop = image.crop(rectangle)
                crop_file = f"crops/{record['identity']}/{record['image_id']}.png"
                with atomic_path(out_dir / crop_file) as tmp:
                    crop.save(tmp, format="PNG")
                row.update(det_box=box, det_class=found["classes"][chosen], det_confidence=round(found["confidences"][chosen], 5),
                           crop_file=crop_file, crop_width=crop.width, crop_height=crop.height)  # fmt: skip
                crops.append(crop)
                crop_rows.append(index)
        scored.append(row)
    embeddings = np.zeros((len(records), color_texts.shape[1]), dtype=np.float32)
    if crops:
        embeddings[crop_rows] = clip.encode_images(crops)
        similarities = embeddings[crop_rows] @ color_texts.T
        for row_index, values in zip(crop_rows, similarities, strict=True):
            scores = {color: round(float(v), 6) for color, v in zip(config.colors, values, strict=True)}
            scored[row_index]["color_similarities"] = scores
            scored[row_index]["predicted_color"] = predict_color(scores, scored[row_index]["color"])
    return scored, embeddings


def decided_records(scores_dir: Path, thresholds: Thresholds):
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
    for batch_index in sorted(done_batches(scores_dir)):
        embeddings = np.load(scores_dir / f"batch-{batch_index:07d}.npy")
        with shard_path(scores_dir, batch_index).open() as handle:
            for line, embedding in zip(handle, embeddings, strict=True):
                record = json.loads(line)
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
    pairs = close_identity_pairs(with_kept, np.stack([identity_embeddings[i] for i in with_kept]) if with_kept else np.zeros((0, 1)),
                                 config.identity_pair_threshold)  # fmt: skip
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
    lines = ["# Filter summary", "", f"{summary['kept']} of {summary['images']} images kept ({summary['pass_rate']:.1%}).", "",
             "| reason | images |", "|---|---|"]  # fmt: skip
    lines += [f"| {reason} | {count} |" for reason, count in summary["per_reason"].items()]
    lines += ["", f"Identities: {summary['identities']}, with at least {summary['min_images_per_identity']} kept images: "
              f"{summary['identities_with_enough_images']}. Kept per identity: {summary['kept_per_identity']}.", "",
              "## Color confusion (prompt color -> CLIP prediction)", ""]  # fmt: skip
    colors = sorted({p for row in summary["color_confusion"].values() for p in row} | set(summary["color_confusion"]))
    lines += ["| prompt \\ predicted | " + " | ".join(colors) + " |", "|---" * (len(colors) + 1) + "|"]
    lines += [
        f"| {c} | " + " | ".join(str(row.get(p, 0)) for p in colors) + " |"
        for c, row in summary["color_confusion"].items()
    ]
    lines += ["", f"Close identity pairs (mean-embedding cosine > {summary['thresholds']['identity_pair_threshold']}): "
              f"{len(summary['close_identity_pairs'])}", ""]  # fmt: skip
    return "\n".join(lines) + "\n"


def write_contact_sheets(records_file: Path, config: FilterConfig, generated: Path, out_dir: Path) -> list[Path]:
    """One sheet of kept crops and one per reject reason (crop where there is one, else the whole image)."""
    import pyarrow.parquet as pq

    from vehicle_diff.contact_sheet import contact_sheet

    columns = ["image_id", "file_name", "crop_file", "reject_reason", "predicted_color", "color", "det_confidence"]
    rows = pq.read_table(records_file, columns=columns).to_pylist()
    written = []
    for reason in ("kept", *REJECT_REASONS):
        chosen = [r for r in rows if (r["reject_reason"] or "kept") == reason][: config.contact_sheet_images]
        if not chosen:
            continue
        tiles, labels = [], []
        for row in chosen:
            path = out_dir / row["crop_file"] if row["crop_file"] else generated / row["file_name"]
            tiles.append(path)
            labels.append(f"{row['color']}->{row['predicted_color'] or '-'} {row['det_confidence'] or ''}")
        sheet = out_dir / "contact_sheets" / f"{reason}.png"
        with atomic_path(sheet) as tmp:
            contact_sheet(tiles, labels, title=f"{reason}: {len(chosen)} shown").save(tmp, format="PNG")
        written.append(sheet)
    return written


def main(argv: list[str] | None = None) -> Path:
    config = parse_config(FilterConfig, "filter", argv)
    import torch
    from accelerate import PartialState
    from tqdm.auto import tqdm

    state = PartialState(cpu=not torch.cuda.is_available())
    generated, out_dir = Path(config.generated), Path(config.output_dir)
    scores_dir = out_dir / "scores"
    table = read_generation_records(config.generated)
    unknown = sorted(set(table.column("color").to_pylist()) - set(config.colors))
    if unknown:
        raise UserInputError(
            f"the generated images use color(s) {unknown} that --colors {config.colors} lacks; add them"
        )
    num_batches = math.ceil(table.num_rows / config.batch_size)
    plan = {"generation_records": table.num_rows, **{name: getattr(config, name) for name in SCORING_SETTINGS}}

    if config.rescore_only:
        scored = json.loads((out_dir / "plan.json").read_text()) if (out_dir / "plan.json").exists() else None
        if scored is None or len(done_batches(scores_dir)) < num_batches:
            raise UserInputError(f"--rescore_only: {out_dir} has no complete scores; run the filter without it first")
        if config.detection_confidence < scored["detection_confidence"]:
            raise UserInputError(f"--rescore_only can raise --detection_confidence, not lower it below the scoring "
                                 f"threshold {scored['detection_confidence']}; re-run without --rescore_only")  # fmt: skip
    else:
        if state.is_main_process:
            remove_partial_writes(out_dir)
            check_plan(out_dir, plan)
        state.wait_for_everyone()
        todo = sorted(set(range(num_batches)) - done_batches(scores_dir))
        mine = todo[state.process_index :: state.num_processes]
        if mine:
            dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[config.mixed_precision]
            detector = VehicleDetector(
                config.detector, imgsz=config.detector_imgsz, device=state.device, floor=config.detection_floor
            )
            clip = ClipScorer(config.clip_model, device=state.device, dtype=dtype)
            color_texts = clip.encode_texts([config.color_prompt.format(color=c) for c in config.colors])
            progress = tqdm(total=sum(min(config.batch_size, table.num_rows - b * config.batch_size) for b in mine),
                            desc=f"filter [process {state.process_index}]", unit="img", position=state.process_index)  # fmt: skip
            for batch_index in mine:
                records = table.slice(batch_index * config.batch_size, config.batch_size).to_pylist()
                scored, embeddings = score_batch(records, config, generated, out_dir, detector, clip, color_texts)
                with atomic_path(scores_dir / f"batch-{batch_index:07d}.npy") as tmp:
                    with open(tmp, "wb") as handle:
                        np.save(handle, embeddings.astype(np.float16))
                write_shard(scores_dir, batch_index, scored)
                progress.update(len(records))
            progress.close()
        state.wait_for_everyone()
        if len(done_batches(scores_dir)) < num_batches:
            raise UserInputError(f"{out_dir}: scoring is unfinished; re-run the same command to finish it")

    if state.is_main_process:
        save_config(config, out_dir / "config.yaml", stage="filter")
        decided_dir = out_dir / ".decided"
        for stale in decided_dir.glob("batch-*.jsonl"):
            stale.unlink()
        identity_sums: dict[str, np.ndarray] = {}
        chunk, written = [], 0
        for record, embedding in decided_records(scores_dir, config.thresholds):
            chunk.append(record)
            if record["kept"]:
                identity_sums[record["identity"]] = identity_sums.get(record["identity"], 0) + embedding.astype(
                    np.float32
                )
            if len(chunk) == 4096:
                write_shard(decided_dir, written, chunk)
                chunk, written = [], written + 1
        if chunk:
            write_shard(decided_dir, written, chunk)
        records_file = out_dir / "records.parquet"
        merge_shards(decided_dir, records_file)
        summary = summarize(records_file, config, identity_sums)
        with atomic_path(out_dir / "summary.json") as tmp:
            tmp.write_text(json.dumps(summary, indent=2))
        with atomic_path(out_dir / "summary.md") as tmp:
            tmp.write_text(summary_markdown(summary))
        sheets = write_contact_sheets(records_file, config, generated, out_dir)
        print(f"kept {summary['kept']} of {summary['images']} images ({summary['pass_rate']:.1%}); "
              + ", ".join(f"{r} {n}" for r, n in summary["per_reason"].items() if n and r != "kept"))  # fmt: skip
        print(
            f"records: {records_file}\nsummary: {out_dir / 'summary.md'}\ncontact sheets: {out_dir / 'contact_sheets'} ({len(sheets)})"
        )
    return out_dir


if __name__ == "__main__":
    from vehicle_diff.cli import run_main

    run_main(main)
