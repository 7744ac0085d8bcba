import json
import shutil
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from vehicle_diff.generation.filter import main

from tests.conftest import decompression_bomb_png, launch_two_processes, sigkill_after_shards
from vehicle_diff.errors import UserInputError


def tiny_args(generated, out_dir, *extra):
    return ["--preset", "tiny", "--generated", str(generated), "--output_dir", str(out_dir), *extra]


def rows(out_dir):
    return pq.read_table(out_dir / "records.parquet").to_pylist()


@pytest.fixture(scope="module")
def damaged_generation(tiny_generated, tmp_path_factory):
    """The tiny generation with one truncated image, one missing and one decompression bomb in the middle."""
    copy = tmp_path_factory.mktemp("damaged") / "gen"
    shutil.copytree(tiny_generated, copy)
    records = pq.read_table(copy / "records.parquet").to_pylist()
    truncated = copy / records[5]["file_name"]
    truncated.write_bytes(truncated.read_bytes()[:100])
    (copy / records[9]["file_name"]).unlink()
    (copy / records[13]["file_name"]).write_bytes(decompression_bomb_png())
    return copy


@pytest.fixture(scope="module")
def filtered(damaged_generation, tmp_path_factory):
    return main(tiny_args(damaged_generation, tmp_path_factory.mktemp("filtered") / "out"))


def test_every_image_gets_a_record_with_its_scores_and_decision(filtered, damaged_generation):
    records = rows(filtered)
    generated = pq.read_table(damaged_generation / "records.parquet").to_pylist()
    assert [r["image_id"] for r in records] == [g["image_id"] for g in generated]
    assert records[5]["reject_reason"] == "unreadable" and "Error" in records[5]["unreadable_error"]
    assert records[9]["reject_reason"] == "unreadable" and "No such file" in records[9]["unreadable_error"]
    assert records[13]["reject_reason"] == "unreadable"
    assert records[13]["unreadable_error"].startswith("ImageTooLarge: Image size (10000000000 pixels) exceeds")
    readable = [r for i, r in enumerate(records) if i not in (5, 9, 13)]
    assert all(r["kept"] == (r["reject_reason"] is None) for r in records)
    for record in readable:
        assert record["det_class"] in (2, 7) and 0 <= record["det_confidence"] <= 1
        assert set(record["color_similarities"]) == {
            "yellow",
            "orange",
            "green",
            "gray",
            "red",
            "blue",
            "white",
            "golden",
            "brown",
            "black",
        }
        assert record["predicted_color"] in record["color_similarities"]
        assert (filtered / record["crop_file"]).is_file()
        x1, y1, x2, y2 = record["det_box"]
        assert record["crop_width"] == pytest.approx(x2 - x1, abs=1) and record["crop_height"] == pytest.approx(
            y2 - y1, abs=1
        )


def test_summary_and_contact_sheets(filtered):
    summary = json.loads((filtered / "summary.json").read_text())
    assert summary["images"] == 24 and summary["per_reason"]["unreadable"] == 3
    assert sum(summary["per_reason"].values()) == 24
    assert sum(sum(row.values()) for row in summary["color_confusion"].values()) == 21
    assert (filtered / "contact_sheets" / "kept.png").is_file() and (
        filtered / "contact_sheets" / "unreadable.png"
    ).is_file()
    assert "| unreadable | 3 |" in (filtered / "summary.md").read_text()


