"""Run every benchmark and write BENCHMARKS.md: figure, same-run baseline, ratio, target, machine, date."""

from __future__ import annotations

import datetime as dt
import importlib
import platform
import sys
from pathlib import Path

import torch

MODULES = [
    "benchmarks.bench_prompts",
    "benchmarks.bench_finetune",
    "benchmarks.bench_generate",
    "benchmarks.bench_filter",
    "benchmarks.bench_dataset",
    "benchmarks.bench_reid",
    "benchmarks.bench_gpu",
]


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    import os

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores"


def main(argv: list[str] | None = None) -> None:
    selected = (argv if argv is not None else sys.argv[1:]) or MODULES
    rows = []
    for name in selected:
        print(f"== {name}", flush=True)
        for row in importlib.import_module(name).run():
            print("  " + " | ".join(str(v) for v in row.values()), flush=True)
            rows.append(row)
    today = dt.date.today().isoformat()
    lines = [
        "# Benchmarks",
        "",
        f"Written by `make bench` on {today}, {machine()}. Ratio: the figure against its same-run baseline, "
        "read with the row's target column.",
        "",
        "| benchmark | measured | baseline (same run) | ratio | target |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {r['benchmark']} | {r['measured']} | {r['baseline']} | {r['ratio']} | {r['target']} |" for r in rows]
    Path("BENCHMARKS.md").write_text("\n".join(lines) + "\n")
    print("wrote BENCHMARKS.md")


if __name__ == "__main__":
    main()
