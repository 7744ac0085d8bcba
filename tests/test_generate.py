import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from safetensors.torch import load_file, save_file
from vehicle_diff.generation.generate import batch_requests, image_prompt, image_seed, main, view_phrase_for

from tests.conftest import launch_two_processes, sigkill_after_shards
from vehicle_diff.errors import UserInputError

LIBRARY = {
    "vehicle_id": [0, 1, 2],
    "identity": ["red-a", "blue-b", "white-c"],
    "color": ["red", "blue", "white"],
    "year": [2000, 2001, 2002],
    "brand": ["A", "B", "C"],
    "model": ["a", "b", "c"],
    "body_style": ["sedan", "suv", "van"],
    "template_id": ["paper"] * 3,
    "prompt": ["a red car.", "a blue car.", "a white car."],
}


def test_seeds_depend_on_global_seed_and_image_id_only():
    assert image_seed(0, "red-a-0000") == image_seed(0, "red-a-0000")
    assert len({image_seed(0, f"red-a-{i:04d}") for i in range(1000)}) == 1000
    assert image_seed(0, "red-a-0000") != image_seed(1, "red-a-0000")
    assert 0 <= image_seed(123, "x") < 2**63


def test_batches_cover_the_plan_exactly_once():
    requests = [r for b in range(4) for r in batch_requests(LIBRARY, 4, b, 3, seed=0, view_phrases=[])]
    assert [r["plan_index"] for r in requests] == list(range(12))
    assert len({r["image_id"] for r in requests}) == 12
    assert requests[5]["image_id"] == "blue-b-0001" and requests[5]["vehicle_id"] == 1
    assert batch_requests(LIBRARY, 4, 3, 5, seed=0, view_phrases=[]) == []  # past the end
    assert len(batch_requests(LIBRARY, 4, 2, 5, seed=0, view_phrases=[])) == 2  # the short last batch


def test_view_phrases_are_stable_per_image_and_recorded():
    phrases = ["seen from the front", "seen from the rear", "seen from the side"]
    picked = [view_phrase_for(f"red-a-{i:04d}", phrases) for i in range(30)]
    assert picked == [view_phrase_for(f"red-a-{i:04d}", phrases) for i in range(30)]
    assert set(picked) == set(phrases)
    assert (
        image_prompt("a red car driving down the road.", "seen from the rear")
        == "a red car driving down the road, seen from the rear."
    )
    request = batch_requests(LIBRARY, 2, 0, 2, seed=0, view_phrases=phrases)[0]
    assert request["prompt"] == image_prompt("a red car.", request["view_phrase"])


def records(out_dir):
    return pq.read_table(out_dir / "records.parquet").to_pylist()


def images(out_dir):
    return {p.relative_to(out_dir): p.read_bytes() for p in sorted((out_dir / "images").rglob("*.png"))}


def tiny_args(prompts, out_dir, *extra):
    return ["--preset", "tiny", "--prompts", str(prompts), "--output_dir", str(out_dir), *extra]


@pytest.fixture(scope="module")
def reference_run(tiny_prompts, tmp_path_factory):
    """An uninterrupted run: 8 identities x 3 images in batches of 4."""
    return main(tiny_args(tiny_prompts, tmp_path_factory.mktemp("ref") / "gen"))


def test_generate_writes_images_and_full_records(reference_run):
    rows = records(reference_run)
    assert len(rows) == 24 and len({r["image_id"] for r in rows}) == 24
    first = rows[0]
    for key in (
        "image_id",
        "identity",
        "vehicle_id",
        "brand",
        "model",
        "year",
        "body_style",
        "color",
        "prompt",
        "template_id",
        "seed",
        "base_model",
        "base_model_revision",
        "lora_sha256",
        "scheduler",
        "num_inference_steps",
        "guidance_scale",
        "height",
        "width",
        "file_name",
    ):
        assert key in first, key
    assert first["scheduler"] == "EulerDiscreteScheduler" and first["lora_sha256"] == ""
    assert first["base_model_revision"].startswith("sha256:")  # the tiny model's content hash
    assert len(images(reference_run)) == 24
    from PIL import Image

    assert Image.open(reference_run / first["file_name"]).size == (64, 64)


