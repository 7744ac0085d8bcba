"""Stage 1, the prompt library (paper §III-A): one row per synthetic identity, with its attributes and prompt.

An identity is one (color, production year, brand, car model, body style). `--num_identities N --seed S`
samples N distinct identities, stratified: brands take turns, body styles take turns inside a brand, and colors
follow one global cycle, so the library is spread over all three rather than being the catalog's first rows.
The sample is prefix-stable: the first N identities of a larger library with the same seed are the same.

    vehicle-diff prompts --num_identities 4940 --seed 0 --output_dir out/prompts
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

from vehicle_diff.config import check_ranges, parse_config, save_config
from vehicle_diff.errors import UserInputError
from vehicle_diff.io import atomic_path, sha256_file
from vehicle_diff.jobs import Job, output_settings

from .catalog import BODY_STYLES, Prototype, load_catalog, slug

PAPER_COLORS = ["red", "yellow", "green", "white", "black"]  # the paper's examples (§III-C)
VERI776_COLORS = ["yellow", "orange", "green", "gray", "red", "blue", "white", "golden", "brown", "black"]

# Prompt templates are data: the id travels with every prompt, so images can be traced to the wording.
TEMPLATES = {
    "paper": "a {color} {year} {brand} {model} {body_style} driving down the road.",  # the paper's final template
    "photo": "a photo of a {color} {year} {brand} {model} {body_style}.",
    "surveillance": "a surveillance camera photo of a {color} {year} {brand} {model} {body_style} on a city street.",
}


def build_prompt(template: str, *, color: str, year: int, brand: str, model: str, body_style: str) -> str:
    """Render one prompt; `body_style` is a canonical key and is written with its prompt words."""
    return template.format(color=color, year=year, brand=brand, model=model, body_style=BODY_STYLES[body_style])


def identity_key(color: str, prototype: Prototype) -> str:
    """`red-2012-audi-a5-coupe`: readable, stable, and short enough for a file name however long the catalog's
    names are (`slug` ends an over-long key in a hash of all of it, not of an already shortened `key`)."""
    return slug(color, prototype.year, prototype.brand, prototype.model, prototype.body_style)


def round_robin(iterables):
    """Take one item from each iterable in turn until all are exhausted."""
    iterators = deque(iter(it) for it in iterables)
    while iterators:
        iterator = iterators.popleft()
        try:
            yield next(iterator)
        except StopIteration:
            continue
        iterators.append(iterator)


def assign_colors(prototype_slots, colors: list[str]) -> list[tuple[Prototype, str]]:
    """Give each slot the next color of one global cycle, skipping colors its prototype already has: colors
    stay balanced along the sequence and no (prototype, color) pair repeats."""
    used: dict[Prototype, set[str]] = defaultdict(set)
    identities = []
    for position, prototype in enumerate(prototype_slots):
        candidates = (colors[(position + shift) % len(colors)] for shift in range(len(colors)))
        color = next(c for c in candidates if c not in used[prototype])
        used[prototype].add(color)
        identities.append((prototype, color))
    return identities


def sample_identities(
    prototypes: list[Prototype], colors: list[str], num_identities: int, seed: int
) -> list[tuple[Prototype, str]]:
    """N distinct (prototype, color) identities, stratified over brand, body style and color; see module doc."""
    capacity = len(prototypes) * len(colors)
    if num_identities > capacity:
        raise UserInputError(
            f"--num_identities {num_identities} is more than the catalog allows: {len(prototypes)} prototypes x "
            f"{len(colors)} colors = {capacity} distinct identities; add colors or catalog rows, or ask for fewer"
        )
    rng = random.Random(seed)
    colors = sorted(colors)
    rng.shuffle(colors)
    groups: dict[str, dict[str, list[Prototype]]] = defaultdict(lambda: defaultdict(list))
    for prototype in sorted(prototypes):
        groups[prototype.brand][prototype.body_style].append(prototype)
    brands = sorted(groups)
    rng.shuffle(brands)
    per_brand = []
    for brand in brands:
        styles = sorted(groups[brand])
        rng.shuffle(styles)
        for style in styles:
            rng.shuffle(groups[brand][style])
        # each (brand, body style) group offers its prototypes once per color, pass after pass
        per_brand.append(round_robin([groups[brand][style] * len(colors) for style in styles]))
    return assign_colors(islice(round_robin(per_brand), num_identities), colors)


def library_rows(identities: list[tuple[Prototype, str]], template_id: str) -> dict[str, list]:
    """Column-wise rows of the library; `vehicle_id` is the contiguous index in sampling order."""
    template = TEMPLATES[template_id]
    columns = defaultdict(list)
    for vehicle_id, (prototype, color) in enumerate(identities):
        attributes = dict(
            color=color,
            year=prototype.year,
            brand=prototype.brand,
            model=prototype.model,
            body_style=prototype.body_style,
        )
        columns["vehicle_id"].append(vehicle_id)
        columns["identity"].append(identity_key(color, prototype))
        for name, value in attributes.items():
            columns[name].append(value)
        columns["template_id"].append(template_id)
        columns["prompt"].append(build_prompt(template, **attributes))
    return dict(columns)


def summarize(columns: dict[str, list], skipped: list[str], catalog: str) -> dict:
    return {
        "catalog": catalog,
        "num_identities": len(columns.get("identity", [])),
        "skipped_catalog_rows": len(skipped),
        **{
            f"per_{name}": dict(Counter(columns.get(name, [])).most_common())
            for name in ("brand", "body_style", "color", "year")
        },
    }


@dataclass
class PromptsConfig:
    """Build the prompt library: one row per synthetic vehicle identity (paper §III-A)."""

    output_dir: str = field(default="vehicle-diff-output/prompts", metadata={"help": "where the library goes"})
    preset: str = field(default="paper", metadata={"help": "paper, toy, tiny, or a YAML file"})
    catalog: str | None = field(
        default=None,
        metadata={"help": "CSV / JSONL / Parquet with brand, model, year, body_style; default faker-vehicle"},
    )
    skip_invalid: bool = field(
        default=False, metadata={"help": "skip bad catalog rows (and report them) instead of failing"}
    )
    num_identities: int = field(default=4940, metadata={"help": "identities to sample (the paper: 4,940)"})
    seed: int = 0
    colors: list[str] = field(default_factory=lambda: list(VERI776_COLORS), metadata={"help": "shared with the filter"})
    template_id: str = field(default="paper", metadata={"help": f"one of {sorted(TEMPLATES)}"})
    overwrite: bool = field(default=False, metadata={"help": "replace this stage's earlier outputs in --output_dir"})
    dry_run: bool = field(default=False, metadata={"help": "print and write plan.json; write no library"})

    def __post_init__(self):
        check_ranges(self, non_negative=("seed",))
        if self.num_identities <= 0:
            raise UserInputError(f"--num_identities must be positive (got {self.num_identities})")
        if self.template_id not in TEMPLATES:
            raise UserInputError(f"--template_id {self.template_id!r}: unknown; use one of {sorted(TEMPLATES)}")
        colors = [c.strip().lower() for c in self.colors]
        if not colors or any(not c for c in colors) or len(set(colors)) != len(colors):
            raise UserInputError(f"--colors must be distinct, non-empty words (got {self.colors})")
        self.colors = colors


def job_for(config: PromptsConfig) -> Job:
    from importlib.metadata import version

    catalog = sha256_file(config.catalog) if config.catalog and Path(config.catalog).is_file() else None
    components = {
        "settings": output_settings(config, ignore=("catalog",)),
        "catalog_sha256": catalog,
        "faker_vehicle": None if config.catalog else version("faker-vehicle"),
    }
    return Job(
        config.output_dir,
        "prompts",
        components,
        overwrite=config.overwrite,
        inputs=[config.catalog],
        owned=["prompts.parquet", "summary.json", "config.yaml"],
    )


def build_library(config: PromptsConfig) -> Path:
    started = time.perf_counter()
    prototypes, skipped = load_catalog(config.catalog, skip_invalid=config.skip_invalid)
    identities = sample_identities(prototypes, config.colors, config.num_identities, config.seed)
    columns = library_rows(identities, config.template_id)
    if config.dry_run:
        from vehicle_diff.jobs import write_plan

        plan = {"stage": "prompts", "identities": len(identities), "prototypes": len(prototypes)}
        return write_plan(config.output_dir, {**plan, "colors": len(config.colors), "template_id": config.template_id})
    job = job_for(config).open()
    out_dir = job.out_dir

    import datasets

    library = datasets.Dataset.from_dict(columns)
    with atomic_path(out_dir / "prompts.parquet") as tmp:
        library.to_parquet(str(tmp))
    catalog_name = Path(config.catalog).name if config.catalog else "faker-vehicle (built-in)"
    summary = summarize(columns, skipped, catalog_name)
    with atomic_path(out_dir / "summary.json") as tmp:
        tmp.write_text(json.dumps({**summary, "skipped_rows": skipped}, indent=2))
    save_config(config, out_dir / "config.yaml", stage="prompts")
    job.mark_done({"identities": len(library)})

    top = lambda counts, k=8: ", ".join(f"{name} {count}" for name, count in list(counts.items())[:k])  # noqa: E731
    print(f"Prompt library: {len(library)} identities from {len(prototypes)} prototypes of {catalog_name}.")
    print(f"  brands ({len(summary['per_brand'])}): {top(summary['per_brand'])} ...")
    print(f"  body styles: {top(summary['per_body_style'], 20)}")
    print(f"  colors: {top(summary['per_color'], 20)}")
    if skipped:
        print(f"  skipped {len(skipped)} catalog row(s), listed in summary.json; first: {skipped[0]}")
    print(f"  example: {columns['prompt'][0]!r}")
    print(f"Wrote {out_dir / 'prompts.parquet'} in {time.perf_counter() - started:.1f} s.")
    return out_dir


def main(argv: list[str] | None = None) -> Path:
    return build_library(parse_config(PromptsConfig, "prompts", argv))


if __name__ == "__main__":
    from vehicle_diff.cli import run_main

    run_main(main)
