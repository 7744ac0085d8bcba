"""Stage settings: a dataclass of defaults per script, a YAML preset that overrides them, flags on top.

A preset is a YAML file with one section per stage (`prompts:`, `generate:` ...); the keys of a section are
that stage's flag names. `paper` and `tiny` ship with the package; any other value of `--preset` is a path.
The resolved settings are saved next to the stage's output (`config.yaml`).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import sys
from pathlib import Path

import yaml

from .errors import UserInputError
from .io import atomic_path

PRESETS_DIR = Path(__file__).parent / "presets"
PRESETS = ("paper", "tiny")


def load_preset(name_or_path: str) -> dict:
    """The preset as a dict of stage sections; a clear error for a missing or malformed file."""
    path = PRESETS_DIR / f"{name_or_path}.yaml" if name_or_path in PRESETS else Path(name_or_path)
    if not path.is_file():
        raise UserInputError(f"--preset {name_or_path!r}: no such preset; use one of {PRESETS} or a YAML file path")
    try:
        preset = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise UserInputError(f"preset {path} is not valid YAML: {error}") from error
    if not isinstance(preset, dict) or not all(isinstance(v, dict) for v in preset.values()):
        raise UserInputError(f"preset {path} must map stage names to sections of flag: value pairs")
    return preset


def _as_argv(section: dict) -> list[str]:
    """Preset values as flags, so the parser converts and checks them exactly like typed flags (nulls are
    applied as defaults instead)."""
    argv = []
    for key, value in section.items():
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        argv += [f"--{key}", *map(str, values)]
    return argv


def _parser(config_cls, prog: str, preset_source: str | None = None):
    """`transformers.HfArgumentParser` builds the flags from the dataclass fields. Bad preset values raise an
    error naming the preset; bad flags get argparse's usual usage message and exit status 2."""
    from transformers import HfArgumentParser

    class Parser(HfArgumentParser):
        def error(self, message):
            if preset_source:
                raise UserInputError(f"{preset_source}: {message}")
            super().error(message)

    return Parser(config_cls, prog=prog, description=(config_cls.__doc__ or "").strip())


def parse_config(config_cls, stage: str, argv: list[str] | None = None):
    """Dataclass defaults < preset section `stage` < command-line flags. Every field is a flag."""
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = f"vehicle-diff {stage}"
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default=config_cls.preset)
    known, _ = pre.parse_known_args(argv)
    section = load_preset(known.preset).get(stage, {})
    field_names = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(section) - field_names)
    if unknown:
        raise UserInputError(
            f"preset {known.preset!r}, section {stage!r}: unknown key(s) {unknown}; valid keys: {sorted(field_names)}"
        )
    preset_argv = _as_argv(section)
    nulls = {key: None for key, value in section.items() if value is None}  # `key: null` in YAML
    # type-check the preset's values alone, so an error names the preset (argparse only: no dataclass is built)
    _parser(config_cls, prog, f"preset {known.preset!r}, section {stage!r}").parse_known_args(preset_argv)
    parser = _parser(config_cls, prog)
    parser.set_defaults(**nulls)
    return parser.parse_args_into_dataclasses(preset_argv + argv)[0]


def save_config(config, path: Path, stage: str) -> None:
    """The resolved settings (after preset and flags), with the package version, next to the outputs."""
    from . import __version__

    resolved = {
        "stage": stage,
        "vehicle_diff_version": __version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "config": dataclasses.asdict(config),
    }
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(resolved, sort_keys=False))


def resolve_config(config_cls, stage: str, preset: str, overrides: dict | None = None):
    """Dataclass defaults < preset section `stage` < `overrides`, with the same checks as the command line:
    how `vehicle-diff run` builds every stage's typed config once, without argv strings."""
    config = parse_config(config_cls, stage, ["--preset", preset])
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(config_cls)})
    if unknown:
        raise UserInputError(f"{stage}: unknown setting(s) {unknown}")
    return dataclasses.replace(config, **overrides) if overrides else config
