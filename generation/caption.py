"""Stage 2a: caption ~1% unlabeled target-camera images with BLIP-2 (paper §III-B).

The paper fine-tunes on 1% of the target data without labels: 378 VeRi-776 and 527 CityFlowV2 images. This
stage picks that subset deterministically (`--fraction` or `--num_images`, seeded; the list is saved), captions it
in batches, and writes an imagefolder that `datasets.load_dataset("imagefolder", data_dir=DIR)` and the
fine-tuning script read: `DIR/train/*.png|jpg` + `DIR/train/metadata.jsonl` (`file_name`, `text`, `source`).

    vehicle-diff caption --input_images /data/VeRi/image_train --fraction 0.01 --output_dir out/captions
    accelerate launch --num_processes 4 -m vehicle_diff.generation.caption --input_images /data/VeRi/image_train ...
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

from vehicle_diff.config import check_ranges, parse_config, save_config
from vehicle_diff.errors import UserInputError
from vehicle_diff.io import atomic_path, list_images, open_rgb
from vehicle_diff.jobs import Job, output_settings, shard_path, write_plan
from vehicle_diff.loading import PrefetchedBatches, default_num_workers


def select_subset(count: int, *, fraction: float | None, num_images: int | None, seed: int) -> list[int]:
    """Indices of the images to caption: a seeded sample of `num_images`, or of round(fraction x count) (the
    paper's 1%: 378 of VeRi-776's 37,778 training images, 527 of CityFlowV2's 52,717)."""
    wanted = num_images if num_images is not None else max(1, round(fraction * count))
    if wanted > count:
        raise UserInputError(f"--num_images {wanted} is more than the {count} input images")
    return sorted(random.Random(seed).sample(range(count), wanted))


def caption_text(caption: str, prefix: str) -> str:
    caption = " ".join(caption.split())
    return f"{prefix.strip()} {caption}".strip() if prefix else caption


@dataclass
class CaptionConfig:
    """Caption a seeded ~1% of unlabeled target images with BLIP-2 into an imagefolder for fine-tuning."""

    output_dir: str = field(
        default="vehicle-diff-output/captions", metadata={"help": "imagefolder: train/ + metadata.jsonl"}
    )
    preset: str = field(default="paper", metadata={"help": "paper, toy, tiny, or a YAML file"})
    input_images: str | None = field(default=None, metadata={"help": "folder of unlabeled target images (recursive)"})
    input_dataset: str | None = field(
        default=None, metadata={"help": "or a datasets name / folder with an image column"}
    )
    image_column: str = "image"
    split: str = "train"
    fraction: float = field(default=0.01, metadata={"help": "share of the images to caption (paper: 1%%)"})
    num_images: int | None = field(default=None, metadata={"help": "exact count instead of --fraction"})
    seed: int = 0
    caption_model: str = field(default="Salesforce/blip2-opt-2.7b", metadata={"help": "BLIP-2 id or folder"})
    prompt_prefix: str = field(
        default="", metadata={"help": "prepended to every caption, e.g. 'a photo of a vehicle,'"}
    )
    max_new_tokens: int = 30
    batch_size: int = 16
    mixed_precision: str = field(default="no", metadata={"help": "no, fp16 or bf16"})
    dataloader_num_workers: int | None = field(
        default=None, metadata={"help": "processes that read the next batches (default: one a spare CPU core)"}
    )
    overwrite: bool = field(default=False, metadata={"help": "replace this stage's earlier outputs in --output_dir"})
    dry_run: bool = field(default=False, metadata={"help": "print and write plan.json; load no model"})

    def __post_init__(self):
        check_ranges(self, non_negative=("seed", "dataloader_num_workers"))
        if (self.input_images is None) == (self.input_dataset is None):
            raise UserInputError("give exactly one of --input_images FOLDER or --input_dataset NAME")
        if self.num_images is None and not 0 < self.fraction <= 1:
            raise UserInputError(f"--fraction must be in (0, 1] (got {self.fraction})")
        if self.num_images is not None and self.num_images <= 0:
            raise UserInputError(f"--num_images must be positive (got {self.num_images})")
        if self.batch_size <= 0 or self.max_new_tokens <= 0:
            raise UserInputError("--batch_size and --max_new_tokens must be positive")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise UserInputError(f"--mixed_precision {self.mixed_precision!r}: use no, fp16 or bf16")


class ImageSource:
    """The input images by index, from a folder or a `datasets` dataset, as (name, loader) pairs."""

    def __init__(self, config: CaptionConfig):
        if config.input_images:
            self.files = list_images(config.input_images, exclude=config.output_dir)
            self.names = [str(p.relative_to(config.input_images)) for p in self.files]
            self.dataset = None
        else:
            import datasets

            try:
                self.dataset = datasets.load_dataset(config.input_dataset, split=config.split)
            except (FileNotFoundError, ValueError, datasets.exceptions.DatasetNotFoundError) as error:
                raise UserInputError(f"--input_dataset {config.input_dataset}: cannot be loaded ({error})") from error
            if config.image_column not in self.dataset.column_names:
                raise UserInputError(
                    f"--input_dataset {config.input_dataset}: no column {config.image_column!r} "
                    f"(columns: {self.dataset.column_names}); set --image_column"
                )
            self.dataset = self.dataset.cast_column(config.image_column, datasets.Image(decode=False))
            self.fingerprint = self.dataset._fingerprint  # datasets' own content fingerprint
            self.names = [f"{config.split}/{i:07d}" for i in range(len(self.dataset))]
            self.column = config.image_column
        if not self.names:
            raise UserInputError(f"{config.input_images or config.input_dataset}: no images found")

    def __len__(self):
        return len(self.names)

    def digest(self, indices: list[int]) -> str:
        """What the captions depend on: the selected images' names and bytes."""
        import hashlib

        digest = hashlib.sha256()
        for index in indices:
            if self.dataset is None:
                content = hashlib.sha256(self.files[index].read_bytes()).hexdigest()
            else:
                content = self.fingerprint
            digest.update(f"{self.names[index]}\0{content}\n".encode())
        return digest.hexdigest()

    def load(self, index: int):
        """(RGB image, original bytes, suffix) or raises OSError/ValueError for an unreadable image."""
        import io

        if self.dataset is None:
            data, suffix = self.files[index].read_bytes(), self.files[index].suffix.lower()
        else:
            cell = self.dataset[index][self.column]
            data = cell["bytes"] if cell.get("bytes") else Path(cell["path"]).read_bytes()
            suffix = Path(cell.get("path") or "x.png").suffix.lower() or ".png"
        return open_rgb(io.BytesIO(data)), data, suffix


def job_for(config: CaptionConfig, source: ImageSource | None = None, selected: list[int] | None = None) -> Job:
    from vehicle_diff.models import resolved_revision

    source = source or ImageSource(config)
    if selected is None:
        selected = select_subset(len(source), fraction=config.fraction, num_images=config.num_images, seed=config.seed)
    components = {
        "settings": output_settings(config, ignore=("input_images", "input_dataset")),
        "images": len(source),
        "selected_images": source.digest(selected),
        "caption_model_revision": resolved_revision(config.caption_model, flag="--caption_model"),
    }
    return Job(
        config.output_dir,
        "caption",
        components,
        overwrite=config.overwrite,
        shards=".shards",
        inputs=[config.input_images],
        owned=[
            "train/[0-9][0-9][0-9][0-9][0-9][0-9][0-9].*",  # the selected images, by their index
            "train/metadata.jsonl",
            "skipped.jsonl",
            "captions.json",
            "selection.json",
            "config.yaml",
        ],
    )


class LoadOrError:
    """(image, bytes, suffix, None) of a source's item, or (None, None, None, why it cannot be read): a loader
    worker hands the reason back instead of dying on a bad file."""

    def __init__(self, source: ImageSource):
        self.source = source

    def __call__(self, index: int) -> tuple:
        from PIL import UnidentifiedImageError

        try:
            return (*self.source.load(index), None)
        except (OSError, ValueError, SyntaxError) as error:
            reason = "not an image PIL can identify" if isinstance(error, UnidentifiedImageError) else str(error)
            return None, None, None, f"{type(error).__name__}: {reason}"


def caption(config: CaptionConfig) -> Path:
    """Caption every not-yet-finished batch of the selection, then write the imagefolder's metadata."""
    import torch
    from accelerate import PartialState
    from tqdm.auto import tqdm

    from vehicle_diff.models import load_blip2, torch_dtype

    source = ImageSource(config)
    selected = select_subset(len(source), fraction=config.fraction, num_images=config.num_images, seed=config.seed)
    num_batches = math.ceil(len(selected) / config.batch_size)
    if config.dry_run:
        sizes = [source.files[i].stat().st_size for i in selected] if source.dataset is None else []
        return write_plan(
            config.output_dir,
            {
                "stage": "caption",
                "images": len(source),
                "selected": len(selected),
                "batches": num_batches,
                "caption_model": config.caption_model,
                "estimated_disk_gb": round(sum(sizes) / 1e9, 3) if sizes else None,
            },
        )
    state = PartialState(cpu=not torch.cuda.is_available())
    job = job_for(config, source, selected).open()
    out_dir = job.out_dir
    if state.is_main_process:
        with atomic_path(out_dir / "selection.json") as tmp:
            tmp.write_text(
                json.dumps(
                    {
                        "source": Path(config.input_images or config.input_dataset).name,
                        "total": len(source),
                        "seed": config.seed,
                        "selected": [source.names[i] for i in selected],
                    },
                    indent=1,
                )
            )
        save_config(config, out_dir / "config.yaml", stage="caption")

    def indices_of(batch_index: int) -> list[int]:
        return selected[batch_index * config.batch_size : (batch_index + 1) * config.batch_size]

    dtype = torch_dtype(config.mixed_precision)
    model = progress = None
    order = list(range(num_batches))
    order = order[state.process_index :: state.num_processes] + order
    workers = config.dataloader_num_workers
    loaded = PrefetchedBatches(  # images are read and decoded in worker processes while BLIP-2 captions
        [i for i in dict.fromkeys(order) if not shard_path(job.shards_dir, i).exists()],
        indices_of,
        LoadOrError(source),
        num_workers=default_num_workers(state.num_processes) if workers is None else workers,
    )
    for batch_index in job.batches(num_batches, indices_of, id_key="index", order=order):
        if model is None:
            model, processor = load_blip2(config.caption_model, torch_dtype=dtype)
            model.to(state.device).eval()
            progress = tqdm(
                total=len(selected),
                desc=f"caption [process {state.process_index}]",
                unit="img",
                position=state.process_index,
            )
        records, images = [], []
        for index, (image, data, suffix, error) in zip(indices_of(batch_index), loaded(batch_index), strict=True):
            record = {"index": index, "source": source.names[index]}
            if error is not None:
                records.append({**record, "error": error})
                continue
            file_name = f"{index:07d}{suffix}"
            with atomic_path(out_dir / "train" / file_name) as tmp:
                tmp.write_bytes(data)
            records.append({**record, "file_name": file_name})
            images.append(image)
        if images:
            inputs = processor(images=images, return_tensors="pt").to(state.device, dtype)
            with torch.no_grad():
                generated = model.generate(**inputs, max_new_tokens=config.max_new_tokens, min_new_tokens=1)
            captions = iter(processor.batch_decode(generated, skip_special_tokens=True))
            for record in records:
                if "file_name" in record:
                    record["text"] = caption_text(next(captions), config.prompt_prefix)
        job.write_shard(batch_index, records)
        progress.update(len(records))
    loaded.close()
    if progress is not None:
        progress.close()
    state.wait_for_everyone()

    if state.is_main_process:
        with job.locked():
            records = list(job.records(num_batches, indices_of, id_key="index"))
            captioned = [r for r in records if "text" in r]
            skipped = [r for r in records if "error" in r]
            with atomic_path(out_dir / "train" / "metadata.jsonl") as tmp:
                tmp.write_text(
                    "".join(
                        json.dumps(
                            {
                                "file_name": r["file_name"],
                                "text": r["text"],
                                "source": r["source"],
                                "caption_model": config.caption_model,
                            }
                        )
                        + "\n"
                        for r in captioned
                    )
                )
            with atomic_path(out_dir / "skipped.jsonl") as tmp:
                tmp.write_text(
                    "".join(json.dumps({"source": r["source"], "error": r["error"]}) + "\n" for r in skipped)
                )
            with atomic_path(out_dir / "captions.json") as tmp:
                tmp.write_text(
                    json.dumps(
                        {
                            "caption_model": config.caption_model,
                            "captioned": len(captioned),
                            "skipped": len(skipped),
                            "total_images": len(source),
                            "prompt_prefix": config.prompt_prefix,
                        },
                        indent=2,
                    )
                )
            job.mark_done({"captioned": len(captioned), "skipped": len(skipped)})
        print(
            f"Captioned {len(captioned)} of {len(source)} images with {config.caption_model} ({len(skipped)} "
            f"unreadable, listed in skipped.jsonl).\nImagefolder: {out_dir / 'train'} (metadata.jsonl)"
        )
        if captioned:
            print(f"  e.g. {captioned[0]['file_name']}: {captioned[0]['text']!r}")
    state.wait_for_everyone()
    return out_dir


def main(argv: list[str] | None = None) -> Path:
    return caption(parse_config(CaptionConfig, "caption", argv))


if __name__ == "__main__":
    from vehicle_diff.cli import run_main

    run_main(main)
