"""The main job end to end on the tiny preset, and the failures a long run meets."""

import errno
import subprocess
import sys

import pytest

from vehicle_diff.errors import UserInputError
from vehicle_diff.pipeline import main


@pytest.fixture(scope="module")
def demo_run(tiny_zoo, tmp_path_factory):
    return main(
        ["--preset", "tiny", "--num_target_images", "12", "--output_dir", str(tmp_path_factory.mktemp("run") / "demo")]
    )


def test_run_produces_every_artifact_and_reads_the_dataset_back_through_olah(demo_run):
    summary = (demo_run / "summary.md").read_text()
    assert "Read back through olah" in summary and "'train':" in summary
    for path in (
        "prompts/prompts.parquet",
        "captions/train/metadata.jsonl",
        "lora/pytorch_lora_weights.safetensors",
        "select/selected.json",
        "generated/records.parquet",
        "filtered/summary.json",
        "vehicle-diff/README.md",
        "reid/model.safetensors",
        "evaluation/metrics.json",
        "mirror/datasets/vehicle-diff/vehicle-diff/.git",
    ):
        assert (demo_run / path).exists(), path
    import datasets

    loaded = datasets.load_dataset(str(demo_run / "vehicle-diff"))
    assert loaded["train"].num_rows > 0


def test_a_second_run_skips_finished_stages(demo_run, capsys):
    before = (demo_run / "generated" / "records.parquet").stat().st_mtime_ns
    main(["--preset", "tiny", "--output_dir", str(demo_run), "--no_verify_mirror"])
    output = capsys.readouterr().out
    # evaluate and publish always run (cheap, and publishing the same files again changes nothing)
    assert output.count("complete with these settings and inputs, skipped") == 8
    assert (demo_run / "generated" / "records.parquet").stat().st_mtime_ns == before


def test_toy_run_keeps_its_own_reid_as_the_reports_s(tmp_path):
    with pytest.raises(UserInputError, match="--override train-reid.data_mode"):
        main(["--preset", "toy", "--output_dir", str(tmp_path / "out"), "--override", "train-reid.data_mode=B"])
    assert not (tmp_path / "out" / "toy-world").exists()  # refused before anything was rendered


def test_paper_preset_needs_target_images(tmp_path):
    with pytest.raises(UserInputError, match="--target_images is required"):
        main(["--preset", "paper", "--output_dir", str(tmp_path / "out")])


@pytest.mark.parametrize(
    "code, words", [(errno.ENOSPC, "No space left on device"), (errno.EROFS, "Read-only file system")]
)
def test_full_disk_or_read_only_output_is_a_clear_error_and_work_is_kept(tiny_prompts, tmp_path, code, words):
    """The write fails after a few batches (an injected OSError: tests run as root, where permissions do not
    stop writes); the command exits non-zero with one line, finished batches stay, and a re-run completes."""
    script = f"""
import os, sys
import vehicle_diff.io as io
real_replace, calls = os.replace, [0]
def failing_replace(src, dst):
    calls[0] += 1
    if calls[0] > 14:  # plan, config, then 4 images + 1 record shard per batch
        raise OSError({code}, os.strerror({code}), str(dst))
    real_replace(src, dst)
io.os.replace = failing_replace
from vehicle_diff.cli import main
main(["generate", "--preset", "tiny", "--prompts", sys.argv[1], "--output_dir", sys.argv[2]])
"""
    out = tmp_path / "gen"
    failed = subprocess.run([sys.executable, "-c", script, str(tiny_prompts), str(out)], capture_output=True, text=True)
    assert failed.returncode == 1, failed.stderr[-2000:]
    message = next(line for line in failed.stderr.splitlines() if line.startswith("vehicle-diff generate: error:"))
    assert "cannot write" in message and words in message and "re-run" in message and "Traceback" not in failed.stderr
    kept = len(list((out / "records").glob("batch-*.jsonl")))
    assert kept >= 1
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "vehicle_diff.cli",
            "generate",
            "--preset",
            "tiny",
            "--prompts",
            str(tiny_prompts),
            "--output_dir",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    import pyarrow.parquet as pq

    assert pq.read_table(out / "records.parquet").num_rows == 24


