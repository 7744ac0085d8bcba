"""The `toy` zoo's text-to-image model: SDXL's layout at toy size, trained on the toy world's source scenes.

The `tiny` zoo's pipeline has random weights; this one has learned to draw the source world from the prompt
library's captions, so that a LoRA, a color check and a re-ID model downstream have something real to work on.
The two CLIP text encoders stay frozen and random (their embeddings still tell the caption's words apart); the VAE
and the UNet are trained here, on the CPU, from a seed.

Two choices make the VAE learn paint within minutes on two cores (seen on reconstruction sheets at 400 steps):
- the VAE is trained as a deterministic autoencoder (the posterior mean, a tiny KL term): sampling the posterior
  from a fresh initialisation drowns the latent in unit noise, and the colors come out gray after 600 steps;
- its loss weighs the chroma of a decorrelated color space and the pixels inside the vehicle's box more, since a
  vehicle is a small part of a 64 px scene and its paint is what prompts ask for.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

# RGB -> (luma, blue-difference, red-difference) (BT.601), chroma rows weighted up (see `reconstruction_loss`).
YCBCR = torch.tensor([[0.299, 0.587, 0.114], [-0.169, -0.331, 0.5], [0.5, -0.419, -0.081]])


@dataclass
class ToySDXLConfig:
    scenes: int = 4096  # source scenes rendered once, in memory (64 px: 50 MB)
    image_size: int = 64
    seed: int = 0
    vae_steps: int = 600
    vae_batch_size: int = 32
    vae_learning_rate: float = 3e-3
    chroma_weight: float = 3.0
    vehicle_weight: float = 4.0  # loss weight of the pixels inside the vehicle's box
    unet_steps: int = 3000
    unet_batch_size: int = 64
    unet_learning_rate: float = 1e-3
    caption_dropout: float = 0.1  # trains the unconditional branch classifier-free guidance needs


def source_batch(config: ToySDXLConfig):
    """Pixels in [-1, 1] (N, 3, H, W), a per-pixel loss weight (N, 1, H, W) and the captions of the source scenes."""
    from .toy_world import source_scene

    size = (config.image_size, config.image_size)
    scenes = [source_scene(index, seed=config.seed, size=size) for index in range(config.scenes)]
    pixels = np.stack([np.asarray(scene.render.image) for scene in scenes])
    pixels = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1
    return (
        pixels,
        vehicle_weights([scene.render.box for scene in scenes], size, config.vehicle_weight),
        [scene.caption for scene in scenes],
    )


def vehicle_weights(boxes: list, size: tuple[int, int], inside: float) -> torch.Tensor:
    """1 outside each image's box, `inside` within it (x0, y0, x1, y1, exclusive ends)."""
    weights = torch.ones(len(boxes), 1, size[1], size[0])
    for index, (x0, y0, x1, y1) in enumerate(boxes):
        weights[index, :, y0:y1, x0:x1] = inside
    return weights


def reconstruction_loss(reconstruction, target, weights, chroma_weight: float) -> torch.Tensor:
    """Weighted L1 in luma / chroma space, chroma counted `chroma_weight` times."""
    transform = YCBCR * torch.tensor([[1.0], [chroma_weight], [chroma_weight]])
    difference = torch.einsum("ij,bjhw->bihw", transform, reconstruction - target)
    return (difference.abs() * weights).mean()


