"""Full-size architectures on a CUDA GPU, with random weights (no download): the SDXL UNet's LoRA training step
and its 50-step CFG sampling at 1024^2, the filter's YOLOv5x6 (1280) + CLIP ViT-L/14, and the `generate` stage's
own loop against bare `pipe()` calls on the same random-weight SDXL pipeline. Without a GPU every row says it was
skipped; `python -m benchmarks.bench_gpu --smoke` runs the same rows at toy size on the CPU (the figures mean
nothing there: it shows that the code runs), and the tests run them too.

    make bench-gpu                                  # on a GPU machine: the table, with the device name
    python -m benchmarks.bench_gpu --smoke          # anywhere, a few minutes
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from benchmarks.common import row, tiny_prompts
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


def build_sdxl_pipeline(out_dir: Path, dtype) -> Path:
    """SDXL base 1.0's architecture (UNet, VAE, CLIP ViT-L and OpenCLIP bigG text encoders) with random weights,
    saved as a local diffusers folder that `generate` loads like the real one."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from vehicle_diff.tiny_models import clip_tokenizer

    def text_config(width, layers, heads, act):
        return CLIPTextConfig(
            hidden_size=width,
            intermediate_size=4 * width,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            projection_dim=width,
            hidden_act=act,
            vocab_size=49408,
            max_position_embeddings=77,
        )

    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=2,
        sample_size=1024,
        scaling_factor=0.13025,
        force_upcast=True,
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=CLIPTextModel(text_config(768, 12, 12, "quick_gelu")),
        text_encoder_2=CLIPTextModelWithProjection(text_config(1280, 32, 20, "gelu")),
        tokenizer=clip_tokenizer(),
        tokenizer_2=clip_tokenizer(pad_token="!"),
        unet=UNet2DConditionModel(**SDXL_UNET),
        scheduler=EulerDiscreteScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            steps_offset=1,
            timestep_spacing="leading",
        ),
    ).to(dtype=dtype)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def generate_stage_vs_bare(
    model: str, *, images: int, batch: int, resolution: int, steps: int, mixed_precision: str, device, extra=()
) -> dict:
    """s/image of `vehicle-diff generate` (whole command in this process: hashing, loading, rendering, writing)
    against loading the same pipeline and calling `pipe()` on the same prompts, seeds and batches."""
    import tempfile

    from vehicle_diff.generation.generate import batch_requests, load_pipeline, main, read_prompt_library, render

    settings = {"num_inference_steps": steps, "guidance_scale": 8.0, "height": resolution, "width": resolution}
    with tempfile.TemporaryDirectory() as tmp:
        prompts = tiny_prompts(Path(tmp) / "prompts", images)
        started = time.perf_counter()
        pipe = load_pipeline(model, revision=None, mixed_precision=mixed_precision, device=device)
        library = read_prompt_library(str(prompts))
        for index in range(-(-images // batch)):
            requests = batch_requests(library, 1, index, batch, 0, [])
            render(pipe, [r["prompt"] for r in requests], [r["seed"] for r in requests], **settings)
        synchronize(device)
        bare_s = time.perf_counter() - started
        del pipe
        args = ["--preset", "tiny", "--prompts", str(prompts), "--pretrained_model_name_or_path", model]
        args += ["--images_per_identity", "1", "--batch_size", str(batch), "--mixed_precision", mixed_precision]
        args += [f"--{k}={v}" for k, v in settings.items()]
        started = time.perf_counter()
        main([*args, *extra, "--output_dir", f"{tmp}/generated"])
        stage_s = time.perf_counter() - started
    return {"stage_s_per_image": stage_s / images, "bare_s_per_image": bare_s / images}


def gpu_rows(device: str = "cuda") -> list[dict]:
    name = torch.cuda.get_device_name(0)
    peak = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)
    rows = []
    for batch in (1, 4):
        for checkpointing in (False, True):
            result = lora_training_step(
                SDXL_UNET,
                batch=batch,
                resolution=1024,
                device=device,
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
    flops_per_image = None
    for batch in (1, 4, 8):
        result = cfg_sampling(SDXL_UNET, batch=batch, resolution=1024, device=device, dtype=torch.bfloat16)
        flops_per_image = result["flops_per_unet_call"] / (2 * batch) * 2 * 50
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
        result = filter_models(batch=batch, device=device)
        rows.append(
            row(
                f"[GPU {name}] YOLOv5x6 @1280 + CLIP ViT-L/14, batch {batch}",
                f"{result['images_per_s']:.1f} img/s",
                "-",
                1.0,
                "reported",
            )
        )
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        model = str(build_sdxl_pipeline(Path(tmp) / "sdxl-random", torch.bfloat16))
        for label, extra in (("", ()), (" --compile", ("--compile",))):
            result = generate_stage_vs_bare(
                model, images=16, batch=4, resolution=1024, steps=50, mixed_precision="bf16", device=device, extra=extra
            )
            limit = f", FLOP limit {flops_per_image / (peak * 1e12):.2f} s" if peak and flops_per_image else ""
            rows.append(
                row(
                    f"[GPU {name}] generate{label} 16 images, 1024^2, 50 steps, CFG 8, bf16, batch 4 (whole command)",
                    f"{result['stage_s_per_image']:.2f} s/img",
                    f"{result['bare_s_per_image']:.2f} s/img (load + bare pipe() calls{limit})",
                    result["bare_s_per_image"] / result["stage_s_per_image"],
                    ">= 1.0",
                )
            )
    return rows


def smoke_rows(tiny_zoo: Path) -> list[dict]:
    """The rows of `gpu_rows` at toy size on the CPU: the same functions, so a broken one shows here."""
    import json

    config = json.loads((tiny_zoo / "sdxl" / "unet" / "config.json").read_text())
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    cpu, fp32 = "cpu", torch.float32
    step = lora_training_step(
        config, batch=2, resolution=64, device=cpu, dtype=fp32, gradient_checkpointing=True, steps=1
    )
    sampling = cfg_sampling(config, batch=2, resolution=64, device=cpu, dtype=fp32, steps=2)
    models = filter_models(
        batch=2,
        device=cpu,
        detector_yaml="yolov5n-p6.yaml",
        imgsz=64,
        clip=f"local-dir:{tiny_zoo / 'open_clip'}",
        iterations=1,
    )
    generate = generate_stage_vs_bare(
        "tiny:sdxl", images=4, batch=2, resolution=64, steps=2, mixed_precision="no", device=cpu
    )
    note = "toy size on CPU: means nothing"
    return [
        row("[smoke] LoRA step, tiny UNet, 64^2", f"{step['s_per_step']:.3f} s/step", note, 1.0, "runs"),
        row("[smoke] CFG sampling, tiny UNet, 64^2", f"{sampling['images_per_s']:.2f} img/s", note, 1.0, "runs"),
        row("[smoke] YOLOv5n6 @64 + tiny CLIP", f"{models['images_per_s']:.1f} img/s", note, 1.0, "runs"),
        row(
            "[smoke] generate vs bare pipe(), tiny:sdxl, 64^2, 2 steps",
            f"{generate['stage_s_per_image']:.3f} s/img",
            f"{generate['bare_s_per_image']:.3f} s/img (bare); {note}",
            generate["bare_s_per_image"] / generate["stage_s_per_image"],
            "runs",
        ),
    ]


def run():
    """The GPU section of BENCHMARKS.md (`make bench-gpu`); without CUDA one row says it was skipped."""
    if not torch.cuda.is_available():
        return [
            row(
                "GPU rows (SDXL UNet LoRA step and sampling at 1024^2, YOLOv5x6 + CLIP ViT-L/14, generate vs pipe())",
                "skipped",
                "no CUDA device",
                1.0,
                "-",
            )
        ]
    return gpu_rows()


def main(argv: list[str] | None = None) -> list[dict]:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="the same rows at toy size on the CPU (a few minutes)")
    args = parser.parse_args(argv)
    if args.smoke:
        from vehicle_diff.tiny_models import ensure_zoo

        print("--smoke: toy sizes on the CPU; the figures mean nothing, they show that every row's code runs.")
        rows = smoke_rows(ensure_zoo())
    else:
        if not torch.cuda.is_available():
            raise SystemExit(
                "bench_gpu: no CUDA device here; run it on a GPU machine, or use --smoke for the code path"
            )
        from benchmarks.__main__ import write_table

        rows = gpu_rows()
        write_table(rows, "GPU (`make bench-gpu`)")
    for result in rows:
        print(" | ".join(str(v) for v in result.values()), flush=True)
    return rows


if __name__ == "__main__":
    main()
