"""The `vehicle-diff fid` stage: standard FID (the Fréchet distance itself lives in `vehicle_diff.stats`).

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
    preset: str = field(default="paper", metadata={"help": "paper, tiny, or a YAML file"})
    real_images: str = field(default="", metadata={"help": "folder of real images (recursive)"})
    generated_images: str = field(default="", metadata={"help": "folder of generated images (recursive)"})
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


def update_with_images(metric, files: list[Path], *, real: bool, batch_size: int, device) -> None:
    """uint8 CHW tensors, batched by size (the metric's Inception resizes every batch to 299 x 299 itself)."""
    import torch
    from PIL import Image

    pending: dict[tuple[int, int], list] = {}

    def flush(size):
        metric.update(torch.stack(pending.pop(size)).to(device), real=real)

    for file in files:
        with Image.open(file) as image:
            array = np.asarray(image.convert("RGB"))
        tensor = torch.from_numpy(array.copy()).permute(2, 0, 1)
        pending.setdefault(array.shape[:2], []).append(tensor)
        if len(pending[array.shape[:2]]) == batch_size:
            flush(array.shape[:2])
    for size in list(pending):
        flush(size)


def main(argv: list[str] | None = None) -> Path:
    import json
    import random

    import torch

    from vehicle_diff.config import parse_config, save_config
    from vehicle_diff.io import list_images, sha256_file

    config = parse_config(FidConfig, "fid", argv)
    weights_file = inception_weights_file(config.inception_weights)
    sides = {}
    for name in ("real_images", "generated_images"):
        if not getattr(config, name):
            raise UserInputError(f"--{name} is required")
        files = list_images(getattr(config, name), flag=f"--{name}")
        if len(files) < 2:
            raise UserInputError(
                f"--{name} {getattr(config, name)}: a Fréchet distance needs at least 2 images, found {len(files)}"
            )
        if config.max_images and len(files) > config.max_images:
            files = sorted(random.Random(config.seed).sample(files, config.max_images))
        sides[name] = files
    device = "cuda" if torch.cuda.is_available() else "cpu"
    metric = fid_metric(weights_file).to(device)
    with torch.no_grad():
        for name, files in sides.items():
            update_with_images(metric, files, real=name == "real_images", batch_size=config.batch_size, device=device)
        fid = float(metric.compute())
    out_dir = Path(config.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {
        "fid": fid,
        "real_images": len(sides["real_images"]),
        "generated_images": len(sides["generated_images"]),
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
