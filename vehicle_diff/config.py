"""Stage settings: a dataclass of defaults per script, a YAML preset that overrides them, flags on top.

A preset is a YAML file with one section per stage (`prompts:`, `generate:` ...); the keys of a section are
that stage's flag names. `paper`, `toy` and `tiny` ship with the package; any other value of `--preset` is a path.
The resolved settings are saved next to the stage's output (`config.yaml`).

Two entry points resolve the same way (dataclass defaults < preset section < the caller's values):
`parse_config` for a command line, `resolve_config` for code (`vehicle-diff run` calls every stage with it),
so stages never talk through argv strings. A section's values are checked against the dataclass field types
before they become the parser's defaults: a preset with a typo or a wrong type fails with one line naming the
preset, the section and the key, before any model is loaded.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime as dt
import difflib
import os
import re
import sys
import types
import typing
from pathlib import Path

import yaml

from .errors import UserInputError
from .io import atomic_path

PRESETS_DIR = Path(__file__).parent / "presets"
PRESETS = ("paper", "toy", "tiny")


def load_preset(name_or_path: str) -> dict:
    """The preset as a dict of stage sections; a clear error for a missing or malformed file."""
    path = PRESETS_DIR / f"{name_or_path}.yaml" if name_or_path in PRESETS else Path(name_or_path)
    if not path.is_file():
        raise UserInputError(f"--preset {name_or_path!r}: no such preset; use one of {PRESETS} or a YAML file path")
    try:
        preset = yaml.safe_load(path.read_text(encoding="utf-8-sig")) or {}
    except UnicodeDecodeError as error:
        raise UserInputError(f"preset {path} is not UTF-8 text ({error.reason}); save it as UTF-8") from None
    except yaml.YAMLError as error:
        problem = " ".join(str(error).split())  # PyYAML's message spans several lines
        raise UserInputError(f"preset {path} is not valid YAML: {problem}") from None
    if not isinstance(preset, dict) or not all(isinstance(v, dict) for v in preset.values()):
        raise UserInputError(f"preset {path} must map stage names to sections of flag: value pairs")
    return preset


def did_you_mean(name: str, candidates, prefix: str = "") -> str:
    """'; did you mean --X?' for a near miss (dashes and underscores count as the same), else ''."""
    normalized = {}
    for candidate in candidates:  # the first spelling of a name wins: --num_identities, not --num-identities
        normalized.setdefault(candidate.replace("-", "_"), candidate)
    close = difflib.get_close_matches(name.replace("-", "_"), list(normalized), n=1, cutoff=0.75)
    return f"; did you mean {prefix}{normalized[close[0]]}?" if close else ""


# --- checking values against the dataclass field types ------------------------------------------------------


def _field_types(config_cls) -> dict[str, object]:
    """Field name -> resolved annotation, for the fields the constructor takes. Resolved afresh each time:
    `HfArgumentParser` rewrites `Field.type` in place (it drops `| None`)."""
    hints = typing.get_type_hints(config_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(config_cls) if f.init}


def _type_name(annotation) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in args)
    if origin is list:
        return f"a list of {_type_name(args[0])}" if args else "a list"
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, args))
    return {bool: "true or false", int: "int", float: "float", str: "string"}.get(annotation, str(annotation))


def _convert(annotation, value):
    """`value` as `annotation` wants it, or ValueError with what is wrong. Strict about kinds (no string for
    an int, no number for a string); lenient only where YAML itself is: an int for a float, and a float
    written like `1e-4`, which PyYAML reads as a string."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise ValueError("null is not allowed here; leave the key out to keep the default")
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(option, value)
            except ValueError as error:
                errors.append(str(error))
        raise ValueError(errors[0] if len(errors) == 1 else f"expected {_type_name(annotation)}, got {value!r}")
    if value is None:
        expected = _type_name(annotation)
        raise ValueError(f"null is not allowed here (expected {expected}); leave the key out to keep the default")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"expected {_type_name(annotation)} (e.g. [a, b]), got {value!r}")
        item_type = args[0] if args else object
        converted = []
        for position, item in enumerate(value):
            try:
                converted.append(_convert(item_type, item))
            except ValueError as error:
                raise ValueError(f"item {position}: {error}") from None
        return converted
    if origin is typing.Literal:
        if value not in args:
            raise ValueError(f"invalid choice: {value!r} (choose from {', '.join(map(repr, args))})")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"invalid int value: {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool):
            raise ValueError(f"invalid float value: {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ValueError(f"invalid float value: {value!r}")
    if annotation is str:
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {value!r}; put it in quotes")
        return value
    if isinstance(annotation, type) and not isinstance(value, annotation):
        raise ValueError(f"expected {_type_name(annotation)}, got {value!r}")
    return value


def check_values(config_cls, values: dict, where: str) -> dict:
    """`values` type-checked and converted against `config_cls`'s fields; `where` ("preset 'tiny', section
    'prompts'") starts every error message. `preset` is not a value: it names the source of values."""
    field_types = _field_types(config_cls)
    settable = [name for name in field_types if name != "preset"]
    if "preset" in values:
        raise UserInputError(f"{where}: 'preset' cannot be set here; it names where the other values come from")
    unknown = [key for key in values if key not in settable]
    if unknown:
        raise UserInputError(f"{where}: unknown key(s) {unknown}{did_you_mean(str(unknown[0]), settable)}")
    checked = {}
    for key, value in values.items():
        try:
            checked[key] = _convert(field_types[key], value)
        except ValueError as error:
            raise UserInputError(f"{where}, key {key!r}: {error}") from None
    return checked


def preset_section(config_cls, stage: str, preset: str) -> dict:
    """Section `stage` of the preset, checked against `config_cls`. A section the package has no stage for is
    an error too (a typo there would otherwise be ignored without a word)."""
    from .cli import STAGES

    sections = load_preset(preset)
    unknown = [name for name in sections if name not in STAGES]
    if unknown:
        raise UserInputError(f"preset {preset!r}: unknown section(s) {unknown}{did_you_mean(unknown[0], STAGES)}")
    return check_values(config_cls, sections.get(stage) or {}, f"preset {preset!r}, section {stage!r}")


def _instantiate(config_cls, values: dict, preset: str):
    if "preset" in _field_types(config_cls):
        values = {**values, "preset": preset}
    return config_cls(**values)  # its __post_init__ checks ranges and combinations


def resolve_config(config_cls, stage: str, preset: str, overrides: dict | None = None):
    """The typed config for code: dataclass defaults < preset section `stage` < `overrides` (field name ->
    value, typed as the field is; paths may be `Path`s). Unknown keys and wrong types raise UserInputError."""
    section = preset_section(config_cls, stage, preset)
    return _instantiate(config_cls, {**section, **check_values(config_cls, overrides or {}, stage)}, preset)


# --- the command line -------------------------------------------------------------------------------------


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults after each flag's help (the preset's, when one is given), except for `--no_X` switches; each
    flag under its first name only (the `--dashed-alias` spellings work but would double every line)."""

    def _get_help_string(self, action):
        if getattr(action, "negates", None):
            return action.help
        return super()._get_help_string(action)

    def _format_action_invocation(self, action):
        if len(action.option_strings) > 1 and action.option_strings[0].startswith("--"):
            action = copy.copy(action)
            action.option_strings = action.option_strings[:1]
        return super()._format_action_invocation(action)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse would print usage and exit; one line names the problem instead
        raise UserInputError(re.sub(r"(--\w+)/--[\w-]+", r"\1", message))  # "--a_b/--a-b: ..." -> "--a_b: ..."


def _parser(config_cls, stage: str, preset: str, section: dict) -> argparse.ArgumentParser:
    """`transformers.HfArgumentParser` builds the flags from the dataclass fields; the preset's section
    becomes their defaults, so `--help` shows what that preset sets."""
    from transformers import HfArgumentParser

    class Parser(_Parser, HfArgumentParser):
        pass

    description = (config_cls.__doc__ or "").strip()
    parser = Parser(
        config_cls,
        prog=f"vehicle-diff {stage}",
        description=f"{description}\n\nDefaults shown: the settings' defaults with preset {preset!r} applied.",
        formatter_class=_HelpFormatter,
        allow_abbrev=False,  # `--num 3` must not silently mean whichever flag starts with it
    )
    for action in parser._actions:
        if action.help is None and action.option_strings:
            action.help = "(default: %(default)s)"  # argparse prints no default for a flag without help
        if action.nargs == 0 and action.const is False and action.option_strings[0].startswith("--no_"):
            action.negates = action.dest
            action.help = f"turn off --{action.dest} (same as --{action.dest} false)"
    if "preset" in _field_types(config_cls):
        parser.set_defaults(preset=preset)
    else:
        parser.add_argument("--preset", default=preset, help="paper, toy, tiny, or a YAML file")
    parser.set_defaults(**section)
    return parser


def _unknown_flags_error(parser: argparse.ArgumentParser, extras: list[str]) -> UserInputError:
    flags = [token.split("=", 1)[0] for token in extras if token.startswith("-") and not _is_number(token)]
    if not flags:
        return UserInputError(f"unexpected value(s) {' '.join(extras)!r}: every setting is a --flag VALUE pair")
    known = [option for action in parser._actions for option in action.option_strings if option.startswith("--")]
    hint = did_you_mean(flags[0], known) or f"; `{parser.prog} --help` lists the flags"
    return UserInputError(f"unknown flag{'s' if len(flags) > 1 else ''} {', '.join(flags)}{hint}")


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def parse_config(config_cls, stage: str, argv: list[str] | None = None):
    """Dataclass defaults < preset section `stage` < command-line flags. Every field is a flag."""
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = _Parser(add_help=False, allow_abbrev=False)
    pre.add_argument("--preset", default=getattr(config_cls, "preset", "paper"))
    preset = pre.parse_known_args(argv)[0].preset
    section = preset_section(config_cls, stage, preset)
    parser = _parser(config_cls, stage, preset, section)
    namespace, extras = parser.parse_known_args(argv)
    if extras:
        raise _unknown_flags_error(parser, extras)
    values = {name: getattr(namespace, name) for name in _field_types(config_cls) if name != "preset"}
    return _instantiate(config_cls, values, preset)


def save_config(config, path: Path, stage: str, provenance: dict | None = None) -> None:
    """The resolved settings (after preset and flags), with the package version, next to the outputs; with
    `provenance`, the exact revisions of the models the settings name (a flag such as `--revision` may be unset
    while the run used one precise commit)."""
    from . import __version__

    resolved = {
        "stage": stage,
        "vehicle_diff_version": __version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "config": dataclasses.asdict(config),
        **({"provenance": provenance} if provenance else {}),
    }
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(resolved, sort_keys=False))


def check_ranges(config, *, positive: tuple = (), non_negative: tuple = (), fraction: tuple = ()) -> None:
    """Range checks a stage's `__post_init__` shares: one line naming the first flag out of range, before any
    model or data loads. `fraction`: within [0, 1]. None (an unset optional) passes."""
    rules = [
        (positive, lambda v: v > 0, "must be positive"),
        (non_negative, lambda v: v >= 0, "must be >= 0"),
        (fraction, lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    ]
    for names, ok, words in rules:
        for name in names:
            value = getattr(config, name)
            values = value if isinstance(value, list) else [value]
            if any(v is not None and not ok(v) for v in values):
                raise UserInputError(f"--{name} {words} (got {value})")
