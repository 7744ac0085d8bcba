"""Full-size architectures on a CUDA GPU, with random weights (no download): the SDXL UNet's LoRA training step
and its 50-step CFG sampling at 1024^2, and the filter's YOLOv5x6 (1280) + CLIP ViT-L/14. Without a GPU every
row says it was skipped. The same functions run at toy size on the CPU in the tests, so they are known to work.
"""

from __future__ import annotations

import time

import torch

from benchmarks.common import row
from vehicle_diff.models import SDXL_UNET

POOLED_DIM = 1280  # text_encoder_2's projection
BF16_PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}  # dense bf16, vendor data sheets


def unet_inputs(config: dict, batch: int, resolution: int, device, dtype):
    pooled = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
    latents = torch.randn(batch, 4, resolution // 8, resolution // 8, device=device, dtype=dtype)
    text = torch.randn(batch, 77, config["cross_attention_dim"], device=device, dtype=dtype)
    conditioning = {
        "text_embeds": torch.randn(batch, pooled, device=device, dtype=dtype),
        "time_ids": torch.tensor(
            [[resolution, resolution, 0, 0, resolution, resolution]] * batch, device=device, dtype=dtype
        ),
    }
    return latents, text, conditioning


def peak_gib(device) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.device(device).type == "cuda" else None


def synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def lora_training_step(
    config: dict, *, batch: int, resolution: int, device, dtype, gradient_checkpointing: bool, steps: int = 3
) -> dict:
    """s/step and peak memory of LoRA (rank 4, up blocks) training on the UNet, as `finetune` does it."""
    from diffusers import UNet2DConditionModel
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig
    from vehicle_diff.training.finetune_lora import lora_target_modules

    unet = UNet2DConditionModel(**config).to(device, dtype).requires_grad_(False)
    unet.add_adapter(
        LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=lora_target_modules("up_blocks"))
    )
    cast_training_params(unet, dtype=torch.float32)
    if gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    optimizer = torch.optim.Adam([p for p in unet.parameters() if p.requires_grad], lr=1e-4)
    latents, text, conditioning = unet_inputs(config, batch, resolution, device, dtype)
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    timings = []
    for _ in range(steps + 1):  # the first step warms up
        started = time.perf_counter()
        timesteps = torch.randint(0, 1000, (batch,), device=device)
        prediction = unet(latents, timesteps, text, added_cond_kwargs=conditioning).sample
        torch.nn.functional.mse_loss(prediction.float(), torch.randn_like(prediction, dtype=torch.float32)).backward()
        optimizer.step()
        optimizer.zero_grad()
        synchronize(device)
        timings.append(time.perf_counter() - started)
    return {"s_per_step": min(timings[1:]), "peak_gib": peak_gib(device)}


def cfg_sampling(config: dict, *, batch: int, resolution: int, device, dtype, steps: int = 50) -> dict:
    """images/s of `steps` UNet calls with classifier-free guidance (a doubled batch), and the share of the GPU's
    bf16 peak that the UNet's FLOPs (counted by torch's FlopCounterMode) reach."""
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    unet = UNet2DConditionModel(**config).to(device, dtype).eval()
    latents, text, conditioning = unet_inputs(config, 2 * batch, resolution, device, dtype)
    timestep = torch.tensor([500] * 2 * batch, device=device)
    with torch.no_grad():
        with FlopCounterMode(display=False) as counter:
            unet(latents, timestep, text, added_cond_kwargs=conditioning)
        flops_per_call = counter.get_total_flops()
        synchronize(device)
        started = time.perf_counter()
        for _ in range(steps):
            unet(latents, timestep, text, added_cond_kwargs=conditioning)
        synchronize(device)
    seconds = time.perf_counter() - started
    achieved_tflops = flops_per_call * steps / seconds / 1e12
    return {"images_per_s": batch / seconds, "achieved_tflops": achieved_tflops, "flops_per_unet_call": flops_per_call}


def filter_models(
    *,
    batch: int,
    device,
    detector_yaml: str = "yolov5x-p6.yaml",
    imgsz: int = 1280,
    clip: str = "ViT-L-14",
    iterations: int = 3,
) -> dict:
    """images/s of the filter's two models with random weights: YOLOv5x6 at `imgsz`, then CLIP ViT-L/14 on crops."""
    import open_clip
    from ultralytics import YOLO

    detector = YOLO(detector_yaml, verbose=False)
    model = open_clip.create_model(clip, pretrained=None).to(device).eval()
    size = model.visual.image_size[0] if isinstance(model.visual.image_size, tuple) else model.visual.image_size
    images = [torch.randint(0, 255, (imgsz, imgsz, 3), dtype=torch.uint8).numpy() for _ in range(batch)]
    crops = torch.randn(batch, 3, size, size, device=device)
    timings = []
    for _ in range(iterations + 1):
        started = time.perf_counter()
        detector.predict(images, imgsz=imgsz, device=device, verbose=False, half=torch.device(device).type == "cuda")
        with torch.no_grad(), torch.autocast(torch.device(device).type, enabled=torch.device(device).type == "cuda"):
            model.encode_image(crops)
        synchronize(device)
        timings.append(time.perf_counter() - started)
    return {"images_per_s": batch / min(timings[1:])}


def run():
    if not torch.cuda.is_available():
        return [
            row(
                "GPU rows (SDXL UNet LoRA step and sampling at 1024^2, YOLOv5x6 + CLIP ViT-L/14)",
                "skipped",
                "no CUDA device",
                1.0,
                "-",
            )
        ]
    name = torch.cuda.get_device_name(0)
    peak = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)
    rows = []
    for batch in (1, 4):
        for checkpointing in (False, True):
            result = lora_training_step(
                SDXL_UNET,
                batch=batch,
                resolution=1024,
                device="cuda",
                dtype=torch.bfloat16,
                gradient_checkpointing=checkpointing,
            )
            rows.append(
                row(
                    f"[GPU {name}] SDXL UNet LoRA step, 1024^2, bf16, batch {batch}, checkpointing {checkpointing}",
                    f"{result['s_per_step']:.3f} s/step",
                    f"{result['peak_gib']:.1f} GiB peak",
                    1.0,
                    "reported",
                )
            )
    for batch in (1, 4, 8):
        result = cfg_sampling(SDXL_UNET, batch=batch, resolution=1024, device="cuda", dtype=torch.bfloat16)
        ratio = result["achieved_tflops"] / peak if peak else float("nan")
        rows.append(
            row(
                f"[GPU {name}] SDXL UNet 50 steps CFG 8, 1024^2, bf16, batch {batch}",
                f"{result['images_per_s']:.3f} img/s",
                f"{result['achieved_tflops']:.0f} TFLOP/s of {peak} peak",
                ratio,
                "reported",
            )
        )
    for batch in (16, 32):
        result = filter_models(batch=batch, device="cuda")
        rows.append(
            row(
                f"[GPU {name}] YOLOv5x6 @1280 + CLIP ViT-L/14, batch {batch}",
                f"{result['images_per_s']:.1f} img/s",
                "-",
                1.0,
                "reported",
            )
        )
    return rows
