"""Stage 3c on the tiny preset: throughput batched vs one image per batch, and peak memory for 1,000 vs 10,000
images (it must not grow with the count: records and crops stream to disk)."""

import json
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from benchmarks.common import peak_rss_of_module, row, run_child


def fake_generation(out_dir: Path, count: int, seed: int = 0) -> Path:
    """`count` random 64 px images and generation records (10 per identity), written fast."""
    rng = np.random.default_rng(seed)
    records = []
    for index in range(count):
        identity = f"red-2000-brand-model{index // 10}-sedan"
        file_name = f"images/{identity}/{identity}-{index % 10:04d}.png"
        (out_dir / file_name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(out_dir / file_name, compress_level=1)
        records.append({"image_id": f"{identity}-{index % 10:04d}", "identity": identity, "vehicle_id": index // 10, "color": "red",
                        "file_name": file_name, "width": 64, "height": 64, "plan_index": index})  # fmt: skip
    pq.write_table(pa.Table.from_pylist(records), out_dir / "records.parquet")
    return out_dir


def run():
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        small = fake_generation(Path(tmp) / "gen1k", 1000)
        args = ["-m", "generation.filter", "--preset", "tiny", "--generated", str(small)]
        batched_s = run_child([*args, "--batch_size", "32", "--output_dir", f"{tmp}/f32"])
        single_s = run_child([*args, "--batch_size", "1", "--output_dir", f"{tmp}/f1"])
        rows.append(row("filter, tiny, 1,000 images: batch 32 vs batch 1 (whole command)", f"{1000 / batched_s:.0f} img/s",
                        f"{1000 / single_s:.0f} img/s (batch 1)", single_s / batched_s, "> 1 (speed-up)"))  # fmt: skip
        small_rss = peak_rss_of_module("generation.filter", ["--preset", "tiny", "--generated", str(small), "--batch_size", "32",
                                                              "--output_dir", f"{tmp}/rss1k"])  # fmt: skip
        large = fake_generation(Path(tmp) / "gen10k", 10_000)
        large_rss = peak_rss_of_module("generation.filter", ["--preset", "tiny", "--generated", str(large), "--batch_size", "32",
                                                              "--output_dir", f"{tmp}/f10k"])  # fmt: skip
        kept = json.loads((Path(tmp) / "f10k" / "summary.json").read_text())["images"]
        rows.append(row(f"filter peak RSS, {kept:,} images vs 1,000", f"{large_rss:.0f} MiB", f"{small_rss:.0f} MiB (1,000 images)",
                        large_rss / small_rss, "~1 (bounded)"))  # fmt: skip
    return rows
