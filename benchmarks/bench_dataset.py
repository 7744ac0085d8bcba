"""Stage 4: exporting 20,000 256x256 crops (images/s, peak RSS against 2,000), and reading the result back with
`load_dataset` (time to first row, rows/s). Baseline for the export: writing the same PNG bytes to one Parquet
file with pyarrow alone, the least any export must do."""

import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from benchmarks.common import peak_rss_of_module, row

SMALL, LARGE = 2_000, 20_000


def fake_filter_output(root: Path, count: int, per_identity: int = 20) -> Path:
    """`count` smooth 256 px crops (they compress like real ones, unlike noise) and kept filter records."""
    rng = np.random.default_rng(0)
    records = []
    for index in range(count):
        identity, sample = f"red-2000-brand-model{index // per_identity}-sedan", index % per_identity
        crop_file = f"crops/{identity}/{identity}-{sample:04d}.png"
        (root / crop_file).parent.mkdir(parents=True, exist_ok=True)
        image = Image.new("RGB", (256, 256), tuple(int(v) for v in rng.integers(0, 255, 3)))
        ImageDraw.Draw(image).rectangle([40, 100, 220, 200], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        image.save(root / crop_file)
        records.append(
            {
                "image_id": f"{identity}-{sample:04d}",
                "identity": identity,
                "vehicle_id": index // per_identity,
                "kept": True,
                "crop_file": crop_file,
                "color": "red",
                "body_style": "sedan",
                "brand": "Brand",
                "model": "Model",
                "year": 2000,
                "prompt": "a red car",
                "template_id": "paper",
                "seed": index,
                "det_box": [0.0, 0.0, 256.0, 256.0],
                "det_class": 2,
                "det_confidence": 0.9,
                "color_similarities": {"red": 0.3},
                "predicted_color": "red",
                "base_model": "m",
                "base_model_revision": None,
                "lora_sha256": None,
                "scheduler": "EulerDiscreteScheduler",
            }
        )
    pq.write_table(pa.Table.from_pylist(records), root / "records.parquet")
    return root


def run():
    import datasets

    import vehicle_diff_dataset

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        small, large = fake_filter_output(Path(tmp) / "f2k", SMALL), fake_filter_output(Path(tmp) / "f20k", LARGE)
        started = time.perf_counter()
        vehicle_diff_dataset.main(
            ["--preset", "tiny", "--filtered", str(large), "--output_dir", f"{tmp}/ds20k", "--eval_fraction", "0"]
        )
        export_s = time.perf_counter() - started
        started = time.perf_counter()
        crops = sorted((large / "crops").rglob("*.png"))
        pq.write_table(
            pa.table({"image": [p.read_bytes() for p in crops], "name": [p.name for p in crops]}), f"{tmp}/raw.parquet"
        )
        raw_s = time.perf_counter() - started
        rows.append(
            row(
                f"export {LARGE:,} crops of 256 px (build + Parquet + card)",
                f"{LARGE / export_s:.0f} img/s",
                f"{LARGE / raw_s:.0f} img/s (bytes -> one Parquet with pyarrow)",
                raw_s / export_s,
                "reported",
            )
        )
        args = ["--preset", "tiny", "--eval_fraction", "0"]
        small_rss = peak_rss_of_module(
            "vehicle_diff_dataset", [*args, "--filtered", str(small), "--output_dir", f"{tmp}/rss2k"]
        )
        large_rss = peak_rss_of_module(
            "vehicle_diff_dataset", [*args, "--filtered", str(large), "--output_dir", f"{tmp}/rss20k"]
        )
        rows.append(
            row(
                f"export peak RSS, {LARGE:,} vs {SMALL:,} crops",
                f"{large_rss:.0f} MiB",
                f"{small_rss:.0f} MiB",
                large_rss / small_rss,
                "~1 (bounded)",
            )
        )
        started = time.perf_counter()
        loaded = datasets.load_dataset(f"{tmp}/ds20k", split="train", cache_dir=f"{tmp}/cache")
        loaded[0]
        first_row_s = time.perf_counter() - started
        started = time.perf_counter()
        for _ in loaded:
            pass
        rows_per_s = len(loaded) / (time.perf_counter() - started)
        rows.append(
            row(
                f"load_dataset of the {LARGE:,}-crop export: time to first row",
                f"{first_row_s:.1f} s",
                "-",
                1.0,
                "reported",
            )
        )
        rows.append(
            row("iterating the loaded dataset (decoding images)", f"{rows_per_s:.0f} rows/s", "-", 1.0, "reported")
        )
    return rows
