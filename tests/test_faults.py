"""Faults a long run meets at scale, on the tiny preset: foreign and used folders, changed inputs, torn shards,
duplicate keys, workers started side by side, and SIGKILL while a checkpoint is written. Each ends in an
identical result after a re-run, or in one line and exit status 2 with nothing lost."""

import os
import signal
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import sigkill_after_shards
from vehicle_diff.errors import UserInputError


def cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "vehicle_diff.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


def one_line_refusal(result):
    lines = result.stderr.strip().splitlines()
    return result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr


def images(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted((folder / "images").rglob("*.png"))}


def test_export_refuses_a_foreign_folder_and_the_current_one(tiny_filtered, tmp_path):
    mine = tmp_path / "mine"
    (mine / "prompts").mkdir(parents=True)
    (mine / "notes.txt").write_text("my notes")
    (mine / "prompts" / "a.txt").write_text("my prompts")
    result = cli("export", "--preset", "tiny", "--filtered", tiny_filtered, "--output_dir", mine)
    assert one_line_refusal(result) and "not an output of `export`" in result.stderr, result.stderr
    assert (mine / "notes.txt").read_text() == "my notes" and (mine / "prompts" / "a.txt").exists()
    result = cli("export", "--preset", "tiny", "--filtered", tiny_filtered, "--output_dir", ".", cwd=mine)
    assert one_line_refusal(result) and "refusing to use" in result.stderr
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt", "prompts"]
    result = cli(
        "export", "--preset", "tiny", "--filtered", tiny_filtered, "--output_dir", tmp_path / "ds", "--veri_dir", mine
    )
    assert one_line_refusal(result) and "--veri_dir" in result.stderr and not (tmp_path / "ds").exists()


def test_export_replaces_its_own_earlier_output_and_veri_folder_whole(tiny_filtered, tmp_path):
    from vehicle_diff_dataset import main

    args = [
        "--preset",
        "tiny",
        "--filtered",
        str(tiny_filtered),
        "--output_dir",
        str(tmp_path / "ds"),
        "--veri_dir",
        str(tmp_path / "veri"),
    ]
    main([*args, "--eval_fraction", "0"])
    assert len(list((tmp_path / "veri" / "image_train").iterdir())) == 24
    main([*args, "--overwrite"])  # identities held out: fewer train images, none left over from before
    rows = sum(pq.read_metadata(p).num_rows for p in (tmp_path / "ds" / "data").glob("train-*"))
    assert len(list((tmp_path / "veri" / "image_train").iterdir())) == rows == 18
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "veri"]  # no staging folder left


def test_filter_refuses_scores_of_images_that_were_regenerated(tiny_prompts, tmp_path):
    from vehicle_diff.generation.filter import main as filter_main
    from vehicle_diff.generation.generate import main as generate

    generated, filtered = tmp_path / "gen", tmp_path / "filtered"
    args = [
        "--preset",
        "tiny",
        "--prompts",
        str(tiny_prompts),
        "--output_dir",
        str(generated),
        "--images_per_identity",
        "1",
    ]
    generate(args)
    filter_args = ["--preset", "tiny", "--generated", str(generated), "--output_dir", str(filtered)]
    filter_main(filter_args)
    before = pq.read_table(filtered / "records.parquet").column("seed").to_pylist()
    generate([*args, "--seed", "1", "--overwrite"])
    with pytest.raises(UserInputError, match=r"changed: generated_images"):
        filter_main(filter_args)
    filter_main([*filter_args, "--overwrite"])
    after = pq.read_table(filtered / "records.parquet").column("seed").to_pylist()
    assert after == pq.read_table(generated / "records.parquet").column("seed").to_pylist() != before


