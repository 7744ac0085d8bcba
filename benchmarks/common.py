"""Shared set-up for the benchmarks: the tiny zoo, a prompt library, peak memory of a child process."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("YOLO_OFFLINE", "1")


def tiny_prompts(out_dir: Path, num_identities: int) -> Path:
    from vehicle_diff.generation.prompts import main

    return main(["--preset", "tiny", "--num_identities", str(num_identities), "--output_dir", str(out_dir)])


def run_child(args: list[str]) -> float:
    """Wall seconds of `python ARGS` in a fresh process."""
    started = time.perf_counter()
    subprocess.run([sys.executable, *args], check=True, capture_output=True)
    return time.perf_counter() - started


def peak_rss_of_module(module: str, args: list[str]) -> float:
    """Peak RSS (MiB) of `python -m MODULE ARGS` in a fresh process."""
    with tempfile.NamedTemporaryFile(suffix=".rss") as out:
        run_child(["-m", "benchmarks.peak_rss", out.name, module, *args])
        return float(Path(out.name).read_text())


def row(benchmark: str, measured: str, baseline: str, ratio: float, target: str) -> dict:
    return {
        "benchmark": benchmark,
        "measured": measured,
        "baseline": baseline,
        "ratio": f"{ratio:.2f}",
        "target": target,
    }
