"""`vehicle-diff run`: every stage in order, each skipped when its output is complete and resumed when partial.

prompts -> caption -> finetune -> select -> generate -> filter -> export -> train-reid (synthetic) -> evaluate ->
publish (local olah mirror; and the Hub with --push_to_hub) -> read the dataset back through olah.

The target-camera images come from `--target_images`. Without it:
- `toy` renders the toy world's target cameras into `OUT/toy-world` (VeRi-776's layout, with ground truth), captions
  its training images, and after the stages trains re-ID on R, S, D and B (and on B with the world's own renders in
  place of the generated images, `OUT/toy-oracle`) and measures the run on the world's ground truth
  (`vehicle_diff.toy_report`: `OUT/toy_report.json`, a section of `summary.md`);
- `tiny` draws simple vehicle pictures (a box body, windows and wheels on a road, random colors and positions) so
  the machinery has something honest to caption: they are drawings, not camera images.

    vehicle-diff run --preset toy --output_dir demo-output
    vehicle-diff run --preset paper --target_images /data/VeRi/image_train --output_dir out
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .config import parse_config, resolve_config
from .errors import UserInputError
from .io import atomic_path, sha256_file


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


STAGE_CLASSES = {
    "prompts": ("vehicle_diff.generation.prompts", "PromptsConfig", "build_library"),
    "caption": ("vehicle_diff.generation.caption", "CaptionConfig", "caption"),
    "finetune": ("vehicle_diff.training.finetune_lora", "FinetuneConfig", "finetune"),
    "select": ("vehicle_diff.generation.select", "SelectConfig", "select_candidates"),
    "generate": ("vehicle_diff.generation.generate", "GenerateConfig", "generate"),
    "filter": ("vehicle_diff.generation.filter", "FilterConfig", "filter_images"),
    "export": ("vehicle_diff_dataset", "ExportConfig", "export_dataset"),
    "train-reid": ("vehicle_diff.training.train_reid", "TrainReIDConfig", "train_reid"),
    "evaluate": ("vehicle_diff.training.evaluate", "EvaluateConfig", "evaluate"),
    "publish": ("vehicle_diff.publish", "PublishConfig", "publish"),
}


@dataclass
class RunConfig:
    """Run every stage in order: prompts to publish. Stages already complete (same fingerprint) are skipped."""

    output_dir: str = field(default="vehicle-diff-output", metadata={"help": "one folder per stage inside"})
    preset: str = field(default="paper", metadata={"help": "paper, toy, tiny, or a YAML file"})
    target_images: str | None = field(
        default=None, metadata={"help": "unlabeled target-camera images (required but for toy and tiny)"}
    )
    num_target_images: int = field(
        default=24, metadata={"help": "tiny only: how many drawings to make without --target_images"}
    )
    version: str = "v1.0"
    override: list[str] = field(
        default_factory=list,
        metadata={
            "help": "STAGE.KEY=VALUE settings on top of the preset, e.g. generate.images_per_identity=10 "
            "select.candidates=[base] (VALUE is YAML)"
        },
    )
    overwrite: bool = field(
        default=False, metadata={"help": "re-run stages whose settings or inputs changed, replacing their outputs"}
    )
    push_to_hub: bool = field(default=False, metadata={"help": "also publish to the Hub (needs a token)"})
    verify_mirror: bool = field(default=True, metadata={"help": "read the dataset back through olah at the end"})

    def __post_init__(self):
        if self.num_target_images <= 0:
            raise UserInputError(f"--num_target_images must be positive (got {self.num_target_images})")
        parse_overrides(self.override)


def parse_overrides(items: list[str]) -> dict[str, dict]:
    """`STAGE.KEY=VALUE` strings -> {stage: {key: value}}, VALUE read as YAML."""
    import yaml

    overrides: dict[str, dict] = {}
    for item in items:
        target, sep, value = item.partition("=")
        stage, dot, key = target.partition(".")
        if not sep or not dot or stage not in STAGE_CLASSES:
            raise UserInputError(f"--override {item!r}: write STAGE.KEY=VALUE with STAGE one of {list(STAGE_CLASSES)}")
        overrides.setdefault(stage, {})[key] = yaml.safe_load(value)
    return overrides


def stage_class(stage: str):
    module, class_name, function = STAGE_CLASSES[stage]
    return getattr(importlib.import_module(module), class_name)


def resolve_stage_configs(config: RunConfig, out: Path, world: Path | None = None) -> dict:
    """Every stage's typed config, resolved once: preset < the run's wiring (where each stage reads and
    writes) < --override. `generate` learns the chosen LoRA and template from `select` when it has run. With a toy
    `world`, the run's re-ID (S) is evaluated on the world's query / gallery instead of held-out synthetic ones."""
    target = config.target_images or str(default_target_images(config, out))
    eval_data = f"veri776:{world}" if world else str(out / "vehicle-diff")
    wiring = {
        "prompts": {"output_dir": out / "prompts"},
        "caption": {"input_images": target, "output_dir": out / "captions"},
        "finetune": {"train_data_dir": out / "captions", "output_dir": out / "lora"},
        "select": {
            "prompts": out / "prompts",
            "candidates": ["base", str(out / "lora")],
            "real_images": out / "captions" / "train",
            "output_dir": out / "select",
        },
        "generate": {"prompts": out / "prompts", "output_dir": out / "generated"},
        "filter": {"generated": out / "generated", "output_dir": out / "filtered"},
        "export": {"filtered": out / "filtered", "output_dir": out / "vehicle-diff"},
        "train-reid": {
            "synthetic_data": out / "vehicle-diff",
            "data_mode": "S",
            **({"eval_data": eval_data} if world else {}),
            "output_dir": out / "reid",
        },
        "evaluate": {"model": out / "reid", "eval_data": eval_data, "output_dir": out / "evaluation"},
        "publish": {
            "dataset": out / "vehicle-diff",
            "lora": out / "lora",
            "reid": out / "reid",
            "version": config.version,
            "target": "mirror",
            "mirror_dir": out / "mirror",
            "output_dir": out / "publish-mirror",
        },
    }
    overrides = parse_overrides(config.override)
    configs = {}
    for stage, settings in wiring.items():
        cls = stage_class(stage)
        fields = {f.name for f in dataclasses.fields(cls)}
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in settings.items()}
        if "overwrite" in fields:
            settings["overwrite"] = config.overwrite
        configs[stage] = resolve_config(cls, stage, config.preset, {**settings, **overrides.get(stage, {})})
    return configs


def with_selection(generate_config, select_config, out: Path):
    """The generate config with the LoRA and template `select` chose (an explicit override wins). The LoRA is
    found among this run's candidates by its sha256, so a moved or copied run folder points at its own copy."""
    from vehicle_diff.generation.generate import lora_file

    chosen = json.loads((out / "select" / "selected.json").read_text())
    lora = chosen["lora_weights"]
    for candidate in select_config.candidates:
        try:
            if candidate != "base" and chosen.get("lora_sha256") == sha256_file(lora_file(candidate)):
                lora = candidate
        except UserInputError:  # a candidate that is gone: select would not be complete, it runs again
            continue
    return dataclasses.replace(
        generate_config,
        lora_weights=generate_config.lora_weights or lora,
        template_id=generate_config.template_id or chosen["template_id"],
    )


