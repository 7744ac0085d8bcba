"""Each tiny model loads through the same call the stages use, and produces output of the right type and shape."""

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
    with pytest.raises(UserInputError, match=r"(?s)'stabilityai/stable-diffusion-xl-base-1.0'.*HF_HUB_OFFLINE"):
        models.load_sdxl_pipeline("stabilityai/stable-diffusion-xl-base-1.0")
    with pytest.raises(UserInputError, match=r"'Salesforce/blip2-opt-2.7b' \(--caption_model\)"):
        models.load_blip2("Salesforce/blip2-opt-2.7b")
    with pytest.raises(UserInputError, match=r"'hf-hub:timm/vit_large_patch14_clip_224.openai'"):
        models.load_open_clip("hf-hub:timm/vit_large_patch14_clip_224.openai")
    with pytest.raises(UserInputError, match=r"'resnet50.tv_in1k' \(--backbone\)"):
        models.create_timm("resnet50.tv_in1k")
