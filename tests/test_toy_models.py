"""The toy zoo: its text-to-image loss weighs what prompts ask for, what it saves loads with the stages' own calls,
and a killed build resumes at the model it was training."""

import os
import signal
import subprocess
import sys

import pytest
import timm
import torch

from vehicle_diff import models, toy_models
from vehicle_diff.errors import UserInputError
from vehicle_diff.toy_models import (
    ToyZooConfig,
    build_toy_zoo,
    framed_scene,
    photometric_jitter,
    reconstruction_loss,
    vehicle_weights,
    warmup_cosine,
)

MICRO = ToyZooConfig(
    scenes=8,
    vae_steps=2,
    vae_batch_size=4,
    unet_steps=2,
    unet_batch_size=4,
    detector_scenes=8,
    detector_epochs=1,
    clip_scenes=8,
    clip_steps=2,
    clip_batch_size=4,
    reid_scenes=8,
    reid_steps=2,
    reid_batch_size=4,
)


def test_vehicle_weights_mark_each_box_and_nothing_else():
    weights = vehicle_weights([(1, 2, 3, 4), (0, 0, 1, 1)], (5, 6), inside=4.0)
    assert weights.shape == (2, 1, 6, 5)
    assert weights[0, 0, 2:4, 1:3].eq(4.0).all() and weights[0].sum() == 30 + 4 * 3
    assert weights[1, 0, 0, 0] == 4.0 and weights[1].sum() == 30 + 3


def test_the_loss_counts_a_wrong_paint_more_than_a_wrong_brightness():
    gray = torch.zeros(1, 3, 2, 2)
    weights = torch.ones(1, 1, 2, 2)
    lighter = gray + 0.2  # same hue, brighter
    red = gray + torch.tensor([0.2, -0.1, -0.1]).view(1, 3, 1, 1)  # hue shift, similar brightness
    brightness = reconstruction_loss(lighter, gray, weights, chroma_weight=3.0)
    paint = reconstruction_loss(red, gray, weights, chroma_weight=3.0)
    assert paint > brightness
    assert reconstruction_loss(red, gray, weights, chroma_weight=3.0) > reconstruction_loss(
        red, gray, weights, chroma_weight=1.0
    )
    assert reconstruction_loss(red, gray, 2 * weights, 1.0) == pytest.approx(
        2 * reconstruction_loss(red, gray, weights, 1.0)
    )


def test_a_built_zoo_loads_with_the_stages_own_loaders(tmp_path):
    out = build_toy_zoo(tmp_path / "zoo", MICRO)
    assert sorted(p.name for p in out.iterdir()) == ["open_clip", "sdxl", "settings.json", "timm-resnet", "yolo.pt"]
    pipe = models.load_sdxl_pipeline(str(out / "sdxl"))
    assert pipe.vae.config.scaling_factor != 0.18215  # measured on its own latents
    image = pipe("a red 2012 Toyota Camry sedan driving down the road.", num_inference_steps=2, height=64, width=64)
    assert image.images[0].size == (64, 64)
    detector = models.load_yolo(str(out / "yolo.pt"))
    assert detector.names[2] == "car" and detector.names[7] == "truck"
    clip, preprocess, tokenizer = models.load_open_clip(str(out / "open_clip"))
    assert clip.encode_text(tokenizer(["a red vehicle"])).shape[-1] == 32
    backbone = timm.create_model(f"local-dir:{out / 'timm-resnet'}", pretrained=True)  # as train-reid loads it
    assert backbone(torch.zeros(2, 3, 64, 64)).shape == (2, backbone.num_features)
    assert build_toy_zoo(out, MICRO) == out  # complete: nothing to do
    with pytest.raises(UserInputError, match="other settings"):
        build_toy_zoo(out, ToyZooConfig(**{**vars(MICRO), "clip_steps": 3}))


def fake_build(work, target, config):
    """Stands in for a model's trainer (in the model's own process): scratch in its work folder, then the model,
    which records the thread count it ran with; the model named by VEHICLE_DIFF_FAKE_CRASH dies instead, as a kill would."""
    (work / "scratch").write_text("half")
    if target.name == os.environ.get("VEHICLE_DIFF_FAKE_CRASH"):
        os.kill(os.getpid(), signal.SIGKILL)
    target.mkdir()
    (target / "threads").write_text(str(torch.get_num_threads()))
    with open(os.environ["VEHICLE_DIFF_FAKE_BUILD_LOG"], "a") as log:
        log.write(f"{target.name}\n")


@pytest.fixture
def fake_models(tmp_path, monkeypatch):
    monkeypatch.setattr(toy_models, "TOY_MODELS", {"a": fake_build, "b": fake_build, "c": fake_build})
    monkeypatch.setenv("VEHICLE_DIFF_FAKE_BUILD_LOG", str(tmp_path / "built.log"))
    return tmp_path / "built.log"