def check_given_inputs(configs: dict) -> None:
    """Inputs an `--override` names that no stage of this run makes are checked before the first stage runs,
    and named as the override the user typed (not the stage's own flag)."""
    from vehicle_diff.generation.generate import lora_file

    made_here = Path(configs["finetune"].output_dir).resolve()
    for candidate in configs["select"].candidates:
        if candidate != "base" and Path(candidate).resolve() != made_here:
            lora_file(candidate, f"--override select.candidates: {candidate!r}:")
    lora = configs["generate"].lora_weights
    if lora and Path(lora).resolve() != made_here:
        lora_file(lora, f"--override generate.lora_weights: {lora!r}:")


def stage_is_complete(stage: str, config, configs: dict) -> bool:
    """True when the stage's output carries the done-marker of exactly these settings and inputs (evaluate and
    publish always run: they are cheap and publishing is idempotent)."""
    from .jobs import Job

    if stage in ("evaluate", "publish"):
        return False
    module = importlib.import_module(STAGE_CLASSES[stage][0])
    try:
        if stage == "select":
            from vehicle_diff.generation.generate import lora_file
            from vehicle_diff.generation.select import real_image_files

            loras = {c: None if c == "base" else lora_file(c) for c in config.candidates}
            real = real_image_files(config.real_images) if config.real_images else []
            return module.job_for(config, configs["generate"], configs["filter"], loras, real).complete
        if stage in ("finetune", "train-reid", "export"):
            return Job(config.output_dir, stage, module.job_components(config), owned=[]).complete
        return module.job_for(config).complete
    except (UserInputError, OSError):  # an input is not there yet: the stage has to run
        return False


