"""Stage 2b on the tiny preset: training images/s of `finetune` (its own timing of the training loop) against a
bare loop over the same model, LoRA, data, batch and steps, in the same process; and the stage's peak RSS."""

import json
import tempfile
import time
from pathlib import Path

from benchmarks.common import row

STEPS = 40


def bare_loop(captions: Path, steps: int) -> float:
    """The minimum a LoRA step needs: VAE encode, text encode, UNet forward/backward, Adam. Returns images/s."""
    import datasets
    import torch
    import torch.nn.functional as F
    from peft import LoraConfig
    from vehicle_diff.training.finetune_lora import CaptionedImages, collate, encode_prompt, lora_target_modules

    from vehicle_diff.models import load_sdxl_pipeline

    torch.manual_seed(0)
    pipe = load_sdxl_pipeline("tiny:sdxl")
    for model in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
        model.requires_grad_(False)
    pipe.unet.add_adapter(
        LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=lora_target_modules("up_blocks"))
    )
    parameters = [p for p in pipe.unet.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(parameters, lr=1e-4)
    data = datasets.load_dataset("imagefolder", data_dir=str(captions), split="train")
    dataset = CaptionedImages(
        data, image_column="image", caption_column="text", resolution=64, center_crop=False, random_flip=True, seed=0
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, shuffle=True, collate_fn=collate)
    scheduler = pipe.scheduler
    started, done = time.perf_counter(), 0
    while done < steps:
        for batch in loader:
            with torch.no_grad():
                latents = pipe.vae.encode(batch["pixel_values"]).latent_dist.sample() * pipe.vae.config.scaling_factor
                embeds, pooled = encode_prompt(
                    [pipe.text_encoder, pipe.text_encoder_2],
                    [pipe.tokenizer, pipe.tokenizer_2],
                    batch["captions"],
                    "cpu",
                )
            noise = torch.randn_like(latents)
            timesteps = torch.randint(0, 1000, (1,))
            noisy = scheduler.add_noise(latents, noise, timesteps)
            prediction = pipe.unet(
                noisy,
                timesteps,
                embeds,
                added_cond_kwargs={"text_embeds": pooled, "time_ids": batch["time_ids"].float()},
            ).sample
            F.mse_loss(prediction, noise).backward()
            optimizer.step()
            optimizer.zero_grad()
            done += 1
            if done == steps:
                break
    return steps / (time.perf_counter() - started)


def sdxl_sizes() -> tuple[int, int]:
    """Bytes of SDXL's rank-4 up-block LoRA file and of one checkpoint (the adapters plus Adam's two moments,
    all fp32), from the parameter count on the meta device."""
    from vehicle_diff.training.finetune_lora import FinetuneConfig, count_lora_parameters

    from vehicle_diff.config import resolve_config

    parameters = count_lora_parameters(resolve_config(FinetuneConfig, "finetune", "paper"))
    return parameters * 4, parameters * 4 * 3


def run():
    from vehicle_diff.generation.caption import main as caption
    from vehicle_diff.generation.generate import main as generate
    from vehicle_diff.generation.prompts import main as prompts
    from vehicle_diff.training.finetune_lora import main as finetune

    with tempfile.TemporaryDirectory() as tmp:
        library = prompts(["--preset", "tiny", "--output_dir", f"{tmp}/prompts"])
        generated = generate(["--preset", "tiny", "--prompts", str(library), "--output_dir", f"{tmp}/gen"])
        captions = caption(
            [
                "--preset",
                "tiny",
                "--input_images",
                str(generated / "images"),
                "--fraction",
                "1",
                "--output_dir",
                f"{tmp}/cap",
            ]
        )
        bare_loop(captions, 4)  # warm-up
        bare = bare_loop(captions, STEPS)
        out = finetune(
            [
                "--preset",
                "tiny",
                "--train_data_dir",
                str(captions),
                "--max_train_steps",
                str(STEPS),
                "--checkpointing_steps",
                str(STEPS),
                "--output_dir",
                f"{tmp}/lora",
            ]
        )
        stats = json.loads((out / "training_stats.json").read_text())
        checkpoint = sum(f.stat().st_size for f in (out / f"checkpoint-{STEPS}").rglob("*") if f.is_file())
        lora = (out / "pytorch_lora_weights.safetensors").stat().st_size
    sdxl_lora, sdxl_checkpoint = sdxl_sizes()
    return [
        row(
            "finetune checkpoint size / LoRA file size, tiny (measured)",
            f"{checkpoint / 1e3:,.0f} kB",
            f"{lora / 1e3:,.0f} kB (LoRA file)",
            checkpoint / lora,
            "<= 5",
        ),
        row(
            "finetune checkpoint size / LoRA file size, SDXL rank 4 up blocks (parameters counted on the meta device)",
            f"{sdxl_checkpoint / 1e6:,.1f} MB",
            f"{sdxl_lora / 1e6:,.1f} MB (LoRA file)",
            sdxl_checkpoint / sdxl_lora,
            "<= 5 (whole UNet: 10,270 MB)",
        ),
        row(
            f"finetune, tiny, {STEPS} steps of batch 1 at 64px",
            f"{stats['images_per_second']:.1f} img/s",
            f"{bare:.1f} img/s (bare loop)",
            stats["images_per_second"] / bare,
            ">= 0.9",
        ),
        row("finetune peak RSS (whole stage, tiny)", f"{stats['peak_rss_mib']:.0f} MiB", "-", 1.0, "reported"),
    ]
