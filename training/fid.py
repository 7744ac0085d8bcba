"""The `vehicle-diff fid` stage: standard FID (the Fréchet distance itself lives in `vehicle_diff.stats`).

Each side is a dataset's images: a filter output or an exported dataset gives exactly the crops the dataset holds
(the filter's kept records, never a rejected crop), a plain folder every image in it. Images stream through the
metric in bounded batches, so memory does not grow with their number.

The stage is torchmetrics' FrechetInceptionDistance on torch-fidelity's port of the TensorFlow FID Inception-v3
(`pt_inception-2015-12-05`, the weights pytorch-fid uses too), so its numbers compare with published FIDs. The
weights come from a local file: nothing is downloaded at run time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vehicle_diff.errors import UserInputError
from vehicle_diff.stats import feature_statistics, frechet_distance, frechet_distance_of_features  # noqa: F401 (re-exported)

WEIGHTS_FILE_NAMES = ("weights-inception-2015-12-05-6726825d.pth", "pt_inception-2015-12-05-6726825d.pth")
WEIGHTS_NAME = (
    "pt_inception-2015-12-05 (TensorFlow Inception-v3 FID weights, as ported by pytorch-fid / torch-fidelity)"
)


@dataclass
class FidConfig:
    """Standard FID between two image folders (paper Table IV): torchmetrics' FrechetInceptionDistance on the
    2048-d pool features of the TensorFlow FID Inception-v3, from a weights file you supply."""

    output_dir: str = field(default="vehicle-diff-output/fid", metadata={"help": "fid.json"})
    preset: str = field(default="paper", metadata={"help": "paper, toy, tiny, or a YAML file"})
    real_images: str = field(
        default="", metadata={"help": "a folder of real images (recursive), a filter output or an exported dataset"}
    )
    generated_images: str = field(
        default="", metadata={"help": "a filter output or exported dataset (its kept images), or a folder"}
    )
    inception_weights: str | None = field(
        default=None,
        metadata={
            "help": f"{WEIGHTS_FILE_NAMES[0]} (torch-fidelity) or {WEIGHTS_FILE_NAMES[1]} (pytorch-fid); "
            "default: either name in torch's hub checkpoint folder"
        },
    )
    batch_size: int = 32
    max_images: int | None = field(default=None, metadata={"help": "a seeded sample of at most this many per side"})
    seed: int = 0
    dry_run: bool = field(default=False, metadata={"help": "count both sides' images; print and write plan.json"})

    def __post_init__(self):
        if self.batch_size <= 0:
            raise UserInputError(f"--batch_size must be positive (got {self.batch_size})")
        if self.max_images is not None and self.max_images < 2:
            raise UserInputError(f"--max_images must be at least 2 for a covariance (got {self.max_images})")


def inception_weights_file(weights: str | None) -> Path:
    """The FID Inception weights as a local file. torch-fidelity downloads them when it is given no path; here
    it always gets one: `--inception_weights`, or the file where torch-fidelity's own download would have put it
    (torch's hub checkpoint folder, under either release's name; both hold the same tensors)."""
    import torch

    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise UserInputError(f"--inception_weights {weights}: no such file")
        return path
    for name in WEIGHTS_FILE_NAMES:
        if (checkpoints / name).is_file():
            return checkpoints / name
    raise UserInputError(
        f"FID needs the Inception-v3 FID weights and nothing is downloaded here: put {WEIGHTS_FILE_NAMES[0]} "
        f"(torch-fidelity release v0.2.0) or {WEIGHTS_FILE_NAMES[1]} (pytorch-fid release fid_weights) in "
        f"{checkpoints}/, or pass its path with --inception_weights PATH"
    )


def fid_metric(weights_file: Path):
    """torchmetrics' FID on torch-fidelity's Inception, resizing like the TensorFlow original (bilinear, no
    antialiasing), so the numbers compare with pytorch-fid / torch-fidelity / TTUR FIDs."""
    import torch
    from torchmetrics.image.fid import FrechetInceptionDistance

    try:  # tensors only, checked before torch-fidelity loads the file with the full unpickler
        torch.load(weights_file, map_location="cpu", weights_only=True)
    except Exception as error:
        raise UserInputError(f"--inception_weights {weights_file}: not a tensors-only state dict ({error})") from error
    try:
        return FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(weights_file), antialias=False)
    except RuntimeError as error:  # load_state_dict: missing / unexpected keys or shapes
        raise UserInputError(
            f"--inception_weights {weights_file}: not the FID Inception-v3 state dict ({str(error)[:200]})"
        ) from error


def image_set(path: str, flag: str) -> tuple[str, list[str], object]:
    """What a path names as a set of images: (kind, image names, a function opening a name as an RGB image).
    A filter output (records.parquet) gives its kept crops by image_id; an exported dataset (data/*.parquet)
    every row of its splits by image_id, the images read from the Parquet files one row group at a time; any
    other folder its image files by relative path."""
    import pyarrow.parquet as pq
    from PIL import Image

    from vehicle_diff.io import list_images

    root = Path(path)
    if (root / "records.parquet").is_file():
        from vehicle_diff_dataset import read_kept_records

        files = {row["image_id"]: root / row["crop_file"] for row in read_kept_records(root)}
        return "filter output (kept crops)", list(files), lambda name: Image.open(files[name])
    shards = sorted((root / "data").glob("*.parquet")) if root.is_dir() else []
    if shards:
        names = [
            name for shard in shards for name in pq.read_table(shard, columns=["image_id"])["image_id"].to_pylist()
        ]
        return "exported dataset", names, ParquetImages(shards)
    files = {str(file.relative_to(root)): file for file in list_images(path, flag=flag)}
    return "folder", list(files), lambda name: Image.open(files[name])


class ParquetImages:
    """Opens an exported dataset's images by image_id, reading the Parquet files in order one batch at a time
    (names are asked for in file order, so each batch is read once)."""

    def __init__(self, shards: list[Path]):
        self.shards, self.cache = shards, {}
        self.batches = self._batches()

    def _batches(self):
        import pyarrow.parquet as pq

        for shard in self.shards:
            for batch in pq.ParquetFile(shard).iter_batches(batch_size=256, columns=["image_id", "image"]):
                yield batch.to_pylist()

    def __call__(self, name: str):
        import io

        from PIL import Image

        while name not in self.cache:
            self.cache = {row["image_id"]: row["image"]["bytes"] for row in next(self.batches)}
        return Image.open(io.BytesIO(self.cache[name]))


def update_with_images(metric, names: list[str], open_image, *, real: bool, batch_size: int, device) -> None:
    """uint8 CHW tensors of any sizes, at most `batch_size` of them in memory: same-sized images share an update
    (the metric's Inception resizes every batch to 299 x 299 itself, like TensorFlow's original), and all that is
    pending goes through the metric whenever `batch_size` images are waiting. Memory stays flat in the number of
    images whatever their sizes."""
    import torch
    from tqdm.auto import tqdm

    pending: dict[tuple[int, int], list] = {}

    def flush():
        for size in list(pending):
            metric.update(torch.stack(pending.pop(size)).to(device), real=real)

    waiting = 0
    for name in tqdm(names, desc=f"fid: {'real' if real else 'generated'}", unit="img"):
        with open_image(name) as image:
            array = np.asarray(image.convert("RGB"))
        pending.setdefault(array.shape[:2], []).append(torch.from_numpy(array.copy()).permute(2, 0, 1))
        waiting += 1
        if waiting == batch_size:
            flush()
            waiting = 0
    flush()


def main(argv: list[str] | None = None) -> Path:
    import json
    import random

    import torch

    from vehicle_diff.config import parse_config, save_config
    from vehicle_diff.io import sha256_file

    config = parse_config(FidConfig, "fid", argv)
    weights_file = None if config.dry_run else inception_weights_file(config.inception_weights)
    sides = {}
    for name in ("real_images", "generated_images"):
        if not getattr(config, name):
            raise UserInputError(f"--{name} is required")
        kind, names, open_image = image_set(getattr(config, name), flag=f"--{name}")
        if len(names) < 2:
            raise UserInputError(
                f"--{name} {getattr(config, name)}: a Fréchet distance needs at least 2 images, found {len(names)}"
            )
        if config.max_images and len(names) > config.max_images:
            chosen = set(random.Random(config.seed).sample(range(len(names)), config.max_images))
            names = [n for i, n in enumerate(names) if i in chosen]  # the source's order: Parquet reads once
        sides[name] = kind, names, open_image
    if config.dry_run:
        from vehicle_diff.jobs import write_plan

        counts = {name: len(names) for name, (_, names, _) in sides.items()}
        return write_plan(config.output_dir, {"stage": "fid", **counts, "inception_passes": sum(counts.values())})
    device = "cuda" if torch.cuda.is_available() else "cpu"
    metric = fid_metric(weights_file).to(device)
    with torch.no_grad():
        for name, (_, names, open_image) in sides.items():
            update_with_images(
                metric, names, open_image, real=name == "real_images", batch_size=config.batch_size, device=device
            )
        fid = float(metric.compute())
    out_dir = Path(config.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {
        "fid": fid,
        "real_images": len(sides["real_images"][1]),
        "generated_images": len(sides["generated_images"][1]),
        "sources": {name: {"path": getattr(config, name), "kind": kind} for name, (kind, _, _) in sides.items()},
        "images": {name: names for name, (_, names, _) in sides.items()},  # image_ids, or paths in a folder
        "features": "Inception-v3 pool3, 2048-d (torchmetrics FrechetInceptionDistance, torch-fidelity extractor)",
        "weights": WEIGHTS_NAME,
        "weights_file": weights_file.name,
        "weights_sha256": sha256_file(weights_file),
    }
    (out_dir / "fid.json").write_text(json.dumps(result, indent=2))
    save_config(config, out_dir / "config.yaml", stage="fid")
    print(
        f"FID {fid:.3f} ({result['real_images']} real vs {result['generated_images']} generated images); {out_dir / 'fid.json'}"
    )
    return out_dir


if __name__ == "__main__":
    from vehicle_diff.cli import run_main

    run_main(main)