# The libraries the stages import, ~10 s on two cores: each stage's process forks from one server that imported
# them once, with nothing run (multiprocessing's forkserver). Not ultralytics: importing it sets OMP_NUM_THREADS; not
# datasets: it starts a native thread, and a fork copies no thread.
PRELOADED_MODULES = [
    "torch",
    "torchvision.transforms",
    "accelerate",
    "timm",
    "peft",
    "open_clip",
    "matplotlib.figure",
    "diffusers.optimization",
    "diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl",
    "transformers.models.clip.modeling_clip",
    "transformers.models.blip_2.modeling_blip_2",
]


def has_forkserver() -> bool:
    import multiprocessing

    return "forkserver" in multiprocessing.get_all_start_methods()


def stage_context():
    """Where stages start: forked from a preloaded server where the platform has one, else fresh (spawn)."""
    import multiprocessing

    if not has_forkserver():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOADED_MODULES)
    return context


def start_stage_server() -> None:
    """Start the server (unless it runs) with Ctrl-C ignored, as it ignores it once it has imported: Ctrl-C is for
    the stage and for `run`, and the imports must not stop with a traceback."""
    from multiprocessing import forkserver

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server inherits the disposition
    try:
        forkserver.ensure_running()
    finally:
        signal.signal(signal.SIGINT, previous)


def stop_stage_server() -> None:
    """The server lives for one `run`: the next starts its own, from the environment and files of its time."""
    from multiprocessing import forkserver

    forkserver._forkserver._stop()  # the documented way has none: it otherwise lives as long as this process


def run_stage_isolated(stage: str, config, **kwargs) -> None:
    """Run one stage's function in a process of its own that has run nothing before (a fork of the preloaded
    server, or a fresh interpreter): no RNG state, thread setting, deterministic flag or cached state leaks from
    one stage into the next, so `run` writes exactly what the stages alone write. Bad input there is its one
    line, and `run` stops with the same exit status."""
    from . import launch_environment

    module, _, function = STAGE_CLASSES[stage]
    environment, context = launch_environment(), stage_context()
    process = context.Process(
        target=_stage_entry,
        args=(stage, module, function, config, kwargs, os.getpid(), environment),
        name=f"vehicle-diff {stage}",
    )
    current = dict(os.environ)
    try:  # the server (or a spawned child) starts with os.environ as it is
        set_environment(environment)
        if has_forkserver():
            start_stage_server()
        process.start()
    finally:
        set_environment(current)
    try:
        process.join()
    except KeyboardInterrupt:  # the stage stops too (Ctrl-C reaches it with `run`); `run` says the one line
        if process.is_alive():
            os.kill(process.pid, signal.SIGINT)
        process.join()
        raise
    if process.exitcode:
        code = process.exitcode if process.exitcode > 0 else 130 if process.exitcode == -2 else 1
        if code not in (2, 130):
            print(
                f"vehicle-diff run: stage {stage} failed (exit status {process.exitcode}); see its messages above. "
                "Re-run the same command to resume.",
                file=sys.stderr,
            )
        raise SystemExit(code)


def set_environment(values: dict) -> None:
    """Make os.environ (and so the C environment a child inherits) exactly `values`."""
    for name in set(os.environ) - set(values):
        del os.environ[name]
    os.environ.update(values)


def drop_server_lifeline() -> None:
    """A forked stage inherits the pipe end by which the server sees `run` alive; holding it, the stage would keep
    the server up after `run` died, and the server the stage (its parent-death signal waits on the server). Closed,
    a killed `run` takes the server and then the stage with it, even a stopped one."""
    from multiprocessing import forkserver

    fd = forkserver._forkserver._forkserver_alive_fd  # set in the server's children only
    if fd is not None:
        os.close(fd)
        forkserver._forkserver._forkserver_alive_fd = None


def _stage_entry(
    stage: str, module: str, function: str, config, kwargs: dict, parent_pid: int, environment: dict
) -> None:
    from .cli import run_main
    from .jobs import die_with_parent

    die_with_parent(parent_pid)
    drop_server_lifeline()
    set_environment(environment)  # as a fresh interpreter would have it: some imports set variables

    def stop_quietly(signum, frame):
        # Stop at once, as a kill would (every stage is safe to kill anywhere): an exception raised here could land
        # in a finalizer, where Python prints it and carries on. The line is `run`'s to print, once.
        sys.stderr.flush()
        os._exit(130)

    signal.signal(signal.SIGINT, stop_quietly)
    work = getattr(importlib.import_module(module), function)
    run_main(lambda argv: work(config, **kwargs), [], prog=f"vehicle-diff run ({stage})")


