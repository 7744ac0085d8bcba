"""Stage 1: building the paper's 4,940-identity library, and a 100,000-identity one.

Baseline: reading and validating the catalog alone, the part every run must pay; the ratio shows what sampling
and rendering add on top. Target: the 4,940 library in well under 10 s.
"""

import time

from vehicle_diff.generation.catalog import load_catalog
from vehicle_diff.generation.prompts import VERI776_COLORS, library_rows, sample_identities

COUNTS = (4940, 100_000)  # the paper's library, and a large one


def run():
    started = time.perf_counter()
    prototypes, _ = load_catalog()
    catalog_s = time.perf_counter() - started
    rows = []
    for count in COUNTS:
        started = time.perf_counter()
        prototypes, _ = load_catalog()
        library_rows(sample_identities(prototypes, VERI776_COLORS, count, seed=0), "paper")
        total_s = time.perf_counter() - started
        rows.append(
            {
                "benchmark": f"prompt library, {count:,} identities (catalog + sample + render)",
                "measured": f"{total_s:.2f} s",
                "baseline": f"{catalog_s:.2f} s (catalog only)",
                "ratio": f"{total_s / catalog_s:.1f}x",
                "target": "< 10 s for 4,940" if count == 4940 else "works",
            }
        )
    return rows
