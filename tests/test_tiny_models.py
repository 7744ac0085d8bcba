"""Each tiny model loads through the same call the stages use, and produces output of the right type and shape."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vehicle_diff import models
from vehicle_diff.errors import UserInputError
from vehicle_diff.tiny_models import build_zoo, clip_tokenizer


@pytest.fixture
def image():
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8))


def test_sdxl_pipeline_has_sdxl_structure_and_generates_64px(tiny_zoo):
    pipe = models.load_sdxl_pipeline("tiny:sdxl")
    unet = pipe.unet.config
    assert unet.addition_embed_type == "text_time"
    assert any(t.startswith("CrossAttn") for t in unet.down_block_types)
    assert any(t.startswith("CrossAttn") for t in unet.up_block_types)
    assert unet.cross_attention_dim == pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    result = pipe("a red car", num_inference_steps=2, height=64, width=64, generator=torch.Generator().manual_seed(0))
    assert result.images[0].size == (64, 64)


def test_clip_tokenizer_matches_open_clip(tiny_zoo):
    import open_clip

    text = "a red 2012 Toyota Camry sedan driving down the road."
    ours = clip_tokenizer()(text).input_ids
    theirs = open_clip.tokenize([text])[0].tolist()
    assert len(ours) == 16 and ours == theirs[: len(ours)]
    assert clip_tokenizer(pad_token="!")(text, padding="max_length", max_length=77).input_ids[-1] == 0  # "!" is id 0


def test_blip2_returns_caption_strings(tiny_zoo, image):
    model, processor = models.load_blip2("tiny:blip2")
    inputs = processor(images=[image, image], return_tensors="pt")
    ids = model.generate(**inputs, max_new_tokens=6, min_new_tokens=2)
    captions = processor.batch_decode(ids, skip_special_tokens=True)
    assert len(captions) == 2 and all(isinstance(c, str) and c.strip() for c in captions)


def test_yolo_detector_has_coco_names_and_predicts(tiny_zoo, image):
    detector = models.load_yolo("tiny:yolo.pt")
    assert detector.names[2] == "car" and detector.names[7] == "truck" and len(detector.names) == 80
    results = detector.predict([np.asarray(image)], imgsz=64, conf=0.0, classes=[2, 7], verbose=False)
    boxes = results[0].boxes
    assert boxes.xyxy.shape[1] == 4 and set(boxes.cls.tolist()) <= {2.0, 7.0}


@pytest.fixture
def odd_thread_count():
    """A thread count ultralytics never sets (it sets min(8, cores - 1)), restored after the test."""
    before = torch.get_num_threads()
    torch.set_num_threads(9)
    yield 9
    torch.set_num_threads(before)


def test_detecting_leaves_torchs_thread_count_as_it_was(tiny_zoo, image, odd_thread_count):
    from generation.scoring import VehicleDetector

    detector = VehicleDetector("tiny:yolo.pt", imgsz=64, device="cpu")
    assert len(detector([image, image])) == 2
    assert torch.get_num_threads() == odd_thread_count  # later stages compute as a resumed run would


def test_open_clip_encodes_text_and_images(tiny_zoo, image):
    model, preprocess, tokenizer = models.load_open_clip("tiny:open_clip")
    with torch.no_grad():
        image_features = model.encode_image(preprocess(image)[None])
        text_features = model.encode_text(tokenizer(["a red vehicle", "a blue vehicle"]))
    assert image_features.shape == (1, 32) and text_features.shape == (2, 32)


@pytest.mark.parametrize(
    "name, family", [("timm-resnet", "ResNet"), ("timm-densenet", "DenseNet"), ("timm-swinv2", "SwinTransformerV2")]
)
def test_timm_backbones_round_trip(tiny_zoo, name, family):
    model = models.create_timm(f"tiny:{name}")
    assert type(model).__name__ == family
    features = model.eval()(torch.randn(2, 3, 64, 64))
    assert features.shape == (2, model.num_features)


def test_zoo_is_deterministic_and_reused(tiny_zoo, tmp_path):
    again = build_zoo(tmp_path / "again", seed=0)
    for file in [
        "sdxl/unet/diffusion_pytorch_model.safetensors",
        "open_clip/open_clip_model.safetensors",
        "timm-swinv2/model.safetensors",
    ]:
        assert (again / file).read_bytes() == (tiny_zoo / file).read_bytes(), file
    stamp = (again / "manifest.json").stat().st_mtime_ns
    assert build_zoo(tmp_path / "again", seed=0) == again
    assert (again / "manifest.json").stat().st_mtime_ns == stamp  # a built zoo is reused, not rebuilt


def test_unknown_tiny_name_and_paper_models_offline_give_clear_errors(tiny_zoo):
    with pytest.raises(UserInputError, match="unknown tiny model 'tiny:nope'"):
        models.resolve_model("tiny:nope")
    cases = [
        (
            models.load_sdxl_pipeline,
            "stabilityai/stable-diffusion-xl-base-1.0",
            [
                "HF_HUB_OFFLINE",
                "hf download stabilityai/stable-diffusion-xl-base-1.0 --include 'model_index.json'",
                "--include '*/diffusion_pytorch_model.safetensors'",
                "--pretrained_model_name_or_path",
            ],
        ),
        (
            models.load_blip2,
            "Salesforce/blip2-opt-2.7b",
            [
                "'Salesforce/blip2-opt-2.7b' (--caption_model)",
                "hf download Salesforce/blip2-opt-2.7b --include '*.json'",
            ],
        ),
        (
            models.load_open_clip,
            "hf-hub:timm/vit_large_patch14_clip_224.openai",
            [
                "hf download timm/vit_large_patch14_clip_224.openai --include 'open_clip_config.json' --include "
                "'open_clip_model.safetensors'",
                "hf-hub:timm/vit_large_patch14_clip_224.openai",
            ],
        ),
        (
            models.create_timm,
            "resnet50.tv_in1k",
            [
                "'resnet50.tv_in1k' (--backbone)",
                "hf download timm/resnet50.tv_in1k --include 'config.json' --include 'model.safetensors'",
                "hf-hub:timm/resnet50.tv_in1k",
            ],
        ),
        (
            models.load_yolo,
            "yolov5x6u.pt",
            ["https://github.com/ultralytics/assets/releases/download/", "/yolov5x6u.pt", "weights_dir", "--detector"],
        ),
    ]
    for loader, model_id, expected in cases:
        with pytest.raises(UserInputError) as caught:
            loader(model_id)
        message = str(caught.value)
        assert "\n" not in message, message  # one line
        for part in expected:
            assert part in message, (part, message)
    with pytest.raises(UserInputError, match="no such file"):
        models.load_yolo("/nonexistent/detector.pt")
    with pytest.raises(UserInputError, match="no such file or folder"):
        models.create_timm("./nonexistent-backbone")


class Planted:
    """Unpickling this runs `action(*args)`: what a hostile checkpoint does."""

    def __init__(self, action, *args):
        self.action, self.args = action, args

    def __reduce__(self):
        return self.action, self.args


@pytest.mark.parametrize("how", ["call", "bound-method"])
def test_yolo_loads_in_safe_mode_and_a_crafted_pickle_runs_no_code(tiny_zoo, tmp_path, how):
    import os
    import pathlib

    marker = tmp_path / "code-ran"
    # a module-level callable (os.mkdir), or a bound method reached through builtins.getattr (Path.touch)
    payload = Planted(os.mkdir, str(marker)) if how == "call" else Planted(pathlib.Path(marker).touch)
    crafted = tmp_path / "detector.pt"
    torch.save({"model": payload, "train_args": {}}, crafted)
    torch.load(crafted, weights_only=False)  # the file is live: an unrestricted load runs its code
    assert marker.exists()
    marker.rmdir() if marker.is_dir() else marker.unlink()

    with pytest.raises(UserInputError, match="refused to load"):
        models.load_yolo(str(crafted))
    assert not marker.exists()
    from ultralytics.nn import tasks

    assert tasks.SAFE_LOAD and os.environ["ULTRALYTICS_SAFE_LOAD"] == "1"
    detector = models.load_yolo("tiny:yolo.pt")  # the zoo's detector passes the allow-list
    assert detector.names[2] == "car"


def test_resolved_revision_hashes_local_models_and_reads_the_hub_cache(tiny_zoo, tmp_path, monkeypatch):
    import shutil

    from huggingface_hub import constants

    first = models.resolved_revision("tiny:timm-resnet")
    assert first.startswith("sha256:") and len(first) == len("sha256:") + 64
    assert models.resolved_revision("tiny:timm-resnet") == first
    copy = tmp_path / "resnet"
    shutil.copytree(tiny_zoo / "timm-resnet", copy)
    assert models.resolved_revision(str(copy)) == first  # content, not location
    assert models.resolved_revision(f"local-dir:{copy}") == first
    (copy / "config.json").write_text((copy / "config.json").read_text().replace("resnet50", "resnet50 "))
    assert models.resolved_revision(str(copy)) != first
    assert models.resolved_revision("tiny:yolo.pt") == "sha256:" + models.content_hash(tiny_zoo / "yolo.pt")

    # the documented cache layout: models--ORG--NAME/refs/REVISION holds the commit, snapshots/COMMIT the files
    cache = tmp_path / "hub-cache"
    commit, tagged = "a" * 40, "b" * 40
    repo = cache / "models--timm--resnet50.tv_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "refs" / "v2").write_text(tagged)
    (repo / "snapshots" / commit).mkdir(parents=True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    assert models.resolved_revision("resnet50.tv_in1k") == commit  # timm name -> timm/resnet50.tv_in1k
    assert models.resolved_revision("hf-hub:timm/resnet50.tv_in1k") == commit
    assert models.resolved_revision("timm/resnet50.tv_in1k", "v2") == tagged
    assert models.resolved_revision("timm/resnet50.tv_in1k", commit) == commit
    with pytest.raises(UserInputError, match=r"stabilityai/stable-diffusion-xl-base-1.0@main is not in the HF cache"):
        models.resolved_revision("stabilityai/stable-diffusion-xl-base-1.0")  # offline in tests
    with pytest.raises(UserInputError, match="no such file or folder"):
        models.resolved_revision("./no/such/model")


def test_content_hashes_are_remembered_by_file_identity(tmp_path, monkeypatch, model_hash_cache):
    import hashlib

    folder = tmp_path / "model"
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "weights.bin").write_bytes(b"w" * 3_000_000)
    (folder / "config.json").write_text("{}")
    first = models.content_hash(folder)
    assert (model_hash_cache / "content-hashes.json").is_file()

    reads = []
    real_open = open

    def counting_open(file, *args, **kwargs):
        reads.append(Path(file).name)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", counting_open)
    assert models.content_hash(folder) == first
    assert reads == [], "an unchanged model is read again"
    (folder / "config.json").write_text('{"a": 1}')
    second = models.content_hash(folder)
    assert reads == ["config.json"] and second != first
    config_digest = hashlib.sha256(b'{"a": 1}').hexdigest()
    weights_digest = hashlib.sha256(b"w" * 3_000_000).hexdigest()
    expected = f"config.json\0{config_digest}\nunet/weights.bin\0{weights_digest}\n"
    assert second == hashlib.sha256(expected.encode()).hexdigest()