def test_malformed_preset_and_out_of_range_values_exit_non_zero(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("filter: {detection_confidence: [oops\n")
    for args, message in [
        (["filter", "--preset", str(bad)], "not valid YAML"),
        (["filter", "--preset", "tiny", "--detection_confidence", "1.5"], "must be in [0, 1]"),
        (["generate", "--preset", "tiny", "--images_per_identity", "-2"], "must be positive"),
        (
            ["caption", "--preset", "tiny", "--input_images", str(tmp_path), "--fraction", "2"],
            "--fraction must be in (0, 1]",
        ),
    ]:
        result = subprocess.run(
            [sys.executable, "-m", "vehicle_diff.cli", *args, "--output_dir", str(tmp_path / "o")],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr[-500:])
        assert "Traceback" not in result.stderr


def test_cli_lists_every_stage():
    result = subprocess.run([sys.executable, "-m", "vehicle_diff.cli", "--help"], capture_output=True, text=True)
    for stage in (
        "tiny-models",
        "run",
        "prompts",
        "caption",
        "finetune",
        "select",
        "generate",
        "filter",
        "export",
        "train-reid",
        "evaluate",
        "fid",
        "publish",
    ):
        assert f"  {stage} " in result.stdout


def test_run_killed_mid_generate_then_rerun_equals_an_uninterrupted_run(demo_run, tmp_path):
    """SIGKILL to generate while it writes its batches, then the same `run` again."""
    out = tmp_path / "killed"
    command = [
        sys.executable,
        "-m",
        "vehicle_diff.cli",
        "run",
        "--preset",
        "tiny",
        "--num_target_images",
        "12",
        "--output_dir",
        str(out),
        "--no_verify_mirror",
    ]
    from vehicle_diff import launch_environment

    env = launch_environment()  # as this test process started: earlier tests' imports changed os.environ
    # generate is SIGKILLed right after its second record shard (a named fault point); run stops there
    killed = subprocess.run(
        command, capture_output=True, text=True, env={**env, "VEHICLE_DIFF_KILL_AT": "generate.shard_written:2"}
    )
    assert killed.returncode != 0, killed.stdout[-2000:]
    assert len(list((out / "generated" / "records").glob("batch-*.jsonl"))) == 2
    assert not (out / "generated" / "done.json").exists(), "the kill should land mid-generate"
    finished = subprocess.run(command, capture_output=True, text=True, env=env)
    assert finished.returncode == 0, finished.stderr[-3000:]
    for name in (
        "generated/records.parquet",
        "filtered/records.parquet",
        "vehicle-diff/data/train-00000-of-00001.parquet",
    ):
        assert (out / name).read_bytes() == (demo_run / name).read_bytes(), name
    ours = sorted(p.relative_to(out / "generated") for p in (out / "generated" / "images").rglob("*.png"))
    theirs = sorted(p.relative_to(demo_run / "generated") for p in (demo_run / "generated" / "images").rglob("*.png"))
    assert ours == theirs
    assert all((out / "generated" / p).read_bytes() == (demo_run / "generated" / p).read_bytes() for p in ours)


def test_run_after_a_settings_change_refuses_then_redoes_what_changed(demo_run, capfd):
    change = [
        "--preset",
        "tiny",
        "--output_dir",
        str(demo_run),
        "--no_verify_mirror",
        "--version",
        "v1.1",
        "--override",
        "generate.images_per_identity=2",
    ]
    with pytest.raises(SystemExit) as refused:
        main(change)
    assert refused.value.code == 2
    assert "changed: settings.images_per_identity: 3 -> 2" in capfd.readouterr().err
    main([*change, "--overwrite"])
    output = capfd.readouterr().out
    assert "== prompts: complete" in output and "== select: complete" in output and "== generate ->" in output
    assert "generated images: 16;" in (demo_run / "summary.md").read_text()
    with pytest.raises(UserInputError, match="--override 'generate=2'"):
        main(["--preset", "tiny", "--output_dir", str(demo_run), "--override", "generate=2"])


def test_run_refuses_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("x")
    with pytest.raises(UserInputError, match="not an output of `run`"):
        main(["--preset", "tiny", "--output_dir", str(tmp_path / "mine")])
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["thesis.tex"]


def run_cli(*args, env_extra=None, **kwargs):
    import os

    from vehicle_diff import launch_environment

    env = {**launch_environment(), **(env_extra or {})}
    env.pop("VEHICLE_DIFF_KILL_AT", None)
    command = [sys.executable, "-m", "vehicle_diff.cli", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env={**os.environ, **env}, **kwargs)


def test_vehicle_diff_alone_prints_usage_and_exits_2():
    result = run_cli()
    assert result.returncode == 2 and "usage: vehicle-diff STAGE" in result.stderr and result.stdout == ""


def test_an_override_naming_a_missing_input_is_refused_before_any_stage(tmp_path):
    result = run_cli(
        "run", "--preset", "tiny", "--output_dir", tmp_path / "out", "--override", "select.candidates=[nope]"
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        "vehicle-diff run: error: --override select.candidates: 'nope': nope: no LoRA file "
        "(expected pytorch_lora_weights.safetensors)"
    ]
    assert not (tmp_path / "out" / "prompts").exists()


def test_ctrl_c_in_run_is_one_line_and_exit_130(tmp_path):
    """SIGINT to the whole process group (what Ctrl-C in a terminal does) while the first stage runs."""
    import signal

    result = run_cli(
        "run",
        "--preset",
        "tiny",
        "--output_dir",
        tmp_path / "out",
        env_extra={"VEHICLE_DIFF_INTERRUPT_AT": "prompts.opened"},
        start_new_session=True,  # the group that gets the SIGINT is the command's, not the test runner's
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert result.returncode == 130, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == ["vehicle-diff run: interrupted; re-run the same command to resume"], lines


def test_a_copied_run_folder_is_recognised_and_a_taken_version_names_runs_override(demo_run, tmp_path):
    """Every stage of a copy of a finished run is complete (fingerprints hold content, not paths); a version
    tag that points elsewhere is refused with the setting `run` takes to move it."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(demo_run, copy, symlinks=True)
    import yaml

    settings = yaml.safe_load((copy / "run_config.yaml").read_text())["run"]  # as the last run of the folder
    same = [f"--num_target_images={settings['num_target_images']}", f"--version={settings['version']}"]
    same += ["--override", *settings["override"]] if settings["override"] else []
    repo = copy / "mirror" / "datasets" / "vehicle-diff" / "vehicle-diff"
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "commit", "--allow-empty", "-qm", "another"], check=True)
    subprocess.run([*git, "tag", "-f", settings["version"]], check=True, capture_output=True)
    result = run_cli("run", "--preset", "tiny", "--output_dir", copy, "--no_verify_mirror", *same)
    assert result.stdout.count("complete with these settings and inputs, skipped") == 8, result.stderr[-3000:]
    assert result.returncode == 2
    taken = f"version {settings['version']} exists with other content; use a new --version, or --override publish.force=true"
    assert taken in result.stderr
    assert "--force" not in result.stderr.replace("publish.force", "")


def process_table() -> dict[int, tuple[int, str]]:
    """PID -> (parent PID, state) of every process, from /proc."""
    from pathlib import Path

    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        table[int(stat.parent.name)] = (int(fields[1]), fields[0])
    return table


def descendants(pid: int) -> dict[int, str]:
    table, found, frontier = process_table(), {}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, (ppid, state) in table.items():
            if ppid == parent and child not in found:
                found[child] = state
                frontier.append(child)
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_killed_run_leaves_no_stage_process_behind(tiny_zoo, tmp_path):
    """SIGKILL to `run` while its stage is held at a named point: the stage's process (and the server it was
    forked from) must not outlive it, or it would go on writing into the folder."""
    import os
    import signal
    import time

    from vehicle_diff import launch_environment

    env = {**launch_environment(), "VEHICLE_DIFF_STOP_AT": "prompts.opened"}
    command = [sys.executable, "-m", "vehicle_diff.cli", "run", "--preset", "tiny", "--output_dir", str(tmp_path)]
    run = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600  # a wait for the stage to get there, not a measure of speed
        while "T" not in descendants(run.pid).values():
            assert run.poll() is None and time.monotonic() < deadline, "the stage never reached prompts.opened"
            time.sleep(0.2)
        left = descendants(run.pid)
    finally:
        run.kill()
        run.wait()
    deadline = time.monotonic() + 120
    while True:
        alive = {pid for pid, (_, state) in process_table().items() if pid in left and state not in "ZX"}
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    assert not alive, f"still running after `run` was killed: {sorted(alive)} of {left}"