def test_same_records_and_settings_give_byte_identical_images(reference_run, tiny_prompts, tmp_path):
    again = main(tiny_args(tiny_prompts, tmp_path / "gen"))
    assert images(again) == images(reference_run)
    assert records(again) == records(reference_run)


def test_rerun_of_a_finished_run_changes_nothing(reference_run, tiny_prompts):
    before = {p: p.stat().st_mtime_ns for p in (reference_run / "images").rglob("*.png")}
    import socket

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    # what a SIGKILL mid-write leaves: atomic_path's temp file, named after a writer that is gone
    orphan = next((reference_run / "images").iterdir()) / f".x-0000.png~{socket.gethostname()}~{gone.pid}~abc123.tmp"
    orphan.write_bytes(b"half an image")
    main(tiny_args(tiny_prompts, reference_run))
    assert not orphan.exists()
    assert before == {p: p.stat().st_mtime_ns for p in (reference_run / "images").rglob("*.png")}


def test_sigkill_then_rerun_equals_an_uninterrupted_run(tiny_prompts, tmp_path):
    def command(out_dir):
        flags = tiny_args(tiny_prompts, out_dir, "--batch_size", "1", "--images_per_identity", "6")
        return [sys.executable, "-m", "vehicle_diff.generation.generate", *flags]

    finished = sigkill_after_shards(command(tmp_path / "killed"), "generate", tmp_path / "killed" / "records", shards=3)
    assert 3 <= finished < 48, "the kill should land mid-run"
    assert not (tmp_path / "killed" / "records.parquet").exists()
    subprocess.run(command(tmp_path / "killed"), check=True, capture_output=True)
    subprocess.run(command(tmp_path / "straight"), check=True, capture_output=True)
    assert (tmp_path / "killed" / "records.parquet").read_bytes() == (
        tmp_path / "straight" / "records.parquet"
    ).read_bytes()
    assert images(tmp_path / "killed") == images(tmp_path / "straight")
    assert not list((tmp_path / "killed").rglob("*.tmp"))


def test_lora_changes_images_and_is_recorded(reference_run, tiny_prompts, tiny_lora, tmp_path):
    out = main(tiny_args(tiny_prompts, tmp_path / "gen", "--lora_weights", str(tiny_lora)))
    rows = records(out)
    assert all(r["lora_sha256"] and len(r["lora_sha256"]) == 64 for r in rows)
    assert images(out).keys() == images(reference_run).keys()
    assert images(out) != images(reference_run)


def test_a_lora_of_another_base_model_is_a_clear_error(tiny_prompts, tiny_lora, tmp_path):
    state = load_file(tiny_lora / "pytorch_lora_weights.safetensors")
    wrong = {key: value[..., :3].contiguous() if value.ndim == 2 else value for key, value in state.items()}
    (tmp_path / "wrong").mkdir()
    save_file(wrong, tmp_path / "wrong" / "pytorch_lora_weights.safetensors")
    with pytest.raises(UserInputError, match="does not fit tiny:sdxl"):
        main(tiny_args(tiny_prompts, tmp_path / "gen", "--lora_weights", str(tmp_path / "wrong")))


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--images_per_identity", "0"], "--images_per_identity must be positive"),
        (["--height", "60"], "--height must be a multiple of 8"),
        (["--mixed_precision", "fp8"], "--mixed_precision 'fp8'"),
        (["--lora_weights", "/nonexistent"], "--lora_weights /nonexistent: no LoRA file"),
    ],
)
def test_bad_flags(tiny_prompts, tmp_path, flags, message):
    with pytest.raises(UserInputError, match=message):
        main(tiny_args(tiny_prompts, tmp_path / "gen", *flags))


