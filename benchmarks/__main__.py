"""Run the CPU benchmarks and write their section of BENCHMARKS.md: figure, same-run baseline, ratio, target,
machine, date. `python -m benchmarks MODULE...` runs only those and writes a section named after that command,
so a partial run never stands in for the whole table. The GPU section is written by `python -m benchmarks.bench_gpu`
(`make bench-gpu`); each command replaces only its own section."""

from __future__ import annotations

import datetime as dt
import importlib
import os
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
    "benchmarks.bench_fid",
    "benchmarks.bench_reid",
]
BENCHMARKS_FILE = Path("BENCHMARKS.md")
HEADER = [
    "# Benchmarks",
    "",
    "Ratio: the figure against its same-run baseline, read with the row's target column.",
    "",
]


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores"


def write_table(rows: list[dict], section: str, file: Path = BENCHMARKS_FILE) -> None:
    """Replace the section `## {section}` of `file` (or add it) with the table of `rows`; others stay as they are."""
    today = dt.date.today().isoformat()
    table = [
        f"## {section}",
        "",
        f"Written on {today}, {machine()}.",
        "",
        "| benchmark | measured | baseline (same run) | ratio | target |",
        "|---|---|---|---|---|",
        *[f"| {r['benchmark']} | {r['measured']} | {r['baseline']} | {r['ratio']} | {r['target']} |" for r in rows],
        "",
    ]
    lines = file.read_text().splitlines() if file.exists() else list(HEADER)
    start = next((i for i, line in enumerate(lines) if line == f"## {section}"), None)
    if start is None:
        lines = [*lines, *([""] if lines and lines[-1] else []), *table]
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        lines = [*lines[:start], *table, *lines[end:]]
    file.write_text("\n".join(lines).rstrip("\n") + "\n")


def main(argv: list[str] | None = None) -> None:
    chosen = argv if argv is not None else sys.argv[1:]
    selected = chosen or MODULES
    rows = []
    for name in selected:
        print(f"== {name}", flush=True)
        for row in importlib.import_module(name).run():
            print("  " + " | ".join(str(v) for v in row.values()), flush=True)
            rows.append(row)
    write_table(rows, f"CPU (`python -m benchmarks {' '.join(chosen)}`)" if chosen else "CPU (`make bench`)")
    print(f"wrote {BENCHMARKS_FILE}")


if __name__ == "__main__":
    main()
