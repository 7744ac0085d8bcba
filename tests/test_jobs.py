"""The job layer on hand-made folders: output safety, fingerprints, shards, claims and whole-folder replaces."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vehicle_diff import jobs
from vehicle_diff.errors import UserInputError
from vehicle_diff.jobs import Job, TornShard, read_shard, replace_folder, write_shard


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.mark.parametrize("name", ["/", "~", ".", ".."])
def test_outputs_that_would_swallow_something_are_refused(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserInputError, match="refusing to use"):
        jobs.check_output_path(name)


def test_an_output_holding_the_inputs_or_a_file_is_refused(tmp_path):
    (tmp_path / "data" / "images").mkdir(parents=True)
    with pytest.raises(UserInputError, match="holds this stage's input"):
        jobs.check_output_path(tmp_path / "data", inputs=[tmp_path / "data" / "images"])
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(UserInputError, match="is a file"):
        jobs.check_output_path(tmp_path / "a-file")
    with pytest.raises(UserInputError, match="is a file, so the folder cannot be made"):
        jobs.check_output_path(tmp_path / "a-file" / "below")


def test_a_foreign_folder_is_never_written_into(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(UserInputError, match="not an output of `generate`"):
        Job(tmp_path / "mine", "generate", {"a": 1}, owned=["images"], overwrite=True).open()
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]


def test_another_fingerprint_is_refused_with_what_changed_and_overwrite_removes_only_owned(tmp_path):
    out = tmp_path / "out"
    Job(out, "generate", {"settings": {"seed": 0}}, owned=["images/*.png"]).open()
    (out / "images").mkdir()
    (out / "images" / "a.png").write_bytes(b"x")
    (out / "notes.txt").write_text("a user's file inside the folder")
    with pytest.raises(UserInputError, match=r"changed: settings.seed: 0 -> 1.*--overwrite"):
        Job(out, "generate", {"settings": {"seed": 1}}, owned=["images/*.png"]).open()
    with pytest.raises(UserInputError, match="is the output of `generate`, not `filter`"):
        Job(out, "filter", {"settings": {"seed": 0}}, owned=["images/*.png"]).open()
    Job(out, "generate", {"settings": {"seed": 1}}, owned=["images/*.png"], overwrite=True).open()
    assert not (out / "images").exists() and (out / "notes.txt").read_text().startswith("a user's")
    assert json.loads((out / "job.json").read_text())["components"] == {"settings": {"seed": 1}}


def test_the_done_marker_carries_the_fingerprint(tmp_path):
    job = Job(tmp_path / "out", "prompts", {"n": 8}, owned=[], result_settings={"t": 1}).open()
    assert not job.complete
    job.mark_done({"identities": 8})
    assert job.complete
    assert not Job(tmp_path / "out", "prompts", {"n": 8}, owned=[], result_settings={"t": 2}).complete
    assert jobs.is_complete(tmp_path / "out", "prompts", jobs.done_fingerprint({"n": 8}, {"t": 1}))


def test_shards_check_themselves(tmp_path):
    records = [{"image_id": f"x-{i}", "value": i} for i in range(3)]
    path = write_shard(tmp_path, 0, records)
    assert read_shard(path, ["x-0", "x-1", "x-2"]) == records
    with pytest.raises(TornShard, match="not the plan's ids"):
        read_shard(path, ["x-0", "x-1", "x-9"])
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:2]) + lines[2][:7])  # cut in the middle of a record, footer gone
    with pytest.raises(TornShard, match="footer"):
        read_shard(path)
    path.write_text(lines[0] + lines[1] + lines[3])  # a record lost, footer kept
    with pytest.raises(TornShard, match="checksum"):
        read_shard(path)


def test_a_side_file_that_changed_fails_its_shard(tmp_path):
    side = tmp_path / "batch-0000000.npy"
    side.write_bytes(b"embeddings")
    path = write_shard(tmp_path, 0, [{"image_id": "a"}], side_files=[side])
    assert read_shard(path)
    side.write_bytes(b"other")
    with pytest.raises(TornShard, match="side file"):
        read_shard(path)


def test_damaged_shards_are_named_removed_and_redone(tmp_path, capsys):
    job = Job(tmp_path / "out", "generate", {"a": 1}, owned=[]).open()
    ids = lambda b: [f"id-{b}-{i}" for i in range(2)]  # noqa: E731
    for batch in range(3):
        job.write_shard(batch, [{"image_id": i} for i in ids(batch)])
    torn = jobs.shard_path(job.shards_dir, 1)
    torn.write_text(torn.read_text()[:-20])
    assert list(job.batches(3, ids)) == [1]
    assert "batch-0000001.jsonl is damaged" in capsys.readouterr().err


def test_merge_sees_every_planned_id_once(tmp_path):
    job = Job(tmp_path / "out", "generate", {"a": 1}, owned=[]).open()
    job.write_shard(0, [{"image_id": "a"}, {"image_id": "b"}])
    job.write_shard(1, [{"image_id": "b"}])
    with pytest.raises(UserInputError, match="'b' appears twice"):
        job.merge(2, tmp_path / "out" / "records.parquet")
    job.write_shard(1, [{"image_id": "c"}])
    with pytest.raises(UserInputError, match="batch 2 is unfinished"):
        job.merge(3, tmp_path / "out" / "records.parquet", lambda b: None)


def test_claims_of_live_workers_hold_and_dead_ones_are_taken_over(tmp_path, monkeypatch):
    job = Job(tmp_path / "out", "generate", {"a": 1}, owned=[]).open()
    claims = job.out_dir / ".claims"
    claims.mkdir()
    host = socket.gethostname()
    (claims / "batch-0000000").write_text(json.dumps({"host": host, "pid": os.getppid(), "lease_until": 0}))
    (claims / "batch-0000001").write_text(json.dumps({"host": host, "pid": dead_pid(), "lease_until": 0}))
    far = time.time() + 3600
    (claims / "batch-0000002").write_text(json.dumps({"host": "elsewhere", "pid": 1, "lease_until": far}))
    (claims / "batch-0000003").write_text(json.dumps({"host": "elsewhere", "pid": 1, "lease_until": 1}))
    monkeypatch.setattr(jobs, "POLL_S", 0.01)
    taken, batches = [], job.batches(5)
    for batch in batches:
        taken.append(batch)
        job.write_shard(batch, [])
        if len(taken) == 3:  # the live holders "finish" their batches while we wait
            job.write_shard(0, [])
            job.write_shard(2, [])
    assert taken == [1, 3, 4]


def test_partial_writes_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    out = tmp_path / "out"
    Job(out, "generate", {"a": 1}, owned=["images/*.png"]).open()
    (out / "images").mkdir(parents=True)
    dead = out / "images" / f".a.png~{socket.gethostname()}~{dead_pid()}~x1.tmp"
    live = out / "images" / f".b.png~{socket.gethostname()}~{os.getppid()}~x2.tmp"
    not_ours = out / "images" / ".c.png.abc.tmp"
    for path in (dead, live, not_ours):
        path.write_bytes(b"half")
    Job(out, "generate", {"a": 1}, owned=["images/*.png"]).open()
    assert live.exists() and not dead.exists() and not_ours.exists()


def test_replace_folder_swaps_whole_outputs_and_keeps_the_old_one_on_failure(tmp_path):
    out = tmp_path / "dataset"

    def build(content):
        def into(staging: Path):
            (staging / "data.txt").write_text(content)
            if content == "fail":
                raise RuntimeError("killed while building")

        return into

    own = {"owned": ["data.txt"], "overwrite": True}
    replace_folder(out, "export", {"v": 1}, build("one"), **own)
    replace_folder(out, "export", {"v": 2}, build("two"), **own)
    assert (out / "data.txt").read_text() == "two"
    with pytest.raises(RuntimeError):
        replace_folder(out, "export", {"v": 3}, build("fail"), **own)
    assert (out / "data.txt").read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["dataset"]  # no staging left behind
    stale = tmp_path / f".dataset~{socket.gethostname()}~{dead_pid()}~staging"
    stale.mkdir()
    (stale / "job.json").write_text(json.dumps({"stage": "export"}))
    replace_folder(out, "export", {"v": 4}, build("four"), **own)
    assert not stale.exists()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("x")
    with pytest.raises(UserInputError, match="not an output of `export`"):
        replace_folder(foreign, "export", {"v": 1}, build("x"), **own)
    assert (foreign / "notes.txt").exists()


def test_replace_folder_refuses_other_settings_without_overwrite_and_never_swallows_a_users_file(tmp_path):
    out = tmp_path / "dataset"

    def build(staging: Path):
        (staging / "data").mkdir()
        (staging / "data" / "train.parquet").write_text("rows")

    replace_folder(out, "export", {"settings": {"eval_fraction": 0.1}}, build, owned=["data/*.parquet"])
    with pytest.raises(UserInputError, match=r"changed: settings.eval_fraction: 0.1 -> 0.5.*--overwrite"):
        replace_folder(out, "export", {"settings": {"eval_fraction": 0.5}}, build, owned=["data/*.parquet"])
    (out / "NOTES.md").write_text("mine")
    (out / "extra").mkdir()
    (out / "extra" / "a.txt").write_text("mine")
    with pytest.raises(UserInputError, match=r"NOTES.md \(and 1 more\) is not a file `export` wrote"):
        replace_folder(
            out, "export", {"settings": {"eval_fraction": 0.5}}, build, owned=["data/*.parquet"], overwrite=True
        )
    assert (out / "NOTES.md").read_text() == "mine" and (out / "extra" / "a.txt").read_text() == "mine"
    assert json.loads((out / "job.json").read_text())["components"] == {"settings": {"eval_fraction": 0.1}}


def test_a_held_folder_refuses_a_second_holder(tmp_path):
    held = Job(tmp_path / "out", "finetune", {"a": 1}, owned=[]).open(hold=True)  # noqa: F841 (kept alive)
    script = (
        "import sys; from vehicle_diff.jobs import Job; from vehicle_diff.errors import UserInputError\n"
        f"try:\n    Job({str(tmp_path / 'out')!r}, 'finetune', {{'a': 1}}, owned=[]).open(hold=True)\n"
        "except UserInputError as e:\n    print(e); sys.exit(2)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "in use by another `finetune` run" in result.stdout


def test_overwrite_refuses_a_users_file_inside_a_folder_the_stage_writes(tmp_path):
    out = tmp_path / "out"
    Job(out, "generate", {"seed": 0}, owned=["images/*/*.png"]).open()
    (out / "images" / "red-car").mkdir(parents=True)
    (out / "images" / "red-car" / "a.png").write_bytes(b"x")
    (out / "images" / "MY_README.txt").write_text("mine")
    with pytest.raises(
        UserInputError, match=r"images/MY_README.txt is not a file `generate` wrote.*nothing was removed"
    ):
        Job(out, "generate", {"seed": 1}, owned=["images/*/*.png"], overwrite=True).open()
    assert (out / "images" / "red-car" / "a.png").exists() and (out / "images" / "MY_README.txt").exists()
    (out / "images" / "MY_README.txt").unlink()
    Job(out, "generate", {"seed": 1}, owned=["images/*/*.png"], overwrite=True).open()
    assert not (out / "images").exists()


def test_owned_patterns_match_part_by_part():
    assert jobs.matches("images/red/a.png", "images/*/*.png")
    assert not jobs.matches("images/a.png", "images/*/*.png")
    assert not jobs.matches("images/red/deep/a.png", "images/*/*.png")
    assert jobs.matches("checkpoint-8/optimizer.bin", "checkpoint-*/**")
    assert jobs.matches("checkpoint-8/sub/model.safetensors", "checkpoint-*/**")
    assert not jobs.matches("checkpoints.txt", "checkpoint-*/**")


def test_only_the_job_layers_own_temp_files_are_cleaned_up(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".draft.tmp").write_text("a user's draft")
    with pytest.raises(UserInputError, match=r"not an output of `generate` \(.draft.tmp\)"):
        Job(out, "generate", {"a": 1}, owned=["images/*.png"]).open()
    (out / ".draft.tmp").unlink()
    (out / "notes.tmp").write_text("a user's notes")
    with pytest.raises(UserInputError, match=r"not an output of `generate` \(notes.tmp\)"):
        Job(out, "generate", {"a": 1}, owned=["images/*.png"]).open()
    (out / "notes.tmp").unlink()
    job = Job(out, "generate", {"a": 1}, owned=["images/*.png"]).open()
    ours = out / "images" / f".a.png~{socket.gethostname()}~{dead_pid()}~abc123_x.tmp"
    ours.parent.mkdir()
    ours.write_bytes(b"half")
    theirs = [out / ".draft.tmp", out / "images" / ".draft.tmp", out / "user" / f".a~{socket.gethostname()}~1~x.tmp"]
    for path in theirs:
        path.parent.mkdir(exist_ok=True)
        path.write_text("keep me")
    job.open()
    assert not ours.exists() and all(path.read_text() == "keep me" for path in theirs)


def test_a_plan_that_wrote_nothing_yet_is_replaced_without_overwrite(tmp_path):
    """A model that failed to load leaves only `job.json` (and the config): the corrected command goes on."""
    out = tmp_path / "out"
    Job(out, "filter", {"detector": "bad.pt"}, owned=["crops/*/*.png", "config.yaml"]).open()
    (out / "config.yaml").write_text("detector: bad.pt\n")
    Job(out, "filter", {"detector": "good.pt"}, owned=["crops/*/*.png", "config.yaml"]).open()
    assert json.loads((out / "job.json").read_text())["components"] == {"detector": "good.pt"}
    assert not (out / "config.yaml").exists()


def test_overwrite_is_refused_while_a_live_worker_holds_a_claim(tmp_path):
    out = tmp_path / "out"
    job = Job(out, "generate", {"seed": 0}, owned=["images/*.png"]).open()
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".claims").mkdir()
        claim = {"host": socket.gethostname(), "pid": worker.pid, "lease_until": time.time() + 60}
        (out / ".claims" / "batch-0000000").write_text(json.dumps(claim))
        with pytest.raises(UserInputError, match=f"being written by another `generate` run \\(PID {worker.pid}"):
            Job(out, "generate", {"seed": 1}, owned=["images/*.png"], overwrite=True).open()
    finally:
        worker.kill()
        worker.wait()
    Job(out, "generate", {"seed": 1}, owned=["images/*.png"], overwrite=True).open()
    with pytest.raises(UserInputError, match="replaced this run's plan"):
        next(job.batches(2))  # the first worker's next batch: its plan is gone, it stops


def test_a_worker_stops_before_merging_when_its_plan_was_replaced(tmp_path):
    out = tmp_path / "out"
    job = Job(out, "generate", {"seed": 0}, owned=[]).open()
    for batch in job.batches(1):
        job.write_shard(batch, [{"image_id": "a"}])
    (out / "records" / "batch-0000000.jsonl").unlink()
    Job(out, "generate", {"seed": 1}, owned=[], overwrite=True).open()
    Job(out, "generate", {"seed": 1}, owned=[]).write_shard(0, [{"image_id": "b"}])
    with pytest.raises(UserInputError, match="replaced this run's plan"):
        job.merge(1, out / "records.parquet")
    with pytest.raises(UserInputError, match="replaced this run's plan"):
        job.mark_done()


def test_a_held_claim_outlives_the_yield_until_its_shard_is_written(tmp_path):
    job = Job(tmp_path / "out", "generate", {"a": 1}, owned=[]).open()
    claims = job.out_dir / ".claims"
    batches = job.batches(2)
    assert next(batches) == 0
    job.hold_claim(0)  # its shard is written later, by a writer thread
    assert next(batches) == 1
    assert (claims / "batch-0000000").exists(), "another worker could take a batch whose files are being written"
    job.write_shard(0, [])
    assert not (claims / "batch-0000000").exists()
    job.write_shard(1, [])
    assert list(batches) == [] and not list(claims.iterdir())