def run_pipeline(config: RunConfig) -> Path:
    from .jobs import Job

    job = Job(config.output_dir, "run", {"layout": 1}, owned=[]).open(hold=True)  # one run at a time in a folder
    try:
        return run_stages(config, job.out_dir)
    finally:
        if has_forkserver():
            stop_stage_server()
        job.release()


def ensure_toy_world(config: RunConfig, out: Path, name: str = "toy-world", **settings):
    """The toy world's target cameras in `out/name` (the preset's world, with `settings` changed), rendered unless
    already there with these settings; its resolved config."""
    from .jobs import Job
    from .toy_world import ToyWorldConfig, build_target_dataset, world_components

    world = resolve_config(
        ToyWorldConfig,
        "toy-world",
        config.preset,
        {"output_dir": out / name, "overwrite": config.overwrite, **settings},
    )
    if not Job(world.output_dir, "toy-world", world_components(world), owned=[]).complete:
        build_target_dataset(world)
    return world


def default_target_images(config: RunConfig, out: Path) -> Path:
    return out / "toy-world" / "image_train" if config.preset == "toy" else out / "target_images"


def toy_reid_pair(configs: dict, out: Path, world: Path, name: str, **settings) -> tuple:
    """Re-ID trained with the preset's one budget on the world's training cameras and `settings`, and its
    evaluation on the world's query / gallery (where the run's own re-ID stages already evaluate)."""
    from .toy_report import reid_dirs

    train_dir, evaluation_dir = reid_dirs(out, name)
    train = dataclasses.replace(
        configs["train-reid"], real_data=f"veri776:{world}", output_dir=str(train_dir), **settings
    )
    evaluation = dataclasses.replace(configs["evaluate"], model=train.output_dir, output_dir=str(evaluation_dir))
    return train, evaluation


def toy_oracle_pair(config: RunConfig, configs: dict, out: Path, world) -> tuple:
    """B with a perfect generator: the world's own renders of new vehicles through the target cameras in place of
    the kept generated images, as many identities and images as S trained on. Set beside B, it says how much of
    B's gap to R is the generator's."""
    from .toy_report import ORACLE_MODE, reid_dirs

    synthetic = json.loads((reid_dirs(out, "S")[0] / "training_stats.json").read_text())
    oracle = ensure_toy_world(
        config, out, "toy-oracle", identities=2 * synthetic["num_classes"], seed=world.seed + 1
    )  # half of a world's vehicles are its training split
    return toy_reid_pair(
        configs,
        out,
        Path(world.output_dir),
        ORACLE_MODE,
        data_mode="B",
        synthetic_data=f"veri776:{oracle.output_dir}",
        max_synthetic_images=synthetic["synthetic_images"],
    )


def run_toy_reid(mode: str, train, evaluation, configs: dict, timings: dict) -> None:
    started = time.perf_counter()
    if not stage_is_complete("train-reid", train, configs):
        print(f"== toy world: re-ID on {mode} -> {train.output_dir}", flush=True)
        run_stage_isolated("train-reid", train)
    run_stage_isolated("evaluate", evaluation)
    timings[f"re-ID {mode}"] = round(time.perf_counter() - started, 1)


