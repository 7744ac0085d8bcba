import re
import shutil

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import vehicle_diff_dataset as vdd
from vehicle_diff.errors import UserInputError


def test_export_loads_with_load_dataset_and_keeps_class_labels(tiny_dataset, tiny_filtered):
    loaded = datasets.load_dataset(str(tiny_dataset))
    kept = [r for r in pq.read_table(tiny_filtered / "records.parquet").to_pylist() if r["kept"]]
    assert sum(len(split) for split in loaded.values()) == len(kept)
    assert set(loaded) == {"train", "query", "gallery"}
    assert loaded["train"].features["color"].names == vdd.FEATURES["color"].names
    assert loaded["train"].features == vdd.FEATURES
    row = loaded["train"][0]
    assert row["image"].size == (64, 64) and len(row["det_box"]) == 4 and len(row["color_similarities"]) == 10
    ids = sorted({v for split in loaded.values() for v in split["vehicle_id"]})
    assert ids == list(range(len(ids)))  # contiguous
    assert not set(loaded["train"]["identity"]) & set(loaded["query"]["identity"])  # held-out identities
    assert len(loaded["query"]) == len(set(loaded["query"]["identity"]))  # one query image per identity
    card = (tiny_dataset / "README.md").read_text()
    assert "task_categories" in card and "synthetic" in card and "license: apache-2.0" in card
    assert (tiny_dataset / "preview.png").is_file()


def test_load_dataset_by_name_resolves_the_local_folder(tiny_dataset, tmp_path, monkeypatch):
    shutil.copytree(tiny_dataset, tmp_path / "vehicle-diff")
    monkeypatch.chdir(tmp_path)
    assert vdd.load("vehicle-diff")["train"].num_rows == datasets.load_dataset("vehicle-diff")["train"].num_rows > 0


def test_veri_style_export_is_read_by_the_veri776_reader(tiny_dataset, tmp_path):
    from vehicle_diff.training.reid_data import parse_veri_name, read_source

    loaded = datasets.load_dataset(str(tiny_dataset))
    out = vdd.export_veri(loaded, tmp_path / "veri", id_offset=1000)
    names = (out / "name_train.txt").read_text().split()
    assert len(names) == len(loaded["train"])
    assert all(parse_veri_name(out / "image_train" / n)[0] >= 1000 for n in names)
    assert (out / "attributes_train.csv").read_text().startswith("image_name,vehicle_id,color,body_style")
    split = read_source(f"veri776:{out}")  # the held-out identities become VeRi-776's query and test folders
    assert (len(split.train), len(split.query), len(split.gallery)) == tuple(
        len(loaded[name]) for name in ("train", "query", "gallery")
    )
    assert {s.pid - 1000 for s in split.query} == set(loaded["query"]["vehicle_id"])


def test_a_train_only_veri_copy_still_has_the_three_folders(tiny_dataset, tmp_path):
    from vehicle_diff.training.reid_data import read_source

    loaded = datasets.load_dataset(str(tiny_dataset))
    out = vdd.export_veri(datasets.DatasetDict(train=loaded["train"]), tmp_path / "veri")
    split = read_source(f"veri776:{out}")
    assert (len(split.train), split.query, split.gallery) == (len(loaded["train"]), [], [])


def test_the_paper_preset_exports_every_kept_image_for_training():
    from vehicle_diff.config import parse_config

    assert parse_config(vdd.ExportConfig, "export", ["--preset", "paper"]).eval_fraction == 0
    assert vdd.ExportConfig().eval_fraction == 0


def damaged_copy(tiny_filtered, tmp_path, change):
    copy = tmp_path / "filtered"
    shutil.copytree(tiny_filtered, copy)
    rows = pq.read_table(copy / "records.parquet").to_pylist()
    change(rows, copy)
    pq.write_table(pa.Table.from_pylist(rows), copy / "records.parquet")
    return copy


