"""The GPU benchmark's functions at toy size on the CPU (so they are known to run), and at full size on a GPU."""

import json

import pytest
import torch

from benchmarks.bench_gpu import SDXL_UNET, cfg_sampling, filter_models, lora_training_step


@pytest.fixture(scope="module")
def tiny_unet_config(tiny_zoo):
    config = json.loads((tiny_zoo / "sdxl" / "unet" / "config.json").read_text())
    return {k: v for k, v in config.items() if not k.startswith("_")}


def test_toy_size_on_cpu(tiny_unet_config, tiny_zoo):
    step = lora_training_step(
        tiny_unet_config,
        batch=2,
        resolution=64,
        device="cpu",
        dtype=torch.float32,
        gradient_checkpointing=True,
        steps=1,
    )
    assert step["s_per_step"] > 0 and step["peak_gib"] is None
    sampling = cfg_sampling(tiny_unet_config, batch=2, resolution=64, device="cpu", dtype=torch.float32, steps=2)
    assert sampling["images_per_s"] > 0 and sampling["flops_per_unet_call"] > 0
    models = filter_models(
        batch=2,
        device="cpu",
        detector_yaml="yolov5n-p6.yaml",
        imgsz=64,
        clip=f"local-dir:{tiny_zoo / 'open_clip'}",
        iterations=1,
    )
    assert models["images_per_s"] > 0


def test_sdxl_config_is_the_real_architecture():
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SDXL_UNET)
    assert 2.5e9 < sum(p.numel() for p in unet.parameters()) < 2.7e9  # SDXL's UNet has ~2.57 B parameters


@pytest.mark.gpu
def test_full_size_lora_step_at_1024_on_a_gpu():
    result = lora_training_step(
        SDXL_UNET, batch=1, resolution=1024, device="cuda", dtype=torch.bfloat16, gradient_checkpointing=True, steps=1
    )
    assert result["s_per_step"] > 0 and result["peak_gib"] < 70