def run_stages(config: RunConfig, out: Path) -> Path:
    world = None
    if not config.target_images:
        if config.preset == "toy":
            if parse_overrides(config.override).get("train-reid", {}).get("data_mode", "S") != "S":
                raise UserInputError(
                    "--override train-reid.data_mode: on the toy world the run's own re-ID is the report's S "
                    "(R, D and B are trained beside it, in toy-reid/); leave data_mode out"
                )
            world = ensure_toy_world(config, out)
        elif config.preset == "tiny":
            if not (out / "target_images").is_dir():
                draw_target_images(out / "target_images", config.num_target_images)
        else:
            raise UserInputError(
                "--target_images is required: a folder of ~1% unlabeled images of your cameras (paper §III-B)"
            )
    world_dir = Path(world.output_dir) if world else None
    configs = resolve_stage_configs(config, out, world_dir)
    check_given_inputs(configs)
    timings, done = {}, []
    for stage in STAGE_CLASSES:
        stage_config = configs[stage]
        if stage == "generate":
            stage_config = configs["generate"] = with_selection(stage_config, configs["select"], out)
        save_run_configs(config, configs, out / "run_config.yaml")
        if stage_is_complete(stage, stage_config, configs):
            print(f"== {stage}: complete with these settings and inputs, skipped ({stage_config.output_dir})")
            done.append(stage)
            continue
        print(f"== {stage} -> {stage_config.output_dir}", flush=True)
        started = time.perf_counter()
        extra = (
            {"generate_config": configs["generate"], "filter_config": configs["filter"]} if stage == "select" else {}
        )
        if stage == "publish":
            extra = {"force_flag": "--override publish.force=true"}
        run_stage_isolated(stage, stage_config, **extra)
        timings[stage] = round(time.perf_counter() - started, 1)
    toy_report = None
    if world is not None:
        from .toy_report import ORACLE_MODE, REID_MODES, write_report

        for mode in REID_MODES:
            if mode != "S":  # S is the run's own train-reid and evaluate, done above
                run_toy_reid(mode, *toy_reid_pair(configs, out, world_dir, mode, data_mode=mode), configs, timings)
        run_toy_reid(ORACLE_MODE, *toy_oracle_pair(config, configs, out, world), configs, timings)
        started = time.perf_counter()
        toy_report = write_report(out, configs, world_dir)
        timings["toy report"] = round(time.perf_counter() - started, 1)
    if config.push_to_hub:
        hub = dataclasses.replace(configs["publish"], target="hub", output_dir=str(out / "publish-hub"))
        run_stage_isolated("publish", hub, force_flag="--override publish.force=true")
    read_back = None
    if config.verify_mirror:
        read_back = read_back_through_olah(
            out / "mirror", "vehicle-diff/vehicle-diff", config.version, out / "publish-mirror"
        )
    summary = run_summary(out, timings, read_back)
    if toy_report is not None:
        from .toy_report import report_markdown

        summary += (
            "\n"
            + report_markdown(toy_report)
            + f"\nThe report: {out / 'toy_report.json'}, pictures: {out / 'toy_report_images.png'}\n"
        )
    with atomic_path(out / "summary.md") as tmp:
        tmp.write_text(summary)
    print(summary)
    return out


def save_run_configs(config: RunConfig, configs: dict, path: Path) -> None:
    """Every stage's resolved settings, together, next to the run's outputs."""
    import yaml

    from . import __version__

    resolved = {
        "vehicle_diff_version": __version__,
        "run": dataclasses.asdict(config),
        "stages": {stage: dataclasses.asdict(stage_config) for stage, stage_config in configs.items()},
    }
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(resolved, sort_keys=False))


def main(argv: list[str] | None = None) -> Path:
    return run_pipeline(parse_config(RunConfig, "run", argv))


def read_back_through_olah(mirror: Path, repo: str, version: str, work_dir: Path) -> dict:
    """Serve the mirror with olah and load the dataset with `load_dataset(repo, revision)` in a fresh process
    (the Hub client reads HF_ENDPOINT when it is imported)."""
    from .publish import mirror_client_env, serve_mirror

    with serve_mirror(mirror, work_dir) as endpoint:
        script = (
            f"import datasets, json; ds = datasets.load_dataset({repo!r}, revision={version!r}); "
            "print(json.dumps({k: len(v) for k, v in ds.items()}))"
        )
        env = mirror_client_env(endpoint, work_dir / "hf-home")
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    if result.returncode:
        raise UserInputError(f"reading {repo}@{version} back through olah failed:\n{result.stderr[-2000:]}")
    return {"endpoint": endpoint, "splits": json.loads(result.stdout.strip().splitlines()[-1])}


def run_summary(out: Path, timings: dict, read_back: dict | None) -> str:
    library = json.loads((out / "prompts" / "summary.json").read_text())
    filtered = json.loads((out / "filtered" / "summary.json").read_text())
    metrics = json.loads((out / "evaluation" / "metrics.json").read_text())
    chosen = json.loads((out / "select" / "selected.json").read_text())
    plain = metrics["plain"]
    rejected = ", ".join(f"{k} {v}" for k, v in filtered["per_reason"].items() if k != "kept" and v)
    lines = [
        "# vehicle-diff run",
        "",
        f"- identities: {library['num_identities']}; generated images: {filtered['images']}; kept: {filtered['kept']} "
        f"({filtered['pass_rate']:.1%})." + (f" Rejected: {rejected}." if rejected else " None rejected."),
        f"- selected candidate: {chosen['candidate']}, template {chosen['template_id']}",
        f"- re-ID on the synthetic query/gallery: mAP {plain['mAP']:.4f}, rank-1 {plain['rank1']:.4f}",
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
    ]
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