def test_bad_records_are_clear_errors_and_nothing_is_half_written(tiny_filtered, tmp_path):
    def corrupt(rows, root):
        (root / rows[0]["crop_file"]).write_bytes(b"broken")

    copy = damaged_copy(tiny_filtered, tmp_path, corrupt)
    with pytest.raises(UserInputError, match=r"unreadable \(.*\); re-run the filter, or pass --skip_unreadable"):
        vdd.main(["--preset", "tiny", "--filtered", str(copy), "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
    out = vdd.main(
        ["--preset", "tiny", "--filtered", str(copy), "--skip_unreadable", "--output_dir", str(tmp_path / "out")]
    )
    assert "unreadable" in (out / "skipped.txt").read_text()

    def no_image(rows, root):
        rows[1]["crop_file"] = None

    with pytest.raises(UserInputError, match="has no crop_file"):
        vdd.build(damaged_copy(tiny_filtered, tmp_path / "b", no_image))

    def duplicate(rows, root):
        rows[2]["image_id"] = rows[3]["image_id"]

    with pytest.raises(UserInputError, match="duplicate image_id"):
        vdd.build(damaged_copy(tiny_filtered, tmp_path / "c", duplicate))

    def nothing_kept(rows, root):
        for row in rows:
            row["kept"] = False

    with pytest.raises(UserInputError, match="no image was kept"):
        vdd.build(damaged_copy(tiny_filtered, tmp_path / "d", nothing_kept))


def test_a_crash_during_export_leaves_the_previous_dataset(tiny_dataset, tmp_path, monkeypatch):
    target = tmp_path / "vehicle-diff"
    shutil.copytree(tiny_dataset, target)
    before = sorted(p.name for p in (target / "data").iterdir())
    loaded = datasets.load_dataset(str(tiny_dataset))

    def crash(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(vdd, "write_preview", crash)
    with pytest.raises(OSError, match="No space left"):
        vdd.export(loaded, target)
    assert sorted(p.name for p in (target / "data").iterdir()) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".vehicle-diff.")]


def test_a_stock_dataloader_reads_the_dataset_as_torch(tiny_dataset):
    """Every column has a type a default collate handles: no all-null columns, ids contiguous from 0 in train."""
    import datasets
    import torch

    train = datasets.load_dataset(str(tiny_dataset), split="train")
    table = train.data.table
    assert not [name for name in table.column_names if table.column(name).null_count == len(table)]
    batch = next(iter(torch.utils.data.DataLoader(train.with_format("torch"), batch_size=4)))
    assert batch["image"].shape[0] == 4 and batch["vehicle_id"].tolist() == train["vehicle_id"][:4]
    assert sorted(set(train["vehicle_id"])) == list(range(len(set(train["vehicle_id"]))))


def export_cli(*args, cwd=None):
    import subprocess
    import sys

    command = [sys.executable, "-m", "vehicle_diff.cli", "export", "--preset", "tiny", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd)


def test_export_into_its_earlier_output_follows_the_job_rules(tiny_dataset, tiny_filtered, tmp_path):
    """Other settings are refused with what changed; `--overwrite` never swallows a file the user put there."""
    target = tmp_path / "vehicle-diff"
    shutil.copytree(tiny_dataset, target)
    base = ["--filtered", tiny_filtered, "--output_dir", target]
    changed = export_cli(*base, "--eval_fraction", "0.5")
    assert changed.returncode == 2, changed.stderr
    assert re.search(r"changed: settings.eval_fraction: [0-9.]+ -> 0.5\)", changed.stderr)
    assert len(changed.stderr.splitlines()) == 1
    (target / "NOTES.md").write_text("mine")
    (target / "extra").mkdir()
    (target / "extra" / "a.txt").write_text("mine")
    refused = export_cli(*base, "--eval_fraction", "0.5", "--overwrite")
    assert refused.returncode == 2 and "NOTES.md (and 1 more) is not a file `export` wrote" in refused.stderr
    assert (target / "NOTES.md").read_text() == (target / "extra" / "a.txt").read_text() == "mine"
    veri = export_cli(*base, "--veri_dir", tmp_path / "veri")  # only the VeRi copy is new: still the same dataset
    assert veri.returncode == 2 and "NOTES.md (and 1 more)" in veri.stderr and not (tmp_path / "veri").exists()
    (target / "NOTES.md").unlink()
    shutil.rmtree(target / "extra")
    assert export_cli(*base, "--eval_fraction", "0.5", "--overwrite").returncode == 0
    assert datasets.load_dataset(str(target))["query"].num_rows > 0


def test_a_truncated_filter_records_file_is_one_line(tiny_filtered, tmp_path):
    copy = tmp_path / "filtered"
    shutil.copytree(tiny_filtered, copy)
    data = (copy / "records.parquet").read_bytes()
    (copy / "records.parquet").write_bytes(data[: len(data) // 2])
    result = export_cli("--filtered", copy, "--output_dir", tmp_path / "out")
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "records.parquet: not a readable Parquet file" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