def test_torn_shards_of_a_killed_run_are_redone_not_trusted(tiny_prompts, tmp_path):
    def command(out_dir):
        return [
            sys.executable,
            "-m",
            "vehicle_diff.generation.generate",
            "--preset",
            "tiny",
            "--prompts",
            str(tiny_prompts),
            "--output_dir",
            str(out_dir),
            "--batch_size",
            "1",
            "--images_per_identity",
            "4",
        ]

    killed = tmp_path / "killed"
    assert 3 <= sigkill_after_shards(command(killed), "generate", killed / "records", shards=3) < 32
    shards = sorted((killed / "records").glob("batch-*.jsonl"))
    text = shards[0].read_text()
    shards[0].write_text(text[: len(text) // 2])  # cut in the middle of a record
    lines = shards[1].read_text().splitlines(keepends=True)
    shards[1].write_text("".join(lines[:-1]))  # lost its last line
    result = subprocess.run(command(killed), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"{shards[0].name} is damaged" in result.stderr and f"{shards[1].name} is damaged" in result.stderr
    subprocess.run(command(tmp_path / "straight"), check=True, capture_output=True)
    assert (killed / "records.parquet").read_bytes() == (tmp_path / "straight" / "records.parquet").read_bytes()
    assert images(killed) == images(tmp_path / "straight")
    assert pq.read_metadata(killed / "records.parquet").num_rows == 32


def test_duplicate_identity_keys_are_refused_before_any_model_loads(tiny_prompts, tmp_path):
    import pyarrow as pa
    from vehicle_diff.generation.generate import main as generate

    table = pq.read_table(tiny_prompts / "prompts.parquet")
    identities = table.column("identity").to_pylist()
    identities[3] = identities[0]
    pq.write_table(
        table.set_column(table.column_names.index("identity"), "identity", pa.array(identities)),
        tmp_path / "dup.parquet",
    )
    with pytest.raises(UserInputError, match="appear more than once"):  # the model id is never looked at
        generate(
            [
                "--preset",
                "tiny",
                "--prompts",
                str(tmp_path / "dup.parquet"),
                "--output_dir",
                str(tmp_path / "g"),
                "--pretrained_model_name_or_path",
                "no/such-model",
            ]
        )
    assert not (tmp_path / "g").exists()


RECORDING_WORKER = """
import json, os, sys
import vehicle_diff.generation.generate as generate
render = generate.render
def recording_render(pipe, prompts, seeds, **kwargs):
    with open(os.environ["RENDER_LOG"], "a") as log:
        log.write(json.dumps(seeds) + "\\n")
    return render(pipe, prompts, seeds, **kwargs)
generate.render = recording_render
generate.main(sys.argv[1:])
"""


def test_two_plain_invocations_on_one_folder_share_the_work(tiny_prompts, tmp_path):
    args = ["--preset", "tiny", "--prompts", str(tiny_prompts), "--batch_size", "1", "--images_per_identity", "3"]
    log = tmp_path / "renders.jsonl"
    env = {**os.environ, "RENDER_LOG": str(log), "OMP_NUM_THREADS": "1"}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", RECORDING_WORKER, *args, "--output_dir", str(tmp_path / "shared")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    outputs = [worker.communicate(timeout=600) for worker in workers]
    assert all(worker.returncode == 0 for worker in workers), outputs[0][1][-2000:] + outputs[1][1][-2000:]
    rendered = [tuple(seeds) for seeds in map(eval, log.read_text().splitlines())]
    assert len(rendered) == len(set(rendered)) == 24  # every batch once, none twice
    subprocess.run(
        [sys.executable, "-m", "vehicle_diff.generation.generate", *args, "--output_dir", str(tmp_path / "alone")],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        check=True,
        capture_output=True,
    )
    assert (tmp_path / "shared" / "records.parquet").read_bytes() == (
        tmp_path / "alone" / "records.parquet"
    ).read_bytes()
    assert images(tmp_path / "shared") == images(tmp_path / "alone")


KILLED_IN_CHECKPOINT = """
import os, signal, sys
import safetensors.torch
save_file, calls = safetensors.torch.save_file, [0]
def save_then_die(*args, **kwargs):
    save_file(*args, **kwargs)
    calls[0] += 1
    if calls[0] == 2:  # the adapters of the second checkpoint are written; optimizer, manifest and rename are not
        os.kill(os.getpid(), signal.SIGKILL)
safetensors.torch.save_file = save_then_die
from vehicle_diff.training.finetune_lora import main
main(sys.argv[1:])
"""


def test_finetune_killed_while_writing_a_checkpoint_resumes_to_the_same_lora(tiny_captions, tmp_path):
    args = [
        "--preset",
        "tiny",
        "--train_data_dir",
        str(tiny_captions),
        "--max_train_steps",
        "4",
        "--checkpointing_steps",
        "2",
        "--validation_prompts",
        "a car",
        "--resume_from_checkpoint",
        "latest",
    ]
    killed = tmp_path / "killed"
    result = subprocess.run(
        [sys.executable, "-c", KILLED_IN_CHECKPOINT, *args, "--output_dir", str(killed)], capture_output=True, text=True
    )
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert [p.name for p in killed.glob("checkpoint-*")] == ["checkpoint-2"]  # the torn one is invisible
    from vehicle_diff.training.finetune_lora import main

    main([*args, "--output_dir", str(killed)])
    main([*args, "--output_dir", str(tmp_path / "straight")])
    a = load_file(killed / "pytorch_lora_weights.safetensors")
    b = load_file(tmp_path / "straight" / "pytorch_lora_weights.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)
    assert not list(killed.glob(".checkpoint-*"))


def test_a_damaged_latest_checkpoint_falls_back_and_names_resolve_like_diffusers(tiny_captions, tmp_path, capfd):
    from vehicle_diff.training.finetune_lora import main

    args = [
        "--preset",
        "tiny",
        "--train_data_dir",
        str(tiny_captions),
        "--max_train_steps",
        "4",
        "--checkpointing_steps",
        "2",
        "--validation_prompts",
        "a car",
    ]
    first = main([*args, "--output_dir", str(tmp_path / "first")])
    adapter = first / "checkpoint-4" / "adapter_0.safetensors"
    adapter.write_bytes(adapter.read_bytes()[: adapter.stat().st_size // 2])  # cut in half, as a kill would
    sizes = {p.name: sum(f.stat().st_size for f in p.rglob("*")) for p in first.glob("checkpoint-*")}
    lora_size = (first / "pytorch_lora_weights.safetensors").stat().st_size
    assert max(sizes.values()) <= 5 * lora_size, (sizes, lora_size)  # adapters + optimizer, not the whole UNet
    # another run's checkpoint, by path, into a new folder; then `latest` skips the damaged one
    main([*args, "--output_dir", str(tmp_path / "second"), "--resume_from_checkpoint", str(first / "checkpoint-2")])
    assert "Resumed from" in capfd.readouterr().out
    with pytest.raises(UserInputError, match="cannot be resumed from"):
        main([*args, "--output_dir", str(tmp_path / "third"), "--resume_from_checkpoint", str(first / "checkpoint-4")])
    main([*args, "--output_dir", str(first), "--resume_from_checkpoint", "latest", "--max_train_steps", "4"])
    assert "checkpoint-4 is damaged" in capfd.readouterr().err
    with pytest.raises(UserInputError, match="no checkpoint folder"):
        main([*args, "--output_dir", str(first), "--resume_from_checkpoint", "checkpoint-3"])


def test_a_second_trainer_on_the_same_folder_is_refused(tiny_captions, tmp_path):
    args = [
        "finetune",
        "--preset",
        "tiny",
        "--train_data_dir",
        tiny_captions,
        "--output_dir",
        tmp_path / "lora",
        "--max_train_steps",
        "200",
        "--checkpointing_steps",
        "100",
    ]
    first = subprocess.Popen(  # held (SIGSTOP) right after it claimed the folder
        [sys.executable, "-m", "vehicle_diff.cli", *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "VEHICLE_DIFF_STOP_AT": "finetune.claimed"},
    )
    try:
        _, status = os.waitpid(first.pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status), status
        second = cli(*args)
        assert one_line_refusal(second) and "in use by another `finetune` run" in second.stderr, second.stderr
    finally:
        first.kill()
        first.wait()