def test_rescore_only_applies_new_thresholds_without_models(filtered, damaged_generation, monkeypatch):
    import vehicle_diff.generation.filter as stage

    def no_models(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(stage, "VehicleDetector", no_models)
    monkeypatch.setattr(stage, "ClipScorer", no_models)
    before = rows(filtered)
    main(tiny_args(damaged_generation, filtered, "--rescore_only", "--color_check", "true"))
    after = rows(filtered)
    wrong = [r for r in after if r["reject_reason"] == "wrong_color"]
    assert wrong and all(r["predicted_color"] != r["color"] for r in wrong)
    assert [r["det_confidence"] for r in after] == [r["det_confidence"] for r in before]
    main(tiny_args(damaged_generation, filtered, "--rescore_only", "--detection_confidence", "0.99"))
    assert {r["reject_reason"] for r in rows(filtered)} == {"low_confidence", "unreadable"}
    with pytest.raises(UserInputError, match="not lower it below the scoring threshold 0.65"):
        main(tiny_args(damaged_generation, filtered, "--rescore_only", "--detection_confidence", "0.5"))
    main(tiny_args(damaged_generation, filtered, "--rescore_only", "--near_duplicate_threshold", "0.5"))
    assert "near_duplicate" in {r["reject_reason"] for r in rows(filtered)}
    main(tiny_args(damaged_generation, filtered))  # back to the preset's thresholds; scores are reused
    assert rows(filtered) == before


def test_sigkill_then_rerun_equals_an_uninterrupted_run(tmp_path):
    from vehicle_diff.testing import fake_generation

    generation = fake_generation(tmp_path / "generated", 300)  # enough work for the kill to land mid-run

    def command(out_dir):
        return [
            sys.executable,
            "-m",
            "vehicle_diff.generation.filter",
            *tiny_args(generation, out_dir, "--batch_size", "1"),
        ]

    assert 2 <= sigkill_after_shards(command(tmp_path / "out"), "filter", tmp_path / "out" / "scores") < 300, (
        "the kill should land mid-run"
    )
    subprocess.run(command(tmp_path / "out"), check=True, capture_output=True)
    subprocess.run(command(tmp_path / "straight"), check=True, capture_output=True)
    assert rows(tmp_path / "out") == rows(tmp_path / "straight")
    assert not list((tmp_path / "out").rglob("*.tmp"))


def test_two_processes_score_disjoint_batches(damaged_generation, filtered, tmp_path):
    result = launch_two_processes("vehicle_diff.generation.filter", tiny_args(damaged_generation, tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "filter [process 1]" in result.stderr
    assert [r["image_id"] for r in rows(tmp_path / "out")] == [r["image_id"] for r in rows(filtered)]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--detection_confidence", "1.5"], r"--detection_confidence must be in \[0, 1\]"),
        (["--near_duplicate_threshold", "-0.1"], r"--near_duplicate_threshold must be in \[0, 1\]"),
        (["--batch_size", "0"], "--batch_size must be positive"),
        (["--dataloader_num_workers", "-1"], "--dataloader_num_workers must be >= 0"),
        (["--colors", "red", "blue"], "lacks; add them"),
    ],
)
def test_bad_input(damaged_generation, tmp_path, flags, message):
    with pytest.raises(UserInputError, match=message):
        main(tiny_args(damaged_generation, tmp_path / "out", *flags))


def test_missing_generation_and_rescore_before_scoring(tmp_path, damaged_generation):
    with pytest.raises(UserInputError, match="no records.parquet"):
        main(tiny_args(tmp_path, tmp_path / "out"))
    with pytest.raises(UserInputError, match="has no filter scores"):
        main(tiny_args(damaged_generation, tmp_path / "out", "--rescore_only"))


def test_the_fingerprint_reads_the_images_on_disk_not_the_hashes_in_the_records(tiny_generated, tmp_path):
    from vehicle_diff.generation.filter import input_digest, read_generation_records

    copy = tmp_path / "gen"
    shutil.copytree(tiny_generated, copy)
    table = read_generation_records(copy)
    assert "image_sha256" in table.column_names
    before = input_digest(table, copy)
    files = table.column("file_name").to_pylist()
    (copy / files[0]).write_bytes((copy / files[1]).read_bytes())  # replaced after generation, records unchanged
    assert input_digest(read_generation_records(copy), copy) != before


def test_decoding_in_loader_workers_gives_the_bytes_of_decoding_in_turn(filtered, damaged_generation, tmp_path):
    in_turn = main(tiny_args(damaged_generation, tmp_path / "out", "--dataloader_num_workers", "0"))
    prefetched = main(tiny_args(damaged_generation, tmp_path / "two", "--dataloader_num_workers", "2"))
    for out in (in_turn, prefetched):
        assert (out / "records.parquet").read_bytes() == (filtered / "records.parquet").read_bytes()
        crops = {p.relative_to(out): p.read_bytes() for p in sorted((out / "crops").rglob("*.png"))}
        assert crops == {p.relative_to(filtered): p.read_bytes() for p in sorted((filtered / "crops").rglob("*.png"))}
        assert crops


def test_prefetched_batches_follow_the_claims_in_any_order(tmp_path):
    from vehicle_diff.loading import PrefetchedBatches

    def files_of(index):
        return [tmp_path / f"{index}-{j}" for j in range(2)]

    decoded = PrefetchedBatches([0, 1, 2, 3], files_of, str, num_workers=1)
    assert decoded(2) == [str(tmp_path / "2-0"), str(tmp_path / "2-1")]  # 0 and 1 were taken by another worker
    assert decoded(0) == [str(tmp_path / "0-0"), str(tmp_path / "0-1")]  # a dead worker's claim, taken over
    assert decoded(3) == [str(tmp_path / "3-0"), str(tmp_path / "3-1")]
    assert decoded(7) == [str(tmp_path / "7-0"), str(tmp_path / "7-1")]  # not in the plan of this process
    decoded.close()
