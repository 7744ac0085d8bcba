import json
import subprocess
import sys

import datasets
import numpy as np
import pytest
from PIL import Image
from vehicle_diff.generation.caption import caption_text, main, select_subset

from tests.conftest import decompression_bomb_png, launch_two_processes, sigkill_after_shards
from vehicle_diff.errors import UserInputError


def test_subset_is_seeded_sorted_and_sized():
    assert select_subset(37800, fraction=0.01, num_images=None, seed=0) == select_subset(
        37800, fraction=0.01, num_images=None, seed=0
    )
    assert len(select_subset(37800, fraction=0.01, num_images=None, seed=0)) == 378  # VeRi-776's 1%
    assert select_subset(10, fraction=0.5, num_images=None, seed=1) != select_subset(
        10, fraction=0.5, num_images=None, seed=2
    )
    assert select_subset(5, fraction=0.01, num_images=5, seed=0) == [0, 1, 2, 3, 4]
    with pytest.raises(UserInputError, match="more than the 5 input images"):
        select_subset(5, fraction=0.01, num_images=6, seed=0)


def test_caption_text_prefix_and_whitespace():
    assert caption_text("  a red  car ", "") == "a red car"
    assert caption_text("a red car", "a photo of a vehicle,") == "a photo of a vehicle, a red car"


@pytest.fixture
def target_folder(tmp_path):
    """Ten small images in nested folders, a corrupt eleventh and a decompression bomb among them, and a text
    file."""
    rng = np.random.default_rng(0)
    for i in range(10):
        folder = tmp_path / "cams" / f"c{i % 3:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(folder / f"{i:04d}.jpg")
    (tmp_path / "cams" / "c001" / "0005.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "cams" / "c002" / "0011.png").write_bytes(decompression_bomb_png())
    (tmp_path / "cams" / "notes.txt").write_text("ignored")
    return tmp_path / "cams"


def args(source, out_dir, *extra):
    return [
        "--preset",
        "tiny",
        "--input_images",
        str(source),
        "--fraction",
        "1.0",
        "--output_dir",
        str(out_dir),
        *extra,
    ]


def test_captions_an_imagefolder_and_lists_unreadable_files(tiny_zoo, target_folder, tmp_path):
    out = main(args(target_folder, tmp_path / "cap", "--prompt_prefix", "a photo of a vehicle,"))
    data = datasets.load_dataset("imagefolder", data_dir=str(out), split="train")
    assert data.num_rows == 10
    assert all(
        text.startswith("a photo of a vehicle, ") and len(text) > len("a photo of a vehicle, ") for text in data["text"]
    )
    assert set(data["caption_model"]) == {"tiny:blip2"}
    skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert [s["source"] for s in skipped] == ["c001/0005.jpg", "c002/0011.png"]
    assert skipped[1]["error"].startswith("ImageTooLarge: Image size (10000000000 pixels) exceeds")
    selection = json.loads((out / "selection.json").read_text())
    assert len(selection["selected"]) == 12 and selection["seed"] == 0
    assert main(args(target_folder, tmp_path / "cap", "--prompt_prefix", "a photo of a vehicle,")) == out  # re-run


def test_sigkill_then_rerun_equals_an_uninterrupted_run(tiny_zoo, target_folder, tmp_path):
    from tests.conftest import write_images

    write_images(
        target_folder / "more", [f"{i:04d}.jpg" for i in range(100)], seed=5
    )  # enough work for the kill to land mid-run

    def command(out_dir):
        return [
            sys.executable,
            "-m",
            "vehicle_diff.generation.caption",
            *args(target_folder, out_dir, "--batch_size", "1"),
        ]

    assert 2 <= sigkill_after_shards(command(tmp_path / "killed"), "caption", tmp_path / "killed" / ".shards") < 112, (
        "the kill should land mid-run"
    )
    subprocess.run(command(tmp_path / "killed"), check=True, capture_output=True)
    subprocess.run(command(tmp_path / "straight"), check=True, capture_output=True)
    for name in ("train/metadata.jsonl", "skipped.jsonl"):
        assert (tmp_path / "killed" / name).read_text() == (tmp_path / "straight" / name).read_text()


def test_hf_dataset_input(tiny_zoo, tmp_path):
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(4)]
    datasets.Dataset.from_dict({"photo": images}).cast_column("photo", datasets.Image()).save_to_disk(
        str(tmp_path / "ds")
    )
    parquet = tmp_path / "pq"
    parquet.mkdir()
    datasets.load_from_disk(str(tmp_path / "ds")).to_parquet(str(parquet / "train.parquet"))
    out = main(
        [
            "--preset",
            "tiny",
            "--input_dataset",
            str(parquet),
            "--image_column",
            "photo",
            "--num_images",
            "3",
            "--output_dir",
            str(tmp_path / "cap"),
        ]
    )
    assert datasets.load_dataset("imagefolder", data_dir=str(out), split="train").num_rows == 3
    with pytest.raises(UserInputError, match="no column 'image'"):
        main(["--preset", "tiny", "--input_dataset", str(parquet), "--output_dir", str(tmp_path / "c2")])


def test_two_processes_split_the_batches(tiny_zoo, target_folder, tmp_path):
    result = launch_two_processes(
        "vehicle_diff.generation.caption", args(target_folder, tmp_path / "cap", "--batch_size", "2")
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "caption [process 1]" in result.stderr
    lines = (tmp_path / "cap" / "train" / "metadata.jsonl").read_text().splitlines()
    assert len(lines) == 10 and len({json.loads(line)["file_name"] for line in lines}) == 10


def test_bad_input(tmp_path):
    with pytest.raises(UserInputError, match="exactly one of"):
        main(["--preset", "tiny", "--output_dir", str(tmp_path / "c")])
    with pytest.raises(UserInputError, match=r"--fraction must be in \(0, 1\]"):
        main(
            [
                "--preset",
                "tiny",
                "--input_images",
                str(tmp_path),
                "--fraction",
                "0",
                "--output_dir",
                str(tmp_path / "c"),
            ]
        )
    with pytest.raises(UserInputError, match="no images found"):
        main(["--preset", "tiny", "--input_images", str(tmp_path), "--output_dir", str(tmp_path / "c")])


def test_an_output_folder_inside_its_input_folder_is_not_part_of_the_input(tiny_zoo, target_folder):
    out = target_folder / "captions"
    main(args(target_folder, out))
    count = len(json.loads((out / "selection.json").read_text())["selected"])
    main(args(target_folder, out))  # the same command again: its own outputs are not a changed input
    main(args(target_folder, out, "--overwrite", "--seed", "1"))
    selected = json.loads((out / "selection.json").read_text())["selected"]
    assert len(selected) == count and not any(name.startswith("captions/") for name in selected)


def test_reading_in_loader_workers_gives_the_bytes_of_reading_in_turn(tiny_zoo, target_folder, tmp_path):
    def outputs(out):
        return {
            p.relative_to(out): p.read_bytes()
            for p in sorted(out.rglob("*"))
            if p.is_file() and p.parent.name in ("train", out.name) and p.suffix in (".jpg", ".jsonl")
        }

    in_turn = main(args(target_folder, tmp_path / "in-turn", "--batch_size", "3", "--dataloader_num_workers", "0"))
    workers = main(args(target_folder, tmp_path / "workers", "--batch_size", "3", "--dataloader_num_workers", "2"))
    assert outputs(in_turn) == outputs(workers)
    assert len(outputs(in_turn)) == 12  # 10 images, metadata.jsonl, skipped.jsonl (the corrupt file's reason)
