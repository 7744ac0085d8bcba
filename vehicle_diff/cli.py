"""`vehicle-diff STAGE [flags]`: one subcommand per stage; each is also `python -m MODULE`."""

from __future__ import annotations

import errno
import importlib
import signal
import sys

# subcommand -> (module with `main(argv)`, one-line description)
STAGES = {
    "tiny-models": (
        "vehicle_diff.tiny_models",
        "build an offline model zoo: the random `tiny` one, or the `toy` one trained on the toy world (--preset toy)",
    ),
    "toy-world": ("vehicle_diff.toy_world", "render the toy world's target cameras as a VeRi-776-layout dataset"),
    "run": ("vehicle_diff.pipeline", "every stage below in order, skipping finished ones (demo: --preset toy)"),
    "prompts": (
        "vehicle_diff.generation.prompts",
        "stage 1: sample identities from the vehicle catalog into a prompt library",
    ),
    "caption": (
        "vehicle_diff.generation.caption",
        "stage 2a: caption ~1% unlabeled target images with BLIP-2 (imagefolder)",
    ),
    "finetune": (
        "vehicle_diff.training.finetune_lora",
        "stage 2b: fine-tune an SDXL LoRA on the captions (accelerate)",
    ),
    "select": (
        "vehicle_diff.generation.select",
        "stage 3a: rank LoRA candidates / templates on the same prompts and seeds",
    ),
    "generate": (
        "vehicle_diff.generation.generate",
        "stage 3b: generate images per identity with SDXL (+ LoRA), resumable",
    ),
    "filter": ("vehicle_diff.generation.filter", "stage 3c: detect + crop vehicles, CLIP color check, near-duplicates"),
    "export": ("vehicle_diff_dataset", "stage 4: the kept crops as a Parquet + card HF dataset (and VeRi-style)"),
    "train-reid": (
        "vehicle_diff.training.train_reid",
        "stage 5a: train a timm re-ID model (CE + circle loss; R/S/D/B data)",
    ),
    "evaluate": ("vehicle_diff.training.evaluate", "stage 5b: mAP / CMC / mINP, re-ranking, retrieval picture"),
    "fid": ("vehicle_diff.training.fid", "FID between two image folders (Inception-v3 weights supplied locally)"),
    "publish": ("vehicle_diff.publish", "stage 6: versioned dataset / LoRA / re-ID repos (Hub or olah mirror)"),
}
# stages whose finished work survives an interruption, so running the same command again continues it
RESUMABLE = {"caption", "finetune", "generate", "filter", "train-reid", "run", "publish"}


def stage_of(main) -> str | None:
    """The subcommand whose module defines `main` (also under `python -m MODULE`, where it is `__main__`)."""
    module = main.__module__
    if module == "__main__":
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        module = spec.name if spec else module
    return next((name for name, (stage_module, _) in STAGES.items() if stage_module == module), None)


def interrupted(stage: str | None) -> None:
    """Ctrl-C: one line and exit status 130 (128 + SIGINT), the shells' convention, instead of a traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not print a traceback over the line
    prog = f"vehicle-diff {stage}" if stage else "vehicle-diff"
    resume = "; re-run the same command to resume" if stage in RESUMABLE else ""
    print(f"\n{prog}: interrupted{resume}", file=sys.stderr)
    sys.exit(130)


def run_main(main, argv: list[str] | None = None, prog: str | None = None) -> None:
    """Run a stage's `main`; bad input becomes one clear message and exit status 2, not a traceback."""
    from .errors import UserInputError

    stage = prog.removeprefix("vehicle-diff ") if prog else stage_of(main)
    prog = prog or (f"vehicle-diff {stage}" if stage else "vehicle-diff")
    try:
        main(argv)
    except UserInputError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        sys.exit(2)
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT):
            raise
        where = f" {error.filename}" if error.filename else ""
        print(
            f"\n{prog}: error: cannot write{where}: {error.strerror}. Finished work is kept; "
            "free space or fix the permissions, then re-run the same command to continue.",
            file=sys.stderr,
        )
        sys.exit(1)
    except KeyboardInterrupt:
        interrupted(stage)


def usage() -> str:
    lines = ["usage: vehicle-diff STAGE [--preset {paper,tiny,FILE}] [--output_dir DIR] [flags]", "", "stages:"]
    lines += [f"  {name:12s} {description}" for name, (_, description) in STAGES.items()]
    lines += ["", "`vehicle-diff STAGE --help` lists a stage's flags."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(usage())
        return
    if not argv:  # no stage is a usage error, as with any command line tool: the usage on stderr, exit 2
        print(usage(), file=sys.stderr)
        sys.exit(2)
    stage, *rest = argv
    if stage not in STAGES:
        import difflib

        near = difflib.get_close_matches(stage, list(STAGES), n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        print(
            f"vehicle-diff: error: unknown stage {stage!r}; {hint}`vehicle-diff --help` lists the stages",
            file=sys.stderr,
        )
        sys.exit(2)
    try:
        module = importlib.import_module(STAGES[stage][0])  # seconds: torch, diffusers ...
    except KeyboardInterrupt:
        interrupted(stage)
    run_main(module.main, rest, prog=f"vehicle-diff {stage}")


if __name__ == "__main__":
    main()
