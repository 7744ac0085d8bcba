"""Stage 3c on the tiny preset: throughput batched vs one image per batch, and peak memory for 1,000 vs 10,000
images (it must not grow with the count: records and crops stream to disk)."""

import json
import tempfile
from pathlib import Path

from benchmarks.common import peak_rss_of_module, row, run_child
from vehicle_diff.testing import fake_generation

SMALL, LARGE = 1000, 10_000


def run():
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        small = fake_generation(Path(tmp) / "gen1k", SMALL)
        args = ["-m", "vehicle_diff.generation.filter", "--preset", "tiny", "--generated", str(small)]
        batched_s = run_child([*args, "--batch_size", "32", "--output_dir", f"{tmp}/f32"])
        single_s = run_child([*args, "--batch_size", "1", "--output_dir", f"{tmp}/f1"])
        rows.append(
            row(
                f"filter, tiny, {SMALL:,} images: batch 32 vs batch 1 (whole command)",
                f"{SMALL / batched_s:.0f} img/s",
                f"{SMALL / single_s:.0f} img/s (batch 1)",
                single_s / batched_s,
                "> 1 (speed-up)",
            )
        )
        small_rss = peak_rss_of_module(
            "vehicle_diff.generation.filter",
            ["--preset", "tiny", "--generated", str(small), "--batch_size", "32", "--output_dir", f"{tmp}/rss1k"],
        )
        large = fake_generation(Path(tmp) / "gen10k", LARGE)
        large_rss = peak_rss_of_module(
            "vehicle_diff.generation.filter",
            ["--preset", "tiny", "--generated", str(large), "--batch_size", "32", "--output_dir", f"{tmp}/f10k"],
        )
        kept = json.loads((Path(tmp) / "f10k" / "summary.json").read_text())["images"]
        rows.append(
            row(
                f"filter peak RSS, {kept:,} images vs {SMALL:,}",
                f"{large_rss:.0f} MiB",
                f"{small_rss:.0f} MiB ({SMALL:,} images)",
                large_rss / small_rss,
                "~1 (bounded)",
            )
        )
    return rows