def test_a_killed_build_keeps_finished_models_and_restarts_only_its_own_work_folder(tmp_path, fake_models, monkeypatch):
    zoo = tmp_path / "zoo"
    monkeypatch.setenv("VEHICLE_DIFF_FAKE_CRASH", "b")
    with pytest.raises(RuntimeError, match="toy zoo.s b failed .exit status -9"):
        build_toy_zoo(zoo, MICRO)
    assert (zoo / "a" / "threads").exists() and (zoo / "b.building" / "scratch").exists()
    (zoo / "mine.txt").write_text("a user's file")
    (zoo / "a.building").mkdir()  # as if killed between renaming `a` into place and removing its work folder
    monkeypatch.delenv("VEHICLE_DIFF_FAKE_CRASH")
    build_toy_zoo(zoo, MICRO)
    assert fake_models.read_text().split() == ["a", "b", "c"]  # `a` was not trained again
    assert sorted(p.name for p in zoo.iterdir()) == ["a", "b", "c", "mine.txt", "settings.json"]


def test_each_model_trains_as_in_a_fresh_process_whatever_its_caller_ran_before(tmp_path, fake_models, monkeypatch):
    """ultralytics leaves torch at cores - 1 threads and the environment at OMP_NUM_THREADS=1, and CPU float sums
    follow the thread count: a zoo built in a process that ran a detector first (a test session, a resumed build)
    must still equal one built alone."""
    from vehicle_diff import launch_environment

    fresh = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
        capture_output=True,
        text=True,
        check=True,
        env=launch_environment(),  # a process started as this one was
    ).stdout.strip()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what importing ultralytics does when it is unset
    before = torch.get_num_threads()
    torch.set_num_threads(int(fresh) + 5)  # what its device choice does
    try:
        build_toy_zoo(tmp_path / "zoo", MICRO)
    finally:
        torch.set_num_threads(before)
    assert [(tmp_path / "zoo" / name / "threads").read_text() for name in "abc"] == [fresh] * 3


def test_a_folder_of_other_files_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserInputError, match="not a toy zoo"):
        build_toy_zoo(tmp_path, MICRO)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_close_ups_fill_the_frame_and_keep_the_box_on_the_vehicle():
    def longest_side(box):
        return max(box[2] - box[0], box[3] - box[1])

    for index in range(20):
        image, box, scene = framed_scene(index, seed=0, size=64, close_ups=1.0)
        x0, y0, x1, y1 = box
        assert image.size == (64, 64) and scene.caption.endswith("driving down the road.")
        assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
        assert longest_side(box) >= 64 / 1.5 - 1  # the vehicle spans most of the frame
        far = framed_scene(index, seed=0, size=64, close_ups=0.0)
        assert far[2].caption == scene.caption and longest_side(far[1]) <= longest_side(box)


def test_the_clip_jitter_changes_light_but_keeps_each_image_in_one_piece():
    pixels = torch.zeros(4, 3, 2, 2)
    jittered = photometric_jitter(pixels, torch.Generator().manual_seed(0))
    assert not torch.equal(jittered, pixels)
    assert torch.allclose(jittered, jittered[:, :, :1, :1].expand_as(jittered))  # one gain / cast per image


def test_the_learning_rate_warms_up_then_decays_to_zero_for_any_step_count():
    for steps in (1, 2, 20, 600):
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        schedule = warmup_cosine(optimizer, steps)
        rates = []
        for _ in range(steps):
            rates.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            schedule.step()
        assert max(rates) == pytest.approx(1.0) and all(0 <= rate <= 1 for rate in rates)
        assert rates[-1] <= rates[max(0, steps // 2)]


def test_attribute_labels_name_each_visible_part_and_only_the_changed_one_moves():
    from vehicle_diff.toy_world import vehicle_look

    car = dict(brand="Toyota", model="Camry", year=2012, body_style="sedan")
    red, blue = (toy_models.attribute_labels(vehicle_look(color=c, **car)) for c in ("red", "blue"))
    sizes = [len(values) for values in toy_models.look_attributes().values()]
    assert all(0 <= label < size for label, size in zip(red, sizes, strict=True))
    assert red[0] != blue[0] and red[1:] == blue[1:]  # paint is the first attribute


def test_the_reid_backbone_is_rebuilt_bit_for_bit_from_its_seed(tmp_path):
    built = []
    for run in ("first", "second"):
        (tmp_path / run).mkdir()
        torch.manual_seed(3)  # as build_toy_zoo seeds each model
        toy_models.build_toy_reid_backbone(tmp_path / run, tmp_path / run / "timm-resnet", MICRO)
        built.append((tmp_path / run / "timm-resnet" / "model.safetensors").read_bytes())
    assert built[0] == built[1]
