"""The vehicle-diff dataset: schema, build from the filter's records, export as Parquet + card, load.

`datasets` >= 4 runs no loading scripts, so the published dataset is plain Parquet shards plus a README card whose
YAML lists the splits; `load_dataset(folder_or_repo, revision=tag)` needs no code from us. This module is how
those files are made.

    from vehicle_diff_dataset import load
    ds = load("vehicle-diff")            # ./vehicle-diff, or a Hub / mirror repo with revision="v1.0"
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import datasets
from vehicle_diff.generation.catalog import BODY_STYLES
from vehicle_diff.generation.prompts import VERI776_COLORS

from vehicle_diff.errors import UserInputError


def features_for(colors: list[str]) -> datasets.Features:
    """The schema (declared once; `colors` sets the color label names, VeRi-776's by default). Column names
    are the records' names (design §4)."""
    color = datasets.ClassLabel(names=list(colors))
    return datasets.Features(
        {
            "image": datasets.Image(),
            "image_id": datasets.Value("string"),
            "vehicle_id": datasets.Value("int32"),  # contiguous over the identities of this dataset
            "identity": datasets.Value("string"),
            "camera": datasets.Value("int32"),
            "color": color,
            "body_style": datasets.ClassLabel(names=list(BODY_STYLES)),
            "brand": datasets.Value("string"),
            "model": datasets.Value("string"),
            "year": datasets.Value("int32"),
            "prompt": datasets.Value("string"),
            "template_id": datasets.Value("string"),
            "seed": datasets.Value("int64"),
            "det_box": datasets.Sequence(datasets.Value("float32"), length=4),
            "det_class": datasets.Value("int32"),
            "det_confidence": datasets.Value("float32"),
            "color_similarities": datasets.Sequence(datasets.Value("float32")),  # in the order of `color`'s names
            "predicted_color": color,
            "base_model": datasets.Value("string"),
            "base_model_revision": datasets.Value("string"),
            "lora_sha256": datasets.Value("string"),
        }
    )


FEATURES = features_for(VERI776_COLORS)


def assign_splits(identities: list[str], eval_fraction: float, seed: int) -> set[str]:
    """The identities held out for the synthetic query / gallery splits: a seeded sample."""
    count = round(eval_fraction * len(identities))
    return set(random.Random(seed).sample(sorted(identities), count))


def readable_records(records: list[dict], crops_root: Path, skip_unreadable: bool) -> tuple[list[dict], list[str]]:
    """The records whose crop is the one the filter wrote (its hash) and decodes; the others fail the build,
    or are listed with `skip_unreadable`."""
    from PIL import Image
    from tqdm.auto import tqdm

    from vehicle_diff.io import sha256_file

    good, problems = [], []
    for record in tqdm(records, desc="export: checking crops", unit="img"):
        path = crops_root / record["crop_file"] if record.get("crop_file") else None
        try:
            if path is None:
                raise FileNotFoundError("the record has no crop_file")
            if record.get("crop_sha256") and sha256_file(path) != record["crop_sha256"]:
                raise OSError("it is not the crop the filter wrote (its sha256 differs)")
            with Image.open(path) as image:
                image.load()
            good.append(record)
        except (OSError, SyntaxError) as error:
            problem = f"{record['image_id']}: crop {path} unreadable ({error})"
            if not skip_unreadable:
                raise UserInputError(problem + "; re-run the filter, or pass --skip_unreadable") from error
            problems.append(problem)
    return good, problems


def _rows(records: tuple, crops_root: Path, colors: tuple, vehicle_ids: dict):
    """Yield one dataset row per record, the crop's bytes embedded. Camera = the image's sample index within
    its identity: each synthetic image is its own viewpoint, so the standard junk rule removes nothing."""
    for record in records:
        similarities = record.get("color_similarities") or {}
        yield {
            "image": {"bytes": (crops_root / record["crop_file"]).read_bytes(), "path": Path(record["crop_file"]).name},
            "image_id": record["image_id"],
            "vehicle_id": vehicle_ids[record["identity"]],
            "identity": record["identity"],
            "camera": int(record["image_id"].rsplit("-", 1)[1]),
            "color": record["color"],
            "body_style": record["body_style"],
            "brand": record["brand"],
            "model": record["model"],
            "year": record["year"],
            "prompt": record["prompt"],
            "template_id": record["template_id"],
            "seed": record["seed"],
            "det_box": record["det_box"],
            "det_class": record["det_class"],
            "det_confidence": record["det_confidence"],
            "color_similarities": [similarities.get(c) for c in colors],
            "predicted_color": record.get("predicted_color"),
            "base_model": record["base_model"],
            "base_model_revision": record.get("base_model_revision") or "",
            "lora_sha256": record.get("lora_sha256") or "",
        }


def read_kept_records(filtered: Path) -> list[dict]:
    """The filter's kept records, checked: the file exists, ids are unique, something is kept."""
    from vehicle_diff.io import read_parquet

    path = Path(filtered) / "records.parquet"
    if not path.is_file():
        raise UserInputError(f"--filtered {filtered}: no records.parquet; run `vehicle-diff filter` first")
    table = read_parquet(path, "re-run `vehicle-diff filter` with --overwrite to write it again")
    for column in ("image_id", "identity", "kept", "crop_file", "color", "vehicle_id"):
        if column not in table.column_names:
            raise UserInputError(f"{path}: not filter records (column {column!r} is missing)")
    image_ids = table.column("image_id").to_pylist()
    if len(set(image_ids)) != len(image_ids):
        duplicate = next(i for i in image_ids if image_ids.count(i) > 1)
        raise UserInputError(f"{path}: duplicate image_id {duplicate!r}; the records are corrupt, re-run the filter")
    kept = [row for row in table.to_pylist() if row["kept"]]
    if not kept:
        raise UserInputError(f"{path}: no image was kept by the filter; nothing to export (see its summary.md)")
    return kept


def build(
    filtered: str | Path,
    *,
    colors: list[str] | None = None,
    eval_fraction: float = 0.0,
    seed: int = 0,
    skip_unreadable: bool = False,
    cache_dir: str | None = None,
) -> tuple[datasets.DatasetDict, list[str]]:
    """The dataset of the filter's kept crops: `train`, and `query` / `gallery` over a held-out share of the
    identities (one query image each) when `eval_fraction` > 0. Rows stream through `Dataset.from_generator`
    (written to the datasets cache), so memory does not grow with the image count. Returns the problems skipped."""
    filtered = Path(filtered)
    records, problems = readable_records(read_kept_records(filtered), filtered, skip_unreadable)
    colors = list(colors or VERI776_COLORS)
    unknown = sorted({r["color"] for r in records} - set(colors))
    if unknown:
        raise UserInputError(f"the records use color(s) {unknown} missing from --colors {colors}")
    order = sorted({(r["vehicle_id"], r["identity"]) for r in records})
    held_out = assign_splits([identity for _, identity in order], eval_fraction, seed)
    # train ids are 0..T-1 (what a classifier head needs); the held-out identities continue after them
    order = sorted(order, key=lambda pair: (pair[1] in held_out, pair))
    vehicle_ids = {identity: index for index, (_, identity) in enumerate(order)}
    splits = {"train": [r for r in records if r["identity"] not in held_out]}
    if held_out:
        first = {}
        for record in records:
            if record["identity"] in held_out:
                first.setdefault(record["identity"], record["image_id"])
        splits["query"] = [r for r in records if first.get(r["identity"]) == r["image_id"]]
        splits["gallery"] = [r for r in records if r["identity"] in held_out and first[r["identity"]] != r["image_id"]]
    features = features_for(colors)
    dataset = datasets.DatasetDict(
        {
            name: datasets.Dataset.from_generator(  # tuples: datasets would try to shard list arguments
                _rows,
                features=features,
                cache_dir=cache_dir,
                gen_kwargs={
                    "records": tuple(rows),
                    "crops_root": filtered,
                    "colors": tuple(colors),
                    "vehicle_ids": vehicle_ids,
                },
            )
            for name, rows in splits.items()
            if rows
        }
    )
    return dataset, problems


def _size_category(count: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if count < limit:
            return name
    return "1M<n<10M"


def num_shards(table: datasets.Dataset, max_shard_bytes: int) -> int:
    """Shards cut by bytes, as `push_to_hub(max_shard_size=...)` cuts them (the Arrow size of the rows)."""
    return max(1, -(-table.data.nbytes // max_shard_bytes))


def parse_size(size: str | int) -> int:
    """'500MB' -> 500_000_000 (decimal units, as huggingface_hub writes them)."""
    if isinstance(size, int):
        return size
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "B": 1}
    text = str(size).strip().upper()
    for unit, factor in units.items():
        if text.endswith(unit) and text[: -len(unit)].strip().replace(".", "", 1).isdigit():
            return int(float(text[: -len(unit)]) * factor)
    if text.isdigit():
        return int(text)
    raise UserInputError(f"--max_shard_size {size!r}: use a size like 500MB or 2GB")


def export(
    dataset: datasets.DatasetDict,
    out_dir: str | Path,
    *,
    card_context: dict | None = None,
    max_shard_size: str | int = "500MB",
) -> Path:
    """Write Parquet shards `data/{split}-NNNNN-of-NNNNN.parquet` (cut by bytes; row groups as `datasets` writes
    them for images), a preview grid and the README card into `out_dir` (a staging folder: see `main`)."""
    from tqdm.auto import tqdm
    from vehicle_diff.cards import dataset_info, render_dataset_card, save_context

    tmp = Path(out_dir)
    (tmp / "data").mkdir(parents=True, exist_ok=True)
    max_bytes = parse_size(max_shard_size)
    plan = [(split, table, num_shards(table, max_bytes)) for split, table in dataset.items()]
    with tqdm(total=sum(n for _, _, n in plan), desc="export: writing shards", unit="shard") as progress:
        for split, table, shards in plan:
            for index in range(shards):
                shard = table.shard(shards, index, contiguous=True)
                shard.to_parquet(str(tmp / "data" / f"{split}-{index:05d}-of-{shards:05d}.parquet"))
                progress.update(1)
    write_preview(dataset["train"], tmp / "preview.png")
    context = {
        **(card_context or {}),
        "splits": {split: len(table) for split, table in dataset.items()},
        "size_category": _size_category(sum(len(t) for t in dataset.values())),
        "stats": dataset_statistics(dataset),
        "colors": dataset["train"].features["color"].names,
        "dataset_info": dataset_info(dataset, tmp / "data"),  # what push_to_hub would write
    }
    save_context(tmp, context)  # `publish` renders the card again from it, with the repo id and version
    render_dataset_card(context).save(tmp / "README.md")
    return tmp


def dataset_statistics(dataset: datasets.DatasetDict) -> dict:
    from collections import Counter

    stats = {}
    train = dataset["train"]
    for column in ("color", "body_style"):
        names = train.features[column].names
        stats[column] = dict(Counter(names[i] for i in train[column]).most_common())
    stats["brand"] = dict(Counter(train["brand"]).most_common(15))
    per_identity = Counter(train["vehicle_id"])
    stats["identities"] = {split: len(set(table["vehicle_id"])) for split, table in dataset.items()}
    stats["images_per_identity"] = {
        "min": min(per_identity.values()),
        "max": max(per_identity.values()),
        "mean": round(len(train) / len(per_identity), 2),
    }
    return stats


def write_preview(train: datasets.Dataset, out_file: Path, count: int = 32) -> None:
    from vehicle_diff.contact_sheet import contact_sheet

    rows = train.select(range(min(count, len(train))))
    names = train.features["color"].names
    labels = [f"{names[r['color']]} {r['brand']} {r['model']}" for r in rows]
    contact_sheet([r["image"] for r in rows], labels, columns=8, cell=128).save(out_file, format="PNG")


def export_veri(dataset: datasets.DatasetDict, out_dir: str | Path, *, id_offset: int = 1000) -> Path:
    """VeRi-776's layout, so that existing re-ID toolkits and `veri776:DIR` read it: image_train/ (and, when
    identities were held out, the query in image_query/ and the gallery in image_test/) with VVVV_cCCC_N.jpg
    names (ids shifted by `id_offset`, clear of VeRi-776's 1..776), name_{train,query,test}.txt and
    attributes_{train,query,test}.csv. The query and test folders always exist (empty without held-out
    identities) because the layout has all three."""
    import csv

    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    folders = {"train": "train", "query": "query", "gallery": "test"}
    for split, folder in folders.items():
        (out_dir / f"image_{folder}").mkdir(parents=True, exist_ok=True)
        table = dataset[split] if split in dataset else None
        if table is None or not len(table):
            (out_dir / f"name_{folder}.txt").write_text("")
            continue
        colors, styles = table.features["color"].names, table.features["body_style"].names
        names = []
        with open(out_dir / f"attributes_{folder}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["image_name", "vehicle_id", "color", "body_style", "brand", "model", "year"])
            for index, row in enumerate(tqdm(table, desc=f"export: VeRi-style {folder}", unit="img")):
                name = f"{row['vehicle_id'] + id_offset:04d}_c{row['camera'] % 1000:03d}_{index:08d}.jpg"
                row["image"].convert("RGB").save(out_dir / f"image_{folder}" / name, quality=95)
                writer.writerow(
                    [
                        name,
                        row["vehicle_id"] + id_offset,
                        colors[row["color"]],
                        styles[row["body_style"]],
                        row["brand"],
                        row["model"],
                        row["year"],
                    ]
                )
                names.append(name)
        (out_dir / f"name_{folder}.txt").write_text("\n".join(names) + "\n")
    return out_dir


def load(repo_or_dir: str = "vehicle-diff", revision: str | None = None, **kwargs) -> datasets.DatasetDict:
    """`datasets.load_dataset` with a version: a folder, a Hub repo or a mirror repo."""
    return datasets.load_dataset(repo_or_dir, revision=revision, **kwargs)


@dataclass
class ExportConfig:
    """Build the dataset from the filter's kept crops and write it as Parquet + card (optionally VeRi-style)."""

    output_dir: str = field(
        default="vehicle-diff-output/vehicle-diff", metadata={"help": "data/*.parquet, README.md, preview.png"}
    )
    preset: str = field(default="paper", metadata={"help": "paper, toy, tiny, or a YAML file"})
    filtered: str = field(default="vehicle-diff-output/filtered", metadata={"help": "the filter stage's folder"})
    colors: list[str] = field(default_factory=lambda: list(VERI776_COLORS))
    eval_fraction: float = field(
        default=0.0,
        metadata={
            "help": "share of identities held out as query / gallery, for evaluating on synthetic data "
            "(0: every kept image trains)"
        },
    )
    seed: int = 0
    skip_unreadable: bool = field(
        default=False, metadata={"help": "skip (and list) unreadable crops instead of failing"}
    )
    max_shard_size: str = field(default="500MB", metadata={"help": "Parquet shard size, as push_to_hub cuts them"})
    veri_dir: str | None = field(default=None, metadata={"help": "also write a VeRi-776 style copy here"})
    veri_id_offset: int = 1000
    overwrite: bool = field(
        default=False, metadata={"help": "replace an earlier export made from other records or settings"}
    )
    dry_run: bool = field(default=False, metadata={"help": "count the kept records per split; write plan.json only"})

    def __post_init__(self):
        if not self.colors:
            raise UserInputError("--colors: give at least one color")
        if self.seed < 0:
            raise UserInputError(f"--seed must be >= 0 (got {self.seed})")
        if not 0 <= self.eval_fraction < 1:
            raise UserInputError(f"--eval_fraction must be in [0, 1) (got {self.eval_fraction})")
        if self.veri_id_offset < 0:
            raise UserInputError(f"--veri_id_offset must be >= 0 (got {self.veri_id_offset})")
        parse_size(self.max_shard_size)


def job_components(config: ExportConfig) -> dict:
    """The kept records (their crop hashes included) and the settings: what the exported files depend on."""
    from vehicle_diff.io import sha256_file
    from vehicle_diff.jobs import output_settings

    records = Path(config.filtered) / "records.parquet"
    if not records.is_file():
        raise UserInputError(f"--filtered {config.filtered}: no records.parquet; run `vehicle-diff filter` first")
    return {
        # where the VeRi-style copy goes changes neither the dataset nor the copy: a moved folder is the same export
        "settings": output_settings(config, ignore=("filtered", "veri_dir")),
        "filter_records_sha256": sha256_file(records),
    }


# the files `export` writes; its folders are replaced whole, so anything else in them is refused, never lost
DATASET_FILES = [
    "data/*.parquet",
    "README.md",
    "preview.png",
    "card_context.json",
    "export_config.yaml",
    "skipped.txt",
]
VERI_FILES = [
    f"{kind}_{split}{ext}"
    for split in ("train", "query", "test")
    for kind, ext in (("image", "/*.jpg"), ("name", ".txt"), ("attributes", ".csv"))
]


def export_dataset(config: ExportConfig) -> Path:
    """Build the dataset in a staging folder beside the output and swap it in whole: the output folder is an
    earlier export of this package or new; anything else is refused before any work."""
    from vehicle_diff.config import save_config
    from vehicle_diff.jobs import (
        check_output_path,
        check_replaceable,
        done_fingerprint,
        is_complete,
        replace_folder,
    )

    filtered = Path(config.filtered)
    if config.dry_run:
        return dry_run(config)
    out = check_output_path(config.output_dir, inputs=[filtered])
    components = job_components(config)
    check_replaceable(out, "export", components, owned=DATASET_FILES, overwrite=config.overwrite, flag="--output_dir")
    if config.veri_dir:
        veri = check_output_path(config.veri_dir, inputs=[filtered, out], flag="--veri_dir")
        if out.is_relative_to(veri):
            raise UserInputError(f"--veri_dir {config.veri_dir}: it would hold the dataset folder; choose another")
        check_replaceable(
            veri, "export-veri", components, owned=VERI_FILES, overwrite=config.overwrite, flag="--veri_dir"
        )
    if is_complete(out, "export", done_fingerprint(components)) and (
        not config.veri_dir or is_complete(config.veri_dir, "export-veri", done_fingerprint(components))
    ):
        print(f"Dataset {out} is up to date with {filtered / 'records.parquet'}; nothing to do.")
        return out
    result = {}

    def build_into(staging: Path) -> dict:
        cache = staging / ".build-cache"
        dataset, problems = build(
            filtered,
            colors=config.colors,
            eval_fraction=config.eval_fraction,
            seed=config.seed,
            skip_unreadable=config.skip_unreadable,
            cache_dir=str(cache),
        )
        export(dataset, staging, card_context=card_context(filtered), max_shard_size=config.max_shard_size)
        save_config(config, staging / "export_config.yaml", stage="export")
        if problems:
            (staging / "skipped.txt").write_text("\n".join(problems) + "\n")
        if config.veri_dir:

            def build_veri(veri_staging: Path) -> None:
                export_veri(dataset, veri_staging, id_offset=config.veri_id_offset)

            replace_folder(
                config.veri_dir,
                "export-veri",
                components,
                build_veri,
                owned=VERI_FILES,
                overwrite=config.overwrite,
                inputs=[filtered],
                flag="--veri_dir",
            )
        result.update(splits={split: len(table) for split, table in dataset.items()}, skipped=len(problems))
        shutil.rmtree(cache, ignore_errors=True)  # the staging's Arrow cache; the open memory maps stay valid
        return result

    replace_folder(
        out, "export", components, build_into, owned=DATASET_FILES, overwrite=config.overwrite, inputs=[filtered]
    )
    splits = ", ".join(f"{split} {count}" for split, count in result["splits"].items())
    print(
        f"Dataset: {out} ({splits}). Load it with datasets.load_dataset({str(out)!r})."
        + (f" Skipped {result['skipped']} unreadable crops, listed in skipped.txt." if result["skipped"] else "")
    )
    if config.veri_dir:
        print(f"VeRi-style copy: {Path(config.veri_dir).resolve()}")
    return out


def dry_run(config: ExportConfig) -> Path:
    """The splits the export would write, from the kept records alone (no crop is read)."""
    from vehicle_diff.jobs import write_plan

    records = read_kept_records(Path(config.filtered))
    identities = sorted({r["identity"] for r in records})
    held_out = assign_splits(identities, config.eval_fraction, config.seed)
    train = sum(r["identity"] not in held_out for r in records)
    plan = {
        "stage": "export",
        "kept_images": len(records),
        "identities": len(identities),
        "train_images": train,
        "train_identities": len(identities) - len(held_out),
        "held_out_images": len(records) - train,
        "held_out_identities": len(held_out),
    }
    return write_plan(config.output_dir, plan)


def main(argv: list[str] | None = None) -> Path:
    from vehicle_diff.config import parse_config

    return export_dataset(parse_config(ExportConfig, "export", argv))


def card_context(filtered: Path) -> dict:
    """What the card may state about the run, read from the settings each stage saved beside its outputs: the
    base model and LoRA that generated the images, the filter's detector, thresholds and whether the color check
    decided anything, the catalog. Models are named by Hub id or `tiny:` id; a local path only by its last part."""
    import subprocess

    import pyarrow.parquet as pq
    import yaml
    from vehicle_diff.cards import load_context, model_ref, recorded_revisions

    from vehicle_diff import __version__

    def read_config(folder: Path) -> dict:
        path = Path(folder) / "config.yaml"
        return (yaml.safe_load(path.read_text()) or {}).get("config", {}) if path.is_file() else {}

    def read_json(path: Path) -> dict:
        return json.loads(path.read_text()) if path.is_file() else {}

    filtered = Path(filtered)
    filter_config, summary = read_config(filtered), read_json(filtered / "summary.json")
    generation_config = read_config(Path(filter_config.get("generated") or filtered / "missing"))
    prompts_dir = Path(generation_config.get("prompts") or filtered / "missing")
    prompts_config, prompts_summary = read_config(prompts_dir), read_json(prompts_dir / "summary.json")
    columns = ("base_model", "base_model_revision", "lora_sha256", "scheduler")
    records = (
        pq.read_table(filtered / "records.parquet", columns=list(columns)).to_pylist()[:1]
        if (filtered / "records.parquet").is_file()
        else []
    )
    first = records[0] if records else {}
    catalog = prompts_config.get("catalog")
    generation = {}
    if generation_config:
        lora = generation_config.get("lora_weights")
        lora_folder = Path(lora) if lora and Path(lora).is_dir() else Path(lora).parent if lora else None
        lora_context = (load_context(lora_folder) or {}) if lora_folder else {}
        generation = {
            "base_model": model_ref(generation_config.get("pretrained_model_name_or_path")),
            "base_model_revision": first.get("base_model_revision") or generation_config.get("revision"),
            "lora": {
                "file": Path(lora).name,
                "sha256": first.get("lora_sha256") or "",
                # the captioner behind the LoRA's training captions, as its card states it
                "caption_model": lora_context.get("caption_model"),
                "caption_revision": lora_context.get("caption_model_revision"),
            }
            if lora
            else None,
            "scheduler": first.get("scheduler") or "the base model's scheduler",
            "template_id": prompts_config.get("template_id"),
            **{
                key: generation_config.get(key)
                for key in (
                    "num_inference_steps",
                    "guidance_scale",
                    "width",
                    "height",
                    "images_per_identity",
                    "seed",
                    "mixed_precision",
                )
            },
        }
    filter_facts = {}
    if filter_config:
        filter_facts = {
            "detector": model_ref(filter_config.get("detector")),
            "clip_model": model_ref(filter_config.get("clip_model")),
            **recorded_revisions(filtered),  # detector_revision, clip_revision: what the scores were computed with
            **{
                key: filter_config.get(key)
                for key in (
                    "detector_imgsz",
                    "detection_confidence",
                    "min_box_side",
                    "reference_side",
                    "color_check",
                    "color_prompt",
                    "near_duplicate_threshold",
                )
            },
            **{key: summary.get(key) for key in ("images", "kept", "pass_rate", "per_reason")},
        }
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "generation": generation,
        "filter": filter_facts,
        "catalog": f"a user catalog ({Path(catalog).name})" if catalog else prompts_summary.get("catalog", "a catalog"),
        "preset": filter_config.get("preset") or generation_config.get("preset") or "unknown",
        "vehicle_diff_version": __version__,
        "commit": commit or "unknown",
    }


if __name__ == "__main__":
    from vehicle_diff.cli import run_main

    run_main(main)
