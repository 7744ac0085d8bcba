"""What both trainers share: the output folder's job, checkpoints that are complete or invisible, resuming,
and the training-curves plot.

A checkpoint is `OUT/checkpoint-STEP` (diffusers' naming). It is written by accelerate's `save_state` into a
staging folder, then `trainer_state.json` and `manifest.json` (every file's sha256) are added and the folder is
renamed into place: a kill at any moment leaves either no checkpoint-STEP or a whole one. On resume the
manifest is checked; a damaged checkpoint is named and skipped for the previous one.

`trainer_state.json` holds the step, the fingerprint of the training plan (and its parts, to say what changed)
and the run's progress so far (loss history, evaluations, seconds trained): a resumed run continues its
history instead of starting a new one, so it writes what an uninterrupted run writes.

`--resume_from_checkpoint latest` (the default: the same command continues a killed run) | `checkpoint-STEP` |
PATH (another run's checkpoint of the same plan) | `none` (start from step 0).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from vehicle_diff.errors import UserInputError
from vehicle_diff.faults import fault_point
from vehicle_diff.io import atomic_path, sha256_file
from vehicle_diff.jobs import Job, changed_parts, warn

STATE_FILE = "trainer_state.json"
MANIFEST_FILE = "manifest.json"


def open_training_output(
    out_dir: str, stage: str, components: dict, *, owned: list[str], overwrite: bool, accelerator
) -> Job:
    """The main process claims the folder for this plan and holds its lock for the whole run: a second trainer
    on the same folder is refused, a folder made with other settings or data is refused (or `--overwrite`)."""
    job = Job(out_dir, stage, components, overwrite=overwrite, owned=[*owned, "checkpoint-*/**"])
    if accelerator.is_main_process:
        job.open(hold=True)
        for stale in job.out_dir.glob(".checkpoint-*.staging"):  # a checkpoint a kill interrupted
            shutil.rmtree(stale)
    accelerator.wait_for_everyone()
    return job


def checkpoint_step(path: Path) -> int | None:
    name = Path(path).name
    return int(name.split("-")[1]) if name.startswith("checkpoint-") and name.split("-")[1].isdigit() else None


def checkpoint_problem(path: Path) -> str | None:
    """Why a checkpoint folder cannot be resumed from, or None when it is whole."""
    manifest = Path(path) / MANIFEST_FILE
    try:
        files = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return f"it has no readable {MANIFEST_FILE}"
    for name, digest in files.items():
        file = Path(path) / name
        if not file.is_file() or sha256_file(file) != digest:
            return f"{name} is missing or damaged"
    if not (Path(path) / STATE_FILE).is_file():
        return f"it has no {STATE_FILE}"
    return None


def checkpoints(out_dir: Path) -> list[Path]:
    """The checkpoint folders of a run, oldest first."""
    found = [p for p in Path(out_dir).glob("checkpoint-*") if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=checkpoint_step)


def find_checkpoint(out_dir: Path, spec: str) -> Path | None:
    """`latest` = the newest whole checkpoint of this run (damaged ones are skipped with a warning); `none` =
    no checkpoint; a name `checkpoint-STEP` is looked up in this run; anything else is a path."""
    if spec == "none":
        return None
    if spec == "latest":
        for candidate in reversed(checkpoints(out_dir)):
            problem = checkpoint_problem(candidate)
            if problem is None:
                return candidate
            warn(f"checkpoint {candidate} is damaged ({problem}); skipping it for an earlier one")
        return None
    path = Path(out_dir) / spec if checkpoint_step(Path(spec)) is not None and "/" not in spec else Path(spec)
    if not path.is_dir():
        raise UserInputError(
            f"--resume_from_checkpoint {spec}: no checkpoint folder {path}; use latest, none, "
            "checkpoint-STEP or the path of a checkpoint folder"
        )
    problem = checkpoint_problem(path)
    if problem:
        raise UserInputError(f"--resume_from_checkpoint {spec}: {path} cannot be resumed from ({problem})")
    return path


def checkpoint_to_resume(job: Job, spec: str) -> Path | None:
    """The checkpoint `spec` names, checked before any model loads. A checkpoint of another plan (other settings,
    data, LoRA rank or architecture) is refused: resuming from it would silently train a different model, or
    fail deep inside torch."""
    path = find_checkpoint(job.out_dir, spec)
    if path is None:
        return None
    saved = json.loads((path / STATE_FILE).read_text())
    if saved.get("fingerprint") != job.fingerprint:
        changes = changed_parts(saved.get("components") or {}, job.components)
        raise UserInputError(
            f"--resume_from_checkpoint {spec}: {path} is a checkpoint of another training plan (changed: "
            f"{'; '.join(changes[:3]) or 'the plan is not recorded'}{' ...' if len(changes) > 3 else ''}); "
            "give a checkpoint of this plan, or --resume_from_checkpoint none to start from step 0"
        )
    return path


def resume(accelerator, path: Path | None) -> tuple[int, dict]:
    """Restore models (or adapters), optimizer, scheduler, RNG, the step and the progress saved with them.
    Returns (step, progress); step 0 and an empty progress for a fresh start. The progress lists the
    checkpoints this run resumed from (its provenance)."""
    if path is None:
        return 0, {}
    accelerator.load_state(str(path))
    saved = json.loads((path / STATE_FILE).read_text())
    step, progress = saved["step"], saved.get("progress") or {}
    source = {"checkpoint": str(path.resolve()), "step": step, "manifest_sha256": sha256_file(path / MANIFEST_FILE)}
    progress = {**progress, "resumed_from": [*progress.get("resumed_from", []), source]}
    accelerator.print(f"Resumed from {path} at step {step}.")
    return step, progress


def save_checkpoint(accelerator, job: Job, step: int, total_limit: int, progress: dict) -> Path:
    """Write checkpoint-STEP complete-or-invisible, with the plan's fingerprint and the run's progress, and keep
    the newest `total_limit` (all processes call it)."""
    out_dir = job.out_dir
    final, staging = out_dir / f"checkpoint-{step}", out_dir / f".checkpoint-{step}.staging"
    if accelerator.is_main_process and staging.exists():
        shutil.rmtree(staging)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state = {"step": step, "fingerprint": job.fingerprint, "components": job.components, "progress": progress}
        with atomic_path(staging / STATE_FILE) as tmp:
            tmp.write_text(json.dumps(state, indent=1, default=str))
        files = {p.relative_to(staging).as_posix(): sha256_file(p) for p in sorted(staging.rglob("*")) if p.is_file()}
        with atomic_path(staging / MANIFEST_FILE) as tmp:
            tmp.write_text(json.dumps(files, indent=1))
        if final.exists():  # the same step again (a run started afresh): the new one replaces it whole
            shutil.rmtree(final)
        staging.rename(final)
        fault_point("checkpoint.committed")
        for old in checkpoints(out_dir)[:-total_limit]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def adapter_checkpoint_hooks(accelerator, models: list) -> None:
    """Checkpoints hold only the trained LoRA adapters (peft state dicts, safetensors), not the frozen weights:
    kilobytes to megabytes instead of the whole UNet."""
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file, save_file

    def save_hook(hooked_models, weights, output_dir):
        if accelerator.is_main_process:
            for index, model in enumerate(hooked_models):
                state = get_peft_model_state_dict(accelerator.unwrap_model(model))
                save_file(
                    {k: v.detach().contiguous().cpu() for k, v in state.items()},
                    str(Path(output_dir) / f"adapter_{index}.safetensors"),
                )
        weights.clear()  # accelerate would otherwise save every frozen weight too

    def load_hook(hooked_models, input_dir):
        for index, model in enumerate(hooked_models):
            state = load_file(str(Path(input_dir) / f"adapter_{index}.safetensors"))
            result = set_peft_model_state_dict(accelerator.unwrap_model(model), state)
            if getattr(result, "unexpected_keys", None):
                raise UserInputError(f"{input_dir}: its adapters do not fit this model ({result.unexpected_keys[:3]})")
        hooked_models.clear()

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def plot_training_curves(history: list[dict], out_file: Path, title: str) -> None:
    """Loss and learning rate over the steps of this run (nothing when the run trained no step)."""
    from vehicle_diff.plots import training_curves

    if history:
        training_curves(
            [h["step"] for h in history],
            [h["loss"] for h in history],
            [h["learning_rate"] for h in history],
            out_file,
            title=title,
        )