def test_missing_prompt_library_and_mixed_plans_are_refused(reference_run, tiny_prompts, tmp_path):
    with pytest.raises(UserInputError, match="no prompt library there"):
        main(tiny_args(tmp_path / "nothing", tmp_path / "gen"))
    with pytest.raises(UserInputError, match=r"other inputs or settings \(changed: settings.seed: 0 -> 1\)"):
        main(tiny_args(tiny_prompts, reference_run, "--seed", "1"))


def test_dry_run_prints_the_plan_and_writes_only_the_plan(tiny_prompts, tmp_path, capsys):
    main(tiny_args(tiny_prompts, tmp_path / "gen", "--dry_run"))
    output = capsys.readouterr().out
    assert '"images": 24' in output and '"batches": 6' in output and "estimated_disk_gb" in output
    assert [p.name for p in (tmp_path / "gen").iterdir()] == ["plan.json"]
    main(tiny_args(tiny_prompts, tmp_path / "gen"))  # the dry run's folder is still a fresh output
    assert len(records(tmp_path / "gen")) == 24


def test_two_processes_split_the_batches(tiny_prompts, reference_run, tmp_path):
    result = launch_two_processes("vehicle_diff.generation.generate", tiny_args(tiny_prompts, tmp_path / "gen"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "generate [process 1]" in result.stderr and "generate [process 0]" in result.stderr
    assert records(tmp_path / "gen") == records(reference_run)
    assert images(tmp_path / "gen").keys() == images(reference_run).keys()


def test_a_base_model_that_fails_to_load_leaves_nothing_that_blocks_the_corrected_command(tiny_prompts, tmp_path):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "model_index.json").write_text("{}")
    out = tmp_path / "gen"
    command = [sys.executable, "-m", "vehicle_diff.cli", "generate", *tiny_args(tiny_prompts, out)]
    failed = subprocess.run([*command, "--pretrained_model_name_or_path", str(broken)], capture_output=True, text=True)
    assert failed.returncode == 2 and len(failed.stderr.strip().splitlines()) == 1, failed.stderr[-2000:]
    assert "not a complete saved model (KeyError: missing key '_class_name')" in failed.stderr
    corrected = subprocess.run([*command, "--images_per_identity", "1"], capture_output=True, text=True)
    assert corrected.returncode == 0, corrected.stderr[-2000:]
    assert len(records(out)) == 8


def test_overwrite_waits_for_no_one_and_two_plans_never_mix(tiny_prompts, tmp_path):
    """`generate --seed 1 --overwrite` while another `generate` holds a batch: refused, naming that worker; the
    first run then finishes its own plan, and the overwrite afterwards gives seed 1 throughout."""
    import os
    import signal
    import time
    from pathlib import Path

    out = tmp_path / "gen"
    command = [sys.executable, "-m", "vehicle_diff.cli", "generate", *tiny_args(tiny_prompts, out)]
    command += ["--images_per_identity", "1"]
    first = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "VEHICLE_DIFF_STOP_AT": "generate.shard_written"},  # stopped while it holds batch 0
    )
    try:
        stat = Path(f"/proc/{first.pid}/stat")
        while first.poll() is None and stat.read_text().split(")")[1].split()[0] != "T":
            time.sleep(0.05)  # polls for the named point, however long the models take to load
        assert first.poll() is None
        refused = subprocess.run([*command, "--seed", "1", "--overwrite"], capture_output=True, text=True)
        assert refused.returncode == 2, refused.stderr[-2000:]
        assert f"being written by another `generate` run (PID {first.pid} on" in refused.stderr
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait() == 0
    seeds_of_plan_0 = [r["seed"] for r in records(out)]
    assert len(seeds_of_plan_0) == 8 and '"seed": 0' in (out / "job.json").read_text()
    again = subprocess.run([*command, "--seed", "1", "--overwrite"], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    seeds = [r["seed"] for r in records(out)]
    assert len(seeds) == 8 and not set(seeds) & set(seeds_of_plan_0)
    assert '"seed": 1' in (out / "job.json").read_text()


def test_writer_threads_write_the_bytes_that_writing_in_turn_writes(reference_run, tiny_prompts, tmp_path):
    in_turn = main(tiny_args(tiny_prompts, tmp_path / "gen", "--image_writers", "0"))
    assert images(in_turn) == images(reference_run)  # the reference ran with the default writer threads
    assert (in_turn / "records.parquet").read_bytes() == (reference_run / "records.parquet").read_bytes()
    assert {r["unet_quantization"] for r in records(in_turn)} == {""}


def test_compile_prepares_and_compiles_the_unet_once(tiny_prompts, tiny_lora, tmp_path, monkeypatch, capsys):
    """The flag's plumbing: torch.compile itself takes minutes for even a tiny UNet on the CPU, so it is recorded
    here instead of run (a GPU benchmark runs it for real)."""
    import torch

    compiled = []

    def record_compile(module, **kwargs):
        compiled.append(module)
        return module

    monkeypatch.setattr(torch, "compile", record_compile)
    flags = ("--compile", "--lora_weights", str(tiny_lora), "--images_per_identity", "1")
    out = main(tiny_args(tiny_prompts, tmp_path / "gen", *flags))
    (unet,) = compiled
    assert unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert any(getattr(m, "fused_projections", False) for m in unet.modules())
    assert not any("lora" in name for name, _ in unet.named_parameters())  # fused into the weights
    assert capsys.readouterr().out.count("compiled the UNet") == 1
    assert len(records(out)) == 8 and len(images(out)) == 8


def test_fp8_is_refused_where_it_cannot_run_before_any_work(tiny_prompts, tmp_path, monkeypatch):
    import importlib.util

    import torch

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "torchao" else find_spec(name, *a)
    )
    with pytest.raises(UserInputError, match="pip install torchao"):
        main(tiny_args(tiny_prompts, tmp_path / "gen", "--quantize", "fp8"))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "torchao" else None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserInputError, match="FP8 tensor cores"):
        main(tiny_args(tiny_prompts, tmp_path / "gen", "--quantize", "fp8"))
    assert not (tmp_path / "gen").exists()
    with pytest.raises(UserInputError, match="--quantize 'int3'"):
        main(tiny_args(tiny_prompts, tmp_path / "gen", "--quantize", "int3"))


