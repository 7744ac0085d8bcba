"""`vehicle-diff fid` on crops like a detector's, every one a different width and height: peak RSS on 20 times as
many crops against the smaller set, each in a fresh process. Crops of different sizes never share an update, so a
stage that kept them until the last file would grow with their number; streaming keeps memory flat, and the
target names what holding every decoded crop would have added."""

import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from benchmarks.common import peak_rss_of_module, row
from vehicle_diff.testing import random_fid_weights

SMALL, LARGE = 20, 400  # generated crops; the real side is SMALL crops in both runs


def crop_size(index: int) -> tuple[int, int]:
    """(width, height) of a car-sized box, no two alike: the width grows by one pixel per crop."""
    return 120 + index, 90 + (37 * index) % 160


def write_crops(folder: Path, count: int, seed: int) -> int:
    """`count` smooth crops (they compress like real ones, unlike noise); returns their decoded size in bytes."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    decoded = 0
    for index in range(count):
        width, height = crop_size(index)
        image = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(0, 255, 3)))
        box = [width // 8, height // 3, width - width // 8, height - height // 6]
        ImageDraw.Draw(image).rectangle(box, fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        image.save(folder / f"{index:05d}.png", compress_level=1)
        decoded += width * height * 3
    return decoded


def run():
    from vehicle_diff.training.fid import WEIGHTS_FILE_NAMES

    with tempfile.TemporaryDirectory() as tmp:
        weights = random_fid_weights(Path(tmp) / WEIGHTS_FILE_NAMES[0])
        write_crops(Path(tmp) / "real", SMALL, seed=1)
        write_crops(Path(tmp) / "small", SMALL, seed=2)
        held = write_crops(Path(tmp) / "large", LARGE, seed=2) / 2**20
        rss = {}
        for name in ("small", "large"):
            args = ["--real_images", f"{tmp}/real", "--generated_images", f"{tmp}/{name}"]
            args += ["--inception_weights", str(weights), "--output_dir", f"{tmp}/fid-{name}"]
            rss[name] = peak_rss_of_module("vehicle_diff.training.fid", args)
    return [
        row(
            f"fid peak RSS, {LARGE:,} vs {SMALL:,} generated crops, every one a different size",
            f"{rss['large']:.0f} MiB",
            f"{rss['small']:.0f} MiB ({SMALL:,} crops)",
            rss["large"] / rss["small"],
            f"~1 (bounded; the {LARGE:,} crops decoded: {held:.0f} MiB)",
        )
    ]
