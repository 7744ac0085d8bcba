"""Settings: dataclass defaults < preset section < flags or code overrides, and one-line refusals of bad input."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from vehicle_diff.config import parse_config, preset_section, resolve_config
from vehicle_diff.errors import UserInputError

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


# a toy stage under the name of one that neither shipped preset has a section for
@dataclass
class Toy:
    """A toy stage."""

    output_dir: str = "out"
    preset: str = "paper"
    num_identities: int = 10
    learning_rate: float = 1e-3
    colors: list[str] = field(default_factory=lambda: ["red", "blue"])
    image_size: list[int] = field(default_factory=lambda: [32, 32])
    catalog: str | None = None
    max_steps: int | None = None
    flip: bool = field(default=True, metadata={"help": "mirror the images"})
    dry_run: bool = False

    def __post_init__(self):
        if self.num_identities <= 0:
            raise UserInputError(f"--num_identities must be positive (got {self.num_identities})")


def write_preset(tmp_path, text: str) -> str:
    path = tmp_path / "preset.yaml"
    path.write_text(text)
    return str(path)


def test_defaults_then_preset_then_overrides(tmp_path):
    preset = write_preset(tmp_path, "fid:\n  num_identities: 7\n  colors: [green]\n  flip: false\n")
    config = resolve_config(Toy, "fid", preset, {"num_identities": 3, "output_dir": tmp_path / "o"})
    assert config == Toy(output_dir=str(tmp_path / "o"), preset=preset, num_identities=3, colors=["green"], flip=False)
    assert resolve_config(Toy, "generate", preset) == Toy(preset=preset)  # no section: the dataclass defaults


def test_parse_config_flags_win_over_the_preset(tmp_path):
    preset = write_preset(tmp_path, "fid:\n  num_identities: 7\n  learning_rate: 1e-4\n  flip: false\n")
    config = parse_config(Toy, "fid", ["--preset", preset, "--colors", "a", "b", "--max_steps", "5"])
    assert (config.num_identities, config.learning_rate, config.flip) == (7, 1e-4, False)  # 1e-4: a YAML string
    assert (config.colors, config.max_steps, config.preset) == (["a", "b"], 5, preset)
    assert parse_config(Toy, "fid", ["--preset", preset, "--num_identities", "2", "--flip"]).flip is True
    assert parse_config(Toy, "fid", ["--no_flip"]).flip is False
    assert parse_config(Toy, "fid", ["--flip", "false", "--dry_run"]) == Toy(flip=False, dry_run=True)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("num_identities", [1, 2], "key 'num_identities': invalid int value: [1, 2]"),
        ("num_identities", "5", "key 'num_identities': invalid int value: '5'"),
        ("num_identities", 2.5, "invalid int value: 2.5"),
        ("num_identities", True, "invalid int value: True"),
        ("num_identities", None, "key 'num_identities': null is not allowed"),
        ("colors", None, "key 'colors': null is not allowed"),
        ("colors", "red", "key 'colors': expected a list of string"),
        ("colors", ["red", 3], "key 'colors': item 1: expected a string, got 3; put it in quotes"),
        ("image_size", [64, "x"], "key 'image_size': item 1: invalid int value: 'x'"),
        ("learning_rate", "fast", "key 'learning_rate': invalid float value: 'fast'"),
        ("flip", "yes please", "key 'flip': expected true or false"),
        ("output_dir", False, "key 'output_dir': expected a string, got False"),
        ("max_steps", "all", "key 'max_steps': invalid int value: 'all'"),
    ],
)
def test_wrong_types_are_refused_naming_the_key(tmp_path, key, value, message):
    with pytest.raises(UserInputError) as preset_error:
        preset_section(Toy, "fid", write_preset(tmp_path, f"fid: {{{key}: {_yaml(value)}}}\n"))
    assert "section 'fid'" in str(preset_error.value) and message in str(preset_error.value)
    with pytest.raises(UserInputError) as override_error:
        resolve_config(Toy, "fid", "paper", {key: value})
    assert message in str(override_error.value)


def _yaml(value) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def test_values_that_fit_the_types(tmp_path):
    text = "fid: {learning_rate: 1, max_steps: null, catalog: null, image_size: [8, 8], colors: []}\n"
    section = preset_section(Toy, "fid", write_preset(tmp_path, text))
    assert section == {"learning_rate": 1.0, "max_steps": None, "catalog": None, "image_size": [8, 8], "colors": []}
    assert isinstance(section["learning_rate"], float)


def test_unknown_keys_sections_and_flags_suggest_the_near_miss(tmp_path):
    preset = write_preset(tmp_path, "fid:\n  num_identites: 5\n")
    with pytest.raises(
        UserInputError, match=r"section 'fid': unknown key\(s\) \['num_identites'\]; did you mean num_identities\?"
    ):
        parse_config(Toy, "fid", ["--preset", preset])
    with pytest.raises(UserInputError, match=r"unknown section\(s\) \['prompt'\]; did you mean prompts\?"):
        resolve_config(Toy, "fid", write_preset(tmp_path, "prompt:\n  num_identities: 5\n"))
    with pytest.raises(UserInputError, match=r"fid: unknown key\(s\) \['learning_rat'\]; did you mean learning_rate"):
        resolve_config(Toy, "fid", "paper", {"learning_rat": 1.0})
    with pytest.raises(UserInputError, match="'preset' cannot be set here"):
        resolve_config(Toy, "fid", "paper", {"preset": "tiny"})
    with pytest.raises(UserInputError, match=r"^unknown flag --num_identites; did you mean --num_identities\?$"):
        parse_config(Toy, "fid", ["--num_identites", "3"])
    with pytest.raises(UserInputError, match=r"^unknown flag --bogus_flag; `vehicle-diff fid --help` lists"):
        parse_config(Toy, "fid", ["--bogus_flag", "1"])
    with pytest.raises(UserInputError, match="^unknown flag --num;"):  # no abbreviations of --num_identities
        parse_config(Toy, "fid", ["--num", "3"])
    with pytest.raises(UserInputError, match=r"^argument --num_identities: invalid int value: 'x'$"):
        parse_config(Toy, "fid", ["--num_identities", "x"])


def test_range_checks_of_the_dataclass_still_apply(tmp_path):
    with pytest.raises(UserInputError, match="--num_identities must be positive"):
        resolve_config(Toy, "fid", "paper", {"num_identities": 0})
    with pytest.raises(UserInputError, match="--num_identities must be positive"):
        parse_config(Toy, "fid", ["--num_identities", "-1"])


def test_help_shows_the_presets_values_and_a_help_of_its_own_for_no_flags(tmp_path, capsys):
    preset = write_preset(tmp_path, "fid:\n  num_identities: 7\n  flip: false\n")
    with pytest.raises(SystemExit) as done:
        parse_config(Toy, "fid", ["--preset", preset, "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--num_identities NUM_IDENTITIES (default: 7)" in text
    assert "--flip [FLIP] mirror the images (default: False)" in text
    assert "--no_flip turn off --flip (same as --flip false) --dry_run" in text
    assert "Defaults shown: the settings' defaults with preset" in text and "preset.yaml' applied" in text


def test_the_real_configs_and_presets():
    from vehicle_diff.generation.prompts import PromptsConfig

    config = resolve_config(PromptsConfig, "prompts", "tiny", {"seed": 3, "colors": ["Red", "blue"]})
    assert (config.num_identities, config.seed, config.colors, config.preset) == (8, 3, ["red", "blue"], "tiny")
    assert (
        parse_config(PromptsConfig, "prompts", ["--preset", "tiny", "--seed", "3", "--colors", "Red", "blue"]) == config
    )
    with pytest.raises(UserInputError, match="--template_id 'nope': unknown"):
        resolve_config(PromptsConfig, "prompts", "paper", {"template_id": "nope"})


def test_every_shipped_preset_section_fits_its_stage():
    from vehicle_diff.generation import caption, filter, generate, prompts, select
    from vehicle_diff.training import evaluate, finetune_lora, train_reid

    import vehicle_diff_dataset
    from vehicle_diff import pipeline, publish

    configs = {
        "prompts": prompts.PromptsConfig,
        "caption": caption.CaptionConfig,
        "select": select.SelectConfig,
        "finetune": finetune_lora.FinetuneConfig,
        "generate": generate.GenerateConfig,
        "filter": filter.FilterConfig,
        "export": vehicle_diff_dataset.ExportConfig,
        "train-reid": train_reid.TrainReIDConfig,
        "evaluate": evaluate.EvaluateConfig,
        "publish": publish.PublishConfig,
        "run": pipeline.RunConfig,
    }
    for preset in ("paper", "tiny"):
        sections = {stage: preset_section(config_cls, stage, preset) for stage, config_cls in configs.items()}
        assert sections["generate"]["num_inference_steps"] == {"paper": 50, "tiny": 4}[preset]
        assert sections["filter"]["mixed_precision" if preset == "paper" else "detector"] in ("fp16", "tiny:yolo.pt")


def cli(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vehicle_diff.cli", *args],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=kwargs.get("cwd"),
        timeout=300,
    )


@pytest.mark.parametrize(
    "args, line",
    [
        (["prompts", "--bogus_flag", "1"], "vehicle-diff prompts: error: unknown flag --bogus_flag; "),
        (["prompts", "--num_identites", "1"], "error: unknown flag --num_identites; did you mean --num_identities?"),
        (["finetune", "--report_to", "tensorboard"], "vehicle-diff finetune: error: unknown flag --report_to"),
        (["prompts", "--preset", "PRESET"], "error: preset 'PRESET', section 'prompts', key 'colors': null is not"),
    ],
)
def test_command_line_refusals_are_one_line_and_exit_2(tmp_path, args, line):
    preset = write_preset(tmp_path, "prompts:\n  colors: null\n")
    result = cli(*[preset if arg == "PRESET" else arg for arg in args])
    line = line.replace("PRESET", preset)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1 and line in result.stderr, result.stderr


def sigint_during_import(args: list[str], stage_module: str) -> tuple[int, list[str]]:
    """Start the command with import timing on, send SIGINT once torch is being imported (its first submodule
    is done; the stage module, which imports torch, is not), and return the exit status and the stderr lines that are not import timings."""
    process = subprocess.Popen(
        [sys.executable, "-X", "importtime", "-m", "vehicle_diff.cli", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        # a background job of a non-interactive shell starts with SIGINT ignored, and Python then keeps ignoring it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines: queue.Queue = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in process.stderr], daemon=True)
    reader.start()
    seen, deadline = [], time.time() + 120
    while time.time() < deadline:
        try:
            seen.append(lines.get(timeout=1))
        except queue.Empty:
            continue
        name = seen[-1].rsplit("|", 1)[-1].strip()  # importtime's last column, indented by nesting depth
        if name == "torch" or name.startswith("torch."):  # torch is being imported: the stage module is not yet
            break
    process.send_signal(signal.SIGINT)
    returncode = process.wait(timeout=120)
    reader.join(timeout=120)  # stderr read to its end: every line the process wrote is in the queue
    while not lines.empty():
        seen.append(lines.get())
    assert not any(line.rstrip().endswith(f"| {stage_module}") for line in seen), "the import finished first"
    return returncode, [line.rstrip() for line in seen if not line.startswith("import time:") and line.strip()]


@pytest.mark.parametrize(
    "stage, module, line",
    [
        (
            "train-reid",
            "vehicle_diff.training.train_reid",
            "vehicle-diff train-reid: interrupted; re-run the same command to resume",
        ),
        ("evaluate", "vehicle_diff.training.evaluate", "vehicle-diff evaluate: interrupted"),
    ],
)
def test_ctrl_c_during_the_stage_import_is_one_line_and_exit_130(stage, module, line):
    returncode, stderr = sigint_during_import([stage, "--preset", "tiny"], module)
    assert returncode == 130, stderr
    assert stderr == [line]


def test_ctrl_c_while_a_stage_runs(tmp_path):
    """A KeyboardInterrupt out of `main` itself, under `python -m MODULE` (the stage comes from the module)."""
    script = (
        "import sys; from vehicle_diff.cli import run_main\n"
        "def main(argv): raise KeyboardInterrupt\n"
        "main.__module__ = sys.argv[1]\n"
        "run_main(main)\n"
    )
    for module, line in [
        ("vehicle_diff.generation.generate", "vehicle-diff generate: interrupted; re-run the same command to resume"),
        ("vehicle_diff.generation.prompts", "vehicle-diff prompts: interrupted"),
    ]:
        result = subprocess.run([sys.executable, "-c", script, module], capture_output=True, text=True, env=ENV)
        assert result.returncode == 130 and result.stderr.split("\n") == ["", line, ""], result.stderr