def test_every_record_says_its_image_came_from_a_quantized_unet(tiny_prompts, tmp_path, monkeypatch):
    """The recording, with the quantizer itself stubbed: FP8 kernels need a Hopper or Ada GPU."""
    import vehicle_diff.generation.generate as generate

    quantized = []
    monkeypatch.setattr(generate, "check_quantization", lambda quantize: None)
    monkeypatch.setattr(generate, "quantize_unet", lambda unet, quantize: quantized.append(quantize))
    out = main(tiny_args(tiny_prompts, tmp_path / "gen", "--quantize", "fp8", "--images_per_identity", "1"))
    assert quantized == ["fp8"]
    assert {r["unet_quantization"] for r in records(out)} == {"fp8"}


def test_a_failed_writer_leaves_no_claim_and_a_rerun_finishes(reference_run, tiny_prompts, tmp_path, monkeypatch):
    import vehicle_diff.generation.generate as generate

    write_batch, calls = generate.write_batch, []

    def full_disk_on_the_second_batch(*args):
        calls.append(args[2])
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return write_batch(*args)

    monkeypatch.setattr(generate, "write_batch", full_disk_on_the_second_batch)
    with pytest.raises(OSError, match="No space left"):
        main(tiny_args(tiny_prompts, tmp_path / "gen"))
    assert not list((tmp_path / "gen" / ".claims").iterdir())
    monkeypatch.setattr(generate, "write_batch", write_batch)
    main(tiny_args(tiny_prompts, tmp_path / "gen"))
    assert images(tmp_path / "gen") == images(reference_run)
    assert (tmp_path / "gen" / "records.parquet").read_bytes() == (reference_run / "records.parquet").read_bytes()
