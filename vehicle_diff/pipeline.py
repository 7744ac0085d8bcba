"""`vehicle-diff run`: every stage in order, each skipped when its output is complete and resumed when partial.

prompts -> caption -> finetune -> select -> generate -> filter -> export -> train-reid (synthetic) -> evaluate ->
publish (local olah mirror; and the Hub with --push_to_hub) -> read the dataset back through olah.

The target-camera images come from `--target_images`. Without it, and only for the `tiny` preset, the package
draws simple vehicle pictures itself (a box body, windows and wheels on a road, random colors and positions) so
the demo has something honest to caption: they are drawings, not camera images.

    vehicle-diff run --preset tiny --output_dir demo-output
    vehicle-diff run --preset paper --target_images /data/VeRi/image_train --output_dir out
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .config import parse_config, save_config
from .errors import UserInputError


def draw_target_images(out_dir: Path, count: int, seed: int = 0, size: int = 96) -> Path:
    """Simple vehicle drawings standing in for unlabeled target-camera images in the tiny demo."""
    import random

    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    palette = [
        (200, 30, 30),
        (240, 240, 240),
        (20, 20, 20),
        (30, 60, 200),
        (130, 130, 130),
        (230, 200, 40),
        (40, 150, 60),
    ]
    for index in range(count):
        image = Image.new("RGB", (size, size), (90, 140, 90))
        draw = ImageDraw.Draw(image)
        draw.rectangle([0, size // 2, size, size], fill=(70, 70, 75))  # road
        width, height = rng.randint(size // 2, size - 10), rng.randint(size // 5, size // 3)
        left, top = rng.randint(0, size - width), rng.randint(size // 2 - height // 2, size - height - 8)
        color = rng.choice(palette)
        draw.rectangle([left, top, left + width, top + height], fill=color)  # body
        draw.rectangle([left + width // 5, top - height // 2, left + 4 * width // 5, top], fill=color)  # cabin
        draw.rectangle([left + width // 4, top - height // 3, left + 3 * width // 4, top - 2], fill=(150, 190, 220))
        for x in (left + width // 5, left + 4 * width // 5):
            draw.ellipse([x - 6, top + height - 6, x + 6, top + height + 6], fill=(10, 10, 10))  # wheels
        image.save(out_dir / f"target_{index:04d}.png")
    return out_dir


@dataclass
class RunConfig:
    """Run every stage in order: prompts to publish. Stages already complete are skipped."""

    output_dir: str = field(default="vehicle-diff-output", metadata={"help": "one folder per stage inside"})
    preset: str = field(default="paper", metadata={"help": "paper, tiny, or a YAML file"})
    target_images: str | None = field(
        default=None, metadata={"help": "unlabeled target-camera images (required for paper)"}
    )
    num_target_images: int = field(
        default=24, metadata={"help": "tiny only: how many drawings to make without --target_images"}
    )
    version: str = "v1.0"
    push_to_hub: bool = field(default=False, metadata={"help": "also publish to the Hub (needs a token)"})
    verify_mirror: bool = field(default=True, metadata={"help": "read the dataset back through olah at the end"})


def stage_runs(config: RunConfig, out: Path) -> list[tuple[str, Path, str, callable]]:
    """(name, output folder, completion marker, runner) for each stage."""
    import vehicle_diff_dataset
    from generation import caption, generate, prompts, select
    from generation import filter as filter_stage
    from training import evaluate, finetune_lora, train_reid

    from . import publish

    preset = ["--preset", config.preset]
    target = config.target_images or str(out / "target_images")

    def selected_lora() -> list[str]:
        chosen = json.loads((out / "select" / "selected.json").read_text())
        return ["--lora_weights", chosen["lora_weights"]] if chosen["lora_weights"] else []

    def publish_args(target_kind: str) -> list[str]:
        return [*preset, "--dataset", str(out / "vehicle-diff"), "--lora", str(out / "lora"), "--reid", str(out / "reid"),
                "--version", config.version, "--target", target_kind, "--mirror_dir", str(out / "mirror"),
                "--output_dir", str(out / f"publish-{target_kind}")]  # fmt: skip

    runs = [
        ("prompts", out / "prompts", "prompts.parquet", lambda: prompts.main([*preset, "--output_dir", str(out / "prompts")])),
        ("caption", out / "captions", "train/metadata.jsonl",
         lambda: caption.main([*preset, "--input_images", target, "--output_dir", str(out / "captions")])),
        ("finetune", out / "lora", "README.md",
         lambda: finetune_lora.main([*preset, "--train_data_dir", str(out / "captions"), "--output_dir", str(out / "lora"),
                                     "--resume_from_checkpoint", "latest"])),
        ("select", out / "select", "selected.json",
         lambda: select.main([*preset, "--prompts", str(out / "prompts"), "--candidates", "base", str(out / "lora"),
                              "--real_images", str(out / "captions" / "train"), "--output_dir", str(out / "select")])),
        ("generate", out / "generated", "records.parquet",
         lambda: generate.main([*preset, "--prompts", str(out / "prompts"), *selected_lora(), "--output_dir", str(out / "generated")])),
        ("filter", out / "filtered", "summary.json",
         lambda: filter_stage.main([*preset, "--generated", str(out / "generated"), "--output_dir", str(out / "filtered")])),
        ("export", out / "vehicle-diff", "README.md",
         lambda: vehicle_diff_dataset.main([*preset, "--filtered", str(out / "filtered"), "--output_dir", str(out / "vehicle-diff")])),
        ("train-reid", out / "reid", "model.safetensors",
         lambda: train_reid.main([*preset, "--synthetic_data", str(out / "vehicle-diff"), "--data_mode", "S",
                                  "--output_dir", str(out / "reid"), "--resume_from_checkpoint", "latest"])),
        ("evaluate", out / "evaluation", "metrics.json",
         lambda: evaluate.main([*preset, "--model", str(out / "reid"), "--eval_data", str(out / "vehicle-diff"),
                                "--output_dir", str(out / "evaluation")])),
        ("publish", out / "publish-mirror", "report.txt", lambda: publish.main(publish_args("mirror"))),
    ]  # fmt: skip
    if config.push_to_hub:
        runs.append(("publish-hub", out / "publish-hub", "report.txt", lambda: publish.main(publish_args("hub"))))
    return runs


def read_back_through_olah(mirror: Path, repo: str, version: str, work_dir: Path) -> dict:
    """Serve the mirror with olah and load the dataset with `load_dataset(repo, revision)` in a fresh process
    (the Hub client reads HF_ENDPOINT when it is imported)."""
    from .publish import mirror_client_env, serve_mirror

    with serve_mirror(mirror, work_dir) as endpoint:
        script = (f"import datasets, json; ds = datasets.load_dataset({repo!r}, revision={version!r}); "
                  "print(json.dumps({k: len(v) for k, v in ds.items()}))")  # fmt: skip
        env = mirror_client_env(endpoint, work_dir / "hf-home")
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    if result.returncode:
        raise UserInputError(f"reading {repo}@{version} back through olah failed:\n{result.stderr[-2000:]}")
    return {"endpoint": endpoint, "splits": json.loads(result.stdout.strip().splitlines()[-1])}


def main(argv: list[str] | None = None) -> Path:
    config = parse_config(RunConfig, "run", argv)
    out = Path(config.output_dir)
    if not config.target_images:
        if config.preset != "tiny":
            raise UserInputError(
                "--target_images is required: a folder of ~1% unlabeled images of your cameras (paper §III-B)"
            )
        if not (out / "target_images").is_dir():
            draw_target_images(out / "target_images", config.num_target_images)
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "run_config.yaml", stage="run")
    timings = {}
    for name, folder, marker, runner in stage_runs(config, out):
        if (folder / marker).exists():
            print(f"== {name}: complete, skipped ({folder})")
            continue
        print(f"== {name} -> {folder}", flush=True)
        started = time.perf_counter()
        runner()
        timings[name] = round(time.perf_counter() - started, 1)
    read_back = None
    if config.verify_mirror:
        read_back = read_back_through_olah(
            out / "mirror", "vehicle-diff/vehicle-diff", config.version, out / "publish-mirror"
        )
    summary = run_summary(out, timings, read_back)
    (out / "summary.md").write_text(summary)
    print(summary)
    return out


def run_summary(out: Path, timings: dict, read_back: dict | None) -> str:
    library = json.loads((out / "prompts" / "summary.json").read_text())
    filtered = json.loads((out / "filtered" / "summary.json").read_text())
    metrics = json.loads((out / "evaluation" / "metrics.json").read_text())
    chosen = json.loads((out / "select" / "selected.json").read_text())
    plain = metrics["plain"]
    lines = [
        "# vehicle-diff run",
        "",
        f"- identities: {library['num_identities']}; generated images: {filtered['images']}; kept: {filtered['kept']} "
        f"({filtered['pass_rate']:.1%}); rejected per reason: " + ", ".join(f"{k} {v}" for k, v in filtered["per_reason"].items() if k != "kept" and v),
        f"- selected candidate: {chosen['candidate']}",
        f"- re-ID on the synthetic query/gallery ({metrics['data']}): mAP {plain['mAP']:.4f}, rank-1 {plain['rank1']:.4f}",
        "",
        "| artifact | path |",
        "|---|---|",
        f"| prompt library | {out / 'prompts' / 'prompts.parquet'} |",
        f"| target images / captions | {out / 'captions' / 'train'} |",
        f"| LoRA (+ card, validation grid) | {out / 'lora' / 'pytorch_lora_weights.safetensors'} |",
        f"| candidate ranking | {out / 'select' / 'ranking.md'} |",
        f"| generated images + records | {out / 'generated' / 'images'}, {out / 'generated' / 'records.parquet'} |",
        f"| filter summary + contact sheets | {out / 'filtered' / 'summary.md'}, {out / 'filtered' / 'contact_sheets'} |",
        f"| dataset (`load_dataset` this folder) | {out / 'vehicle-diff'} |",
        f"| re-ID model (`ReIDModel.from_pretrained`) | {out / 'reid'} |",
        f"| evaluation + retrieval picture | {out / 'evaluation' / 'metrics.md'}, {out / 'evaluation' / 'retrieval.png'} |",
        f"| local mirror (olah layout) | {out / 'mirror'} |",
    ]  # fmt: skip
    if read_back:
        lines += [
            "",
            f"Read back through olah ({read_back['endpoint']}): `load_dataset('vehicle-diff/vehicle-diff', revision=...)` -> {read_back['splits']}",
        ]
    if timings:
        lines += ["", "Stage seconds this run: " + ", ".join(f"{k} {v}" for k, v in timings.items())]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    from vehicle_diff.cli import run_main

    run_main(main)
