"""The toy world: deterministic renders whose looks follow the attributes, and a target dataset that the VeRi-776
reader takes as it is."""

import subprocess
import sys
from collections import Counter

import pytest
from vehicle_diff.training.reid_data import read_veri776

from vehicle_diff.toy_world import (
    BODY_SHAPES,
    PAINT,
    SOURCE_DOMAINS,
    TARGET_CAMERAS,
    VIEWS,
    paint_color,
    render,
    vehicle_look,
    write_target_dataset,
)


def files_of(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_same_seed_draws_the_same_bytes_and_another_seed_does_not(tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        write_target_dataset(tmp_path / name, identities=6, seed=seed)
    assert files_of(tmp_path / "a") == files_of(tmp_path / "b")
    assert files_of(tmp_path / "a") != files_of(tmp_path / "c")


def test_the_target_dataset_is_veri776_as_released(tmp_path):
    counts = write_target_dataset(tmp_path / "w", identities=12, seed=0)
    split = read_veri776(str(tmp_path / "w"))
    train_ids = {int(p.name[:4]) for p in (tmp_path / "w" / "image_train").iterdir()}  # the reader relabels them
    test_ids = {s.pid for s in split.gallery}
    assert train_ids == set(range(1, 7)) and test_ids == set(range(7, 13))  # disjoint vehicles, as VeRi-776
    assert len({s.pid for s in split.train}) == 6
    assert {s.pid for s in split.query} == test_ids
    query_names = {p.name for p in (tmp_path / "w" / "image_query").iterdir()}
    assert query_names <= {p.name for p in (tmp_path / "w" / "image_test").iterdir()}  # queries are test images too
    assert max(Counter((s.pid, s.camid) for s in split.query).values()) == 1  # one query per vehicle and camera
    cameras_per_vehicle = Counter(pid for pid, _ in {(s.pid, s.camid) for s in split.gallery})
    assert min(cameras_per_vehicle.values()) >= 2  # every query has a true match under another camera
    assert counts["image_query"] == len(split.query) and counts["image_test"] == len(split.gallery)


def test_the_paint_oracle_reads_the_prompted_color_from_plain_daylight_renders():
    """Color decides paint; the oracle that will judge the color check reads it back without any model."""
    wrong, total = [], 0
    for color in PAINT:
        for style in BODY_SHAPES:
            for view in VIEWS:
                look = vehicle_look(color=color, brand="b", model=style, year=2001, body_style=style, individual=1)
                shot = render(look, SOURCE_DOMAINS[total % len(SOURCE_DOMAINS)], seed=total, view=view)
                total += 1
                if paint_color(shot.image, shot.box) != color:
                    wrong.append((color, style, view))
    assert len(wrong) <= 0.01 * total, wrong


def test_details_follow_brand_model_and_year_and_each_vehicle_has_its_own_mark():
    same_model = [
        vehicle_look(color="red", brand="Audi", model="A4", year=2010, body_style="sedan", individual=i) for i in (1, 2)
    ]
    assert same_model[0].spokes == same_model[1].spokes and same_model[0].badge_shape == same_model[1].badge_shape
    assert same_model[0].sticker != same_model[1].sticker
    assert same_model[0] == vehicle_look(
        color="red", brand="Audi", model="A4", year=2010, body_style="sedan", individual=1
    )
    models = {vehicle_look(color="red", brand="Audi", model=f"M{i}", year=2010, body_style="sedan") for i in range(12)}
    assert len({(m.spokes, m.stripes, m.rim, m.roof_rack) for m in models}) > 3  # models differ in their details
    with pytest.raises(ValueError, match="no paint"):
        vehicle_look(color="purple", brand="a", model="b", year=2000, body_style="sedan")


def test_target_cameras_look_unlike_the_source_world():
    look = vehicle_look(color="white", brand="b", model="m", year=2000, body_style="suv", individual=1)
    source = render(look, SOURCE_DOMAINS[0], seed=3, view="left")
    for camera in TARGET_CAMERAS:
        seen = render(look, camera, seed=3, view=camera.views[0])
        assert seen.image.size == source.image.size and seen.image.tobytes() != source.image.tobytes()
        assert (
            0 <= seen.box[0] < seen.box[2] <= seen.image.width and 0 <= seen.box[1] < seen.box[3] <= seen.image.height
        )


def test_the_command_refuses_bad_input_in_one_line_and_never_writes_into_a_users_folder(tmp_path):
    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "vehicle_diff.cli", "toy-world", *map(str, args)], capture_output=True, text=True
        )

    too_few = cli("--identities", "3", "--output_dir", tmp_path / "w")
    assert (
        too_few.returncode == 2 and len(too_few.stderr.strip().splitlines()) == 1 and "--identities" in too_few.stderr
    )
    no_such = cli("--cameras", "moon", "--output_dir", tmp_path / "w")
    assert no_such.returncode == 2 and len(no_such.stderr.strip().splitlines()) == 1 and "--cameras" in no_such.stderr
    assert not (tmp_path / "w").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    refused = cli("--identities", "4", "--output_dir", mine)
    assert refused.returncode == 2 and (mine / "notes.txt").read_text() == "mine"
    built = cli("--identities", "4", "--output_dir", tmp_path / "w")
    assert built.returncode == 0, built.stderr[-2000:]
    assert f"veri776:{tmp_path / 'w'}" in built.stdout
    assert read_veri776(str(tmp_path / "w")).query
    other = cli("--identities", "5", "--output_dir", tmp_path / "w")
    assert other.returncode == 2 and "changed" in other.stderr and "--overwrite" in other.stderr, other.stderr
    assert cli("--identities", "5", "--output_dir", tmp_path / "w", "--overwrite").returncode == 0
    assert len({p.name[:4] for p in (tmp_path / "w" / "image_test").iterdir()}) == 3
    daylight = cli("--identities", "6", "--cameras", "source", "--output_dir", tmp_path / "day")
    assert daylight.returncode == 0, daylight.stderr[-2000:]
    truth = (tmp_path / "day" / "ground_truth.jsonl").read_text()
    assert read_veri776(str(tmp_path / "day")).query and "day-" in truth and "c001-" not in truth
    target_world = (tmp_path / "w" / "job.json").read_text()
    assert "cameras" not in target_world  # a target world keeps the fingerprint it had before --cameras existed
    assert cli("--identities", "5", "--cameras", "source", "--output_dir", tmp_path / "w").returncode == 2