def warmup_cosine(optimizer, steps: int, warmup_share: float = 0.05):
    """Linear warm-up over the first 5 % of the steps (at least one), then cosine decay to zero; any step count."""
    warmup = max(1, round(warmup_share * steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_vae(vae, pixels, weights, config: ToySDXLConfig) -> None:
    from tqdm import tqdm

    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(vae.parameters(), config.vae_learning_rate, weight_decay=0.0)
    schedule = warmup_cosine(optimizer, config.vae_steps)
    vae.train()
    for _ in tqdm(range(config.vae_steps), desc="toy zoo: VAE", unit="step"):
        batch = torch.randint(0, len(pixels), (config.vae_batch_size,), generator=generator)
        posterior = vae.encode(pixels[batch]).latent_dist
        reconstruction = vae.decode(posterior.mode()).sample
        loss = reconstruction_loss(reconstruction, pixels[batch], weights[batch], config.chroma_weight)
        loss = loss + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    vae.eval()


def train_unet(pipe, latents, captions: list[str], config: ToySDXLConfig) -> None:
    """Epsilon prediction on the scaled latents with SDXL's noise schedule, size micro-conditioning of the
    full image, and zeroed text embeddings for dropped captions (SDXL's pipeline zeroes the negative prompt)."""
    from diffusers import DDPMScheduler
    from tqdm import tqdm

    unique = sorted(set(captions))
    with torch.no_grad():
        prompt_embeds, _, pooled_embeds, _ = pipe.encode_prompt(unique, device="cpu", do_classifier_free_guidance=False)
    position = {caption: index for index, caption in enumerate(unique)}
    caption_index = torch.tensor([position[caption] for caption in captions])
    noise_schedule = DDPMScheduler.from_config(pipe.scheduler.config)
    unet, size = pipe.unet, config.image_size
    time_ids = torch.tensor([[size, size, 0, 0, size, size]], dtype=torch.float32).repeat(config.unet_batch_size, 1)
    generator = torch.Generator().manual_seed(config.seed + 1)
    optimizer = torch.optim.AdamW(unet.parameters(), config.unet_learning_rate, weight_decay=1e-2)
    schedule = warmup_cosine(optimizer, config.unet_steps)
    unet.train()
    for _ in tqdm(range(config.unet_steps), desc="toy zoo: UNet", unit="step"):
        batch = torch.randint(0, len(latents), (config.unet_batch_size,), generator=generator)
        clean = latents[batch]
        noise = torch.randn(clean.shape, generator=generator)
        timesteps = torch.randint(0, noise_schedule.config.num_train_timesteps, (len(batch),), generator=generator)
        embeds, pooled = prompt_embeds[caption_index[batch]].clone(), pooled_embeds[caption_index[batch]].clone()
        dropped = torch.rand(len(batch), generator=generator) < config.caption_dropout
        embeds[dropped], pooled[dropped] = 0.0, 0.0
        prediction = unet(
            noise_schedule.add_noise(clean, noise, timesteps),
            timesteps,
            embeds,
            added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids},
        ).sample
        loss = torch.nn.functional.mse_loss(prediction, noise)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        schedule.step()
    unet.eval()


def build_toy_sdxl(out_dir: Path, config: ToySDXLConfig) -> Path:
    """Train the VAE, then the UNet on its latents, and save the pipeline in diffusers' format to `out_dir`, a new
    folder (built in a temp folder beside it and renamed, so a killed build leaves no half pipeline)."""
    from .errors import UserInputError

    if out_dir.exists():
        raise UserInputError(f"{out_dir} already exists; choose a new folder for the toy pipeline")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    work = Path(tempfile.mkdtemp(prefix=out_dir.name + ".tmp-", dir=out_dir.parent))
    try:
        return train_and_save(work, out_dir, config)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def train_and_save(work: Path, out_dir: Path, config: ToySDXLConfig) -> Path:
    from diffusers import AutoencoderKL, StableDiffusionXLPipeline

    from .tiny_models import build_sdxl

    staging = work / "random"
    build_sdxl(staging)  # the layout, the frozen random text encoders, the tokenizers and the scheduler
    pipe = StableDiffusionXLPipeline.from_pretrained(staging)
    pixels, weights, captions = source_batch(config)
    vae = AutoencoderKL(  # four levels (8x down, as SDXL's), narrow enough to train in minutes
        block_out_channels=(16, 16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=config.image_size,
        force_upcast=True,
    )
    train_vae(vae, pixels, weights, config)
    with torch.no_grad():
        latents = torch.cat([vae.encode(chunk).latent_dist.mode() for chunk in pixels.split(256)])
    vae.register_to_config(scaling_factor=float(1 / latents.std()))  # unit-variance latents, as SDXL's factor gives
    pipe.register_modules(vae=vae)
    train_unet(pipe, latents * vae.config.scaling_factor, captions, config)
    pipe.save_pretrained(work / "trained", safe_serialization=True)
    (work / "trained").rename(out_dir)
    return out_dir
