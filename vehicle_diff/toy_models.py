"""The `toy` zoo: the paper's text-to-image model, detector and CLIP at toy size, trained on the toy world's source
scenes (never its target cameras), one model at a time (`build_toy_zoo`).

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

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

# RGB -> (luma, blue-difference, red-difference) (BT.601), chroma rows weighted up (see `reconstruction_loss`).
YCBCR = torch.tensor([[0.299, 0.587, 0.114], [-0.169, -0.331, 0.5], [0.5, -0.419, -0.081]])


@dataclass
class ToyZooConfig:
    """Every setting of the toy zoo's training; the built zoo records them, and a changed one builds a new zoo."""

    scenes: int = 4096  # source scenes rendered once, in memory (64 px: 50 MB)
    close_ups: float = 0.3  # share of source scenes framed around the vehicle (see `framed_scene`)
    image_size: int = 64
    seed: int = 0
    vae_steps: int = 600
    vae_batch_size: int = 32
    vae_learning_rate: float = 3e-3
    chroma_weight: float = 3.0
    vehicle_weight: float = 4.0  # loss weight of the pixels inside the vehicle's box
    unet_steps: int = 1500
    unet_batch_size: int = 64
    unet_learning_rate: float = 1e-3
    caption_dropout: float = 0.1  # trains the unconditional branch classifier-free guidance needs
    detector_scenes: int = 3000
    detector_epochs: int = 12
    clip_scenes: int = 4096
    clip_steps: int = 600
    clip_batch_size: int = 128
    clip_learning_rate: float = 1e-3
    reid_scenes: int = 8192
    reid_steps: int = 600
    reid_batch_size: int = 64
    reid_learning_rate: float = 2e-3
    # the ResNet-50 layout (bottlenecks of expansion 4, one per stage) at a quarter of its widths: 64 to 512 output
    # channels where the tiny zoo's keeps 256 to 2048, a third of the step time at 64 px, where re-ID spends the demo
    reid_backbone_args: dict = field(default_factory=lambda: {"layers": [1, 1, 1, 1], "channels": [16, 32, 64, 128]})


def framed_scene(index: int, *, seed: int, size: int, close_ups: float):
    """Source scene `index` as (image, box, scene); a share `close_ups` of them cropped around the vehicle and scaled
    back to `size`, as generic photographs frame vehicles both ways (and a LoRA on camera crops draws them)."""
    from .toy_world import source_scene, stable_rng

    scene = source_scene(index, seed=seed, size=(size, size))
    image, (x0, y0, x1, y1) = scene.render.image, scene.render.box
    rng = stable_rng("close-up", seed, index)
    if rng.random() < close_ups:
        side = min(size, max(x1 - x0, y1 - y0) * rng.uniform(1.1, 1.5))
        left = min(max(0.0, (x0 + x1) / 2 - side / 2 + rng.uniform(-0.1, 0.1) * side), size - side)
        top = min(max(0.0, (y0 + y1) / 2 - side / 2 + rng.uniform(-0.1, 0.1) * side), size - side)
        scale = size / side
        image = image.crop((left, top, left + side, top + side)).resize((size, size))
        x0, x1 = (max(0.0, (x - left) * scale) for x in (x0, x1))
        y0, y1 = (max(0.0, (y - top) * scale) for y in (y0, y1))
        x1, y1 = min(x1, size), min(y1, size)
    return image, (x0, y0, x1, y1), scene


def source_batch(config: ToyZooConfig):
    """Pixels in [-1, 1] (N, 3, H, W), a per-pixel loss weight (N, 1, H, W) and the captions of the source scenes."""
    size = config.image_size
    framed = [
        framed_scene(index, seed=config.seed, size=size, close_ups=config.close_ups) for index in range(config.scenes)
    ]
    pixels = np.stack([np.asarray(image) for image, _, _ in framed])
    pixels = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1
    boxes = [tuple(round(v) for v in box) for _, box, _ in framed]
    return (
        pixels,
        vehicle_weights(boxes, (size, size), config.vehicle_weight),
        [scene.caption for _, _, scene in framed],
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


def optimize(
    model, parameters: list, step_loss, *, steps, learning_rate, weight_decay, desc, clip_norm=None, after_step=None
):
    """Every toy model's training loop: AdamW under `warmup_cosine`, `model` in train mode while `step_loss()`
    draws a batch and returns its loss. The builders differ only in that loss."""
    from tqdm import tqdm

    optimizer = torch.optim.AdamW(parameters, learning_rate, weight_decay=weight_decay)
    schedule = warmup_cosine(optimizer, steps)
    model.train()
    for _ in tqdm(range(steps), desc=f"toy zoo: {desc}", unit="step"):
        loss = step_loss()
        optimizer.zero_grad()
        loss.backward()
        if clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(parameters, clip_norm)
        optimizer.step()
        schedule.step()
        if after_step is not None:
            after_step()
    model.eval()


def train_vae(vae, pixels, weights, config: ToyZooConfig) -> None:
    generator = torch.Generator().manual_seed(config.seed)

    def step_loss():
        batch = torch.randint(0, len(pixels), (config.vae_batch_size,), generator=generator)
        images = photometric_jitter(pixels[batch], generator).clamp(-1, 1)  # any light and cast, not the source's
        posterior = vae.encode(images).latent_dist
        reconstruction = vae.decode(posterior.mode()).sample
        loss = reconstruction_loss(reconstruction, images, weights[batch], config.chroma_weight)
        return loss + 1e-6 * posterior.kl().mean()

    optimize(
        vae,
        list(vae.parameters()),
        step_loss,
        steps=config.vae_steps,
        learning_rate=config.vae_learning_rate,
        weight_decay=0.0,
        desc="VAE",
    )


def train_unet(pipe, latents, captions: list[str], config: ToyZooConfig) -> None:
    """Epsilon prediction on the scaled latents with SDXL's noise schedule, size micro-conditioning of the
    full image, and zeroed text embeddings for dropped captions (SDXL's pipeline zeroes the negative prompt)."""
    from diffusers import DDPMScheduler

    unique = sorted(set(captions))
    with torch.no_grad():
        prompt_embeds, _, pooled_embeds, _ = pipe.encode_prompt(unique, device="cpu", do_classifier_free_guidance=False)
    position = {caption: index for index, caption in enumerate(unique)}
    caption_index = torch.tensor([position[caption] for caption in captions])
    noise_schedule = DDPMScheduler.from_config(pipe.scheduler.config)
    unet, size = pipe.unet, config.image_size
    time_ids = torch.tensor([[size, size, 0, 0, size, size]], dtype=torch.float32).repeat(config.unet_batch_size, 1)
    generator = torch.Generator().manual_seed(config.seed + 1)

    def step_loss():
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
        return torch.nn.functional.mse_loss(prediction, noise)

    optimize(
        unet,
        list(unet.parameters()),
        step_loss,
        steps=config.unet_steps,
        learning_rate=config.unet_learning_rate,
        weight_decay=1e-2,
        desc="UNet",
        clip_norm=1.0,
    )


def build_toy_sdxl(work: Path, target: Path, config: ToyZooConfig) -> None:
    """Train the VAE, then the UNet on its latents; save the pipeline in diffusers' format at `target`."""
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
    # log-variance -30 (the clamp's floor): sampling the posterior, as fine-tuning does, gives its mean
    with torch.no_grad():
        vae.quant_conv.weight[vae.config.latent_channels :].zero_()
        vae.quant_conv.bias[vae.config.latent_channels :].fill_(-30.0)
    with torch.no_grad():
        latents = torch.cat([vae.encode(chunk).latent_dist.mode() for chunk in pixels.split(256)])
    vae.register_to_config(scaling_factor=float(1 / latents.std()))  # unit-variance latents, as SDXL's factor gives
    pipe.register_modules(vae=vae)
    train_unet(pipe, latents * vae.config.scaling_factor, captions, config)
    pipe.save_pretrained(target, safe_serialization=True)


# -- the detector -------------------------------------------------------------------------------------------------


def write_detector_data(root: Path, config: ToyZooConfig) -> Path:
    """Images and YOLO labels (class cx cy w h, relative) of the source scenes, and the dataset's YAML."""
    import yaml
    from PIL import ImageFilter
    from tqdm import tqdm
    from ultralytics.utils import YAML
    from ultralytics.utils.checks import check_yaml

    from .toy_world import coco_class, stable_rng

    size = config.image_size
    splits = {"train": range(config.detector_scenes), "val": range(10**6, 10**6 + 200)}  # val: unseen scenes
    for split, indices in splits.items():
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for index in tqdm(indices, desc=f"toy zoo: detector {split} scenes", unit="scene"):
            image, (x0, y0, x1, y1), scene = framed_scene(
                index, seed=config.seed, size=size, close_ups=config.close_ups
            )
            label = coco_class(scene.identity["body_style"])
            blur = stable_rng("detector-blur", config.seed, index).uniform(-1.0, 1.5)
            if blur > 0:  # generated images are softer than renders: the toy VAE's 8x latents blur them
                image = image.filter(ImageFilter.GaussianBlur(blur))
            image.save(root / "images" / split / f"{index:07d}.png")
            row = f"{label} {(x0 + x1) / 2 / size:.6f} {(y0 + y1) / 2 / size:.6f} {(x1 - x0) / size:.6f} {(y1 - y0) / size:.6f}"
            (root / "labels" / split / f"{index:07d}.txt").write_text(row + "\n")
    names = YAML.load(check_yaml("coco.yaml"))["names"]  # COCO's 80 names: class 2 is car, 7 truck
    data = root / "data.yaml"
    data.write_text(yaml.safe_dump({"path": str(root), "train": "images/train", "val": "images/val", "names": names}))
    return data


def build_toy_detector(work: Path, target: Path, config: ToyZooConfig) -> None:
    """YOLOv5n-p6 (the paper's detector family) trained by ultralytics on the source scenes, from scratch."""
    import os

    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics import YOLO

    data = write_detector_data(work / "data", config)
    model = YOLO("yolov5n-p6.yaml", verbose=False)
    model.train(
        data=str(data),
        epochs=config.detector_epochs,
        imgsz=config.image_size,
        batch=64,
        device="cpu",
        workers=0,
        seed=config.seed,
        deterministic=True,
        amp=False,
        plots=False,
        project=str(work / "runs"),
        name="detector",
        exist_ok=True,
        optimizer="AdamW",
        lr0=0.003,
        warmup_epochs=1,
        mosaic=0.0,  # one vehicle per scene, as generated images show it
        close_mosaic=0,
        hsv_h=0.0,  # hue is the paint: never change it
        hsv_s=0.3,
        hsv_v=0.3,
        scale=0.3,
        translate=0.1,
        verbose=False,
    )
    shutil.copyfile(work / "runs" / "detector" / "weights" / "last.pt", target)


# -- the CLIP color model -----------------------------------------------------------------------------------------

CLIP_TEXTS = ("a {color} vehicle", "a photo of a {color} {body_style}", "{caption}")


def photometric_jitter(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per-image gain, offset and a mild color cast on normalised pixels: cameras differ in all three, and the
    paint must still be read through them (hue is never rotated)."""
    count = len(pixels)
    gain = 1 + 0.15 * torch.randn(count, 1, 1, 1, generator=generator)
    cast = 0.1 * torch.randn(count, 3, 1, 1, generator=generator)
    offset = 0.2 * torch.randn(count, 1, 1, 1, generator=generator)
    return pixels * gain + cast + offset


def train_clip(model, tokenizer, pixels: torch.Tensor, texts: list[tuple[str, ...]], config: ToyZooConfig) -> None:
    """CLIP's symmetric contrastive loss, where every image of a batch whose text is the same counts as a positive
    (the color texts repeat within a batch by design)."""
    generator = torch.Generator().manual_seed(config.seed + 2)

    def step_loss():
        batch = torch.randint(0, len(pixels), (config.clip_batch_size,), generator=generator)
        which = torch.randint(0, len(CLIP_TEXTS), (len(batch),), generator=generator)
        chosen = [texts[i][w] for i, w in zip(batch.tolist(), which.tolist(), strict=True)]
        images = torch.nn.functional.normalize(model.encode_image(photometric_jitter(pixels[batch], generator)), dim=-1)
        words = torch.nn.functional.normalize(model.encode_text(tokenizer(chosen)), dim=-1)
        logits = model.logit_scale.exp() * images @ words.T
        same = torch.tensor([[a == b for b in chosen] for a in chosen], dtype=torch.float32)
        targets = same / same.sum(1, keepdim=True)
        return (
            torch.nn.functional.cross_entropy(logits, targets) + torch.nn.functional.cross_entropy(logits.T, targets)
        ) / 2

    def clamp_temperature():
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))

    optimize(
        model,
        list(model.parameters()),
        step_loss,
        steps=config.clip_steps,
        learning_rate=config.clip_learning_rate,
        weight_decay=0.1,
        desc="CLIP",
        after_step=clamp_temperature,
    )


def build_toy_clip(work: Path, target: Path, config: ToyZooConfig) -> None:
    """The tiny zoo's CLIP layout, trained contrastively on crops of the source vehicles against their color
    texts ("a {color} vehicle", the filter's prompt), a short description and the full caption."""
    from safetensors.torch import save_file

    from .models import load_open_clip
    from .tiny_models import build_open_clip
    from .toy_world import crop, source_scene

    build_open_clip(target)
    model, preprocess, tokenizer = load_open_clip(str(target))
    scenes = [
        source_scene(index, seed=config.seed + 1, size=(config.image_size,) * 2) for index in range(config.clip_scenes)
    ]
    pixels = torch.stack([preprocess(crop(scene.render)) for scene in scenes])
    texts = [tuple(text.format(caption=scene.caption, **scene.identity) for text in CLIP_TEXTS) for scene in scenes]
    train_clip(model, tokenizer, pixels, texts, config)
    save_file(model.state_dict(), target / "open_clip_model.safetensors")


# -- the re-ID backbone ------------------------------------------------------------------------------------------


def look_attributes() -> dict[str, list]:
    """Every visible attribute of a toy vehicle and its possible values: what the backbone learns to name."""
    from .toy_world import BADGE_SHAPES, BODY_SHAPES, PAINT, RIMS, SPOKES, STRIPES, TINTS

    return {
        "paint": list(PAINT.values()),
        "body_style": list(BODY_SHAPES),
        "spokes": SPOKES,
        "rim": RIMS,
        "stripes": STRIPES,
        "tint": TINTS,
        "round_lights": [False, True],
        "roof_rack": [False, True],
        "badge_shape": list(BADGE_SHAPES),
    }


def attribute_labels(look) -> list[int]:
    return [values.index(getattr(look, name)) for name, values in look_attributes().items()]


def train_attribute_backbone(backbone, pixels, labels, config: ToyZooConfig) -> None:
    """Multi-attribute classification on source crops, with flips and photometric jitter: the toy world's
    ImageNet, so that re-ID starts from features that see paint, wheels, windows and badges."""
    sizes = [len(values) for values in look_attributes().values()]
    head = torch.nn.Linear(backbone.num_features, sum(sizes))
    mean = torch.tensor(backbone.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(backbone.pretrained_cfg["std"]).view(1, 3, 1, 1)
    generator = torch.Generator().manual_seed(config.seed + 3)

    def step_loss():
        batch = torch.randint(0, len(pixels), (config.reid_batch_size,), generator=generator)
        images = photometric_jitter(pixels[batch], generator).clamp(-1, 1)
        flipped = torch.rand(len(batch), generator=generator) < 0.5
        images[flipped] = images[flipped].flip(-1)
        logits = head(backbone(((images + 1) / 2 - mean) / std))
        return sum(
            torch.nn.functional.cross_entropy(part, labels[batch, column])
            for column, part in enumerate(logits.split(sizes, dim=1))
        )

    optimize(
        backbone,
        [*backbone.parameters(), *head.parameters()],
        step_loss,
        steps=config.reid_steps,
        learning_rate=config.reid_learning_rate,
        weight_decay=5e-4,
        desc="re-ID backbone",
    )


def build_toy_reid_backbone(work: Path, target: Path, config: ToyZooConfig) -> None:
    """The toy zoo's re-ID backbone (a narrow ResNet-50 layout, timm's hub format), trained to name the attributes of
    source vehicles in crops the size re-ID sees; target cameras are never shown to it."""
    import timm
    from tqdm import tqdm

    from .toy_world import crop, source_scene, vehicle_look

    model_args = config.reid_backbone_args
    backbone = timm.create_model("resnet50", pretrained=False, num_classes=0, **model_args)
    side = config.image_size
    images, labels = [], []
    for index in tqdm(range(config.reid_scenes), desc="toy zoo: re-ID crops", unit="scene"):
        scene = source_scene(index, seed=config.seed + 3, size=(2 * side, 3 * side // 2))
        images.append(np.asarray(crop(scene.render).resize((side, side))))
        labels.append(attribute_labels(vehicle_look(**scene.identity)))
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
    train_attribute_backbone(backbone, pixels, torch.tensor(labels), config)
    timm.models.save_for_hf(backbone, target, model_args=model_args, safe_serialization=True)


# -- the zoo ------------------------------------------------------------------------------------------------------

TOY_ZOO_VERSION = 2  # 2: the models trained after the detector keep the thread count of the machine
TOY_MODELS = {
    "sdxl": build_toy_sdxl,
    "yolo.pt": build_toy_detector,
    "open_clip": build_toy_clip,
    "timm-resnet": build_toy_reid_backbone,
}
SETTINGS = "settings.json"


def zoo_settings(config: ToyZooConfig) -> dict:
    from .toy_world import WORLD_VERSION

    return {"toy_zoo_version": TOY_ZOO_VERSION, "world_version": WORLD_VERSION, **asdict(config)}


def default_toy_zoo_dir(config: ToyZooConfig) -> Path:
    """The cache folder of the zoo of these settings: other settings, another folder. `VEHICLE_DIFF_TOY_MODELS`
    moves the folder that holds them; it is not the tiny zoo's, so tests on a fresh tiny zoo reuse this one."""
    from .tiny_models import cache_root

    digest = hashlib.sha256(json.dumps(zoo_settings(config), sort_keys=True).encode()).hexdigest()[:10]
    root = Path(os.environ.get("VEHICLE_DIFF_TOY_MODELS") or cache_root())
    return root / f"toy-models-v{TOY_ZOO_VERSION}-{digest}"


def build_in_own_process(build, work: Path, target: Path, config: ToyZooConfig, *, seed: int) -> None:
    """Run one model's builder in a fresh interpreter, so that the weights depend only on the settings and the
    seed: not on what the calling process ran before (ultralytics, for one, leaves torch at cores - 1 threads and
    the environment at OMP_NUM_THREADS=1, and CPU float sums follow the thread count), nor on whether the build
    was resumed. A plain subprocess rather than multiprocessing's spawn, which would re-run a calling script that
    lacks a `__main__` guard."""
    from . import launch_environment

    task = {
        "build": f"{build.__module__}:{build.__qualname__}",
        "work": str(work),
        "target": str(target),
        "config": asdict(config),
        "seed": seed,
        "parent_pid": os.getpid(),
    }
    command = [
        sys.executable,
        "-c",
        "import sys; from vehicle_diff.toy_models import build_entry; build_entry(sys.argv[1])",
    ]
    # as this process was started, not as imports left it (ultralytics sets OMP_NUM_THREADS=1 when unset)
    environment = {**launch_environment(), "PYTHONPATH": os.pathsep.join(filter(None, sys.path))}
    process = subprocess.Popen([*command, json.dumps(task)], env=environment)
    try:
        status = process.wait()
    finally:  # interrupted while waiting: the builder stops too
        if process.poll() is None:
            process.kill()
            process.wait()
    if status:
        raise RuntimeError(f"training the toy zoo's {target.name} failed (exit status {status}); see above")


def build_entry(task_json: str) -> None:
    """The builder's process: dies with its caller, seeds torch (each model depends only on the seed and its
    slot) and builds."""
    from importlib import import_module

    from .jobs import die_with_parent

    task = json.loads(task_json)
    die_with_parent(task["parent_pid"])
    module, _, name = task["build"].partition(":")
    build = getattr(import_module(module), name)
    torch.manual_seed(task["seed"])
    build(Path(task["work"]), Path(task["target"]), ToyZooConfig(**task["config"]))


def build_toy_zoo(out_dir: Path, config: ToyZooConfig) -> Path:
    """Train every toy model into `out_dir`, one at a time; each is renamed into place when complete, so a killed
    build resumes at the model it was training (whose own `NAME.building` folder is started over)."""
    from filelock import FileLock

    from .errors import UserInputError
    from .io import atomic_path
    from .jobs import check_output_path

    out_dir = check_output_path(out_dir)
    settings = zoo_settings(config)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out_dir) + ".lock"):
        if (out_dir / SETTINGS).exists():
            if json.loads((out_dir / SETTINGS).read_text()) != settings:
                raise UserInputError(f"{out_dir} holds a toy zoo of other settings; choose another --output_dir")
        elif out_dir.exists() and any(out_dir.iterdir()):
            raise UserInputError(
                f"--output_dir {out_dir} already holds files that are not a toy zoo; choose a new folder"
            )
        else:
            out_dir.mkdir(exist_ok=True)
            with atomic_path(out_dir / SETTINGS) as tmp:
                tmp.write_text(json.dumps(settings, indent=2, sort_keys=True))
        for slot, (name, build) in enumerate(TOY_MODELS.items()):
            work = out_dir / f"{name}.building"
            shutil.rmtree(work, ignore_errors=True)  # a killed build's own folder, by its own name
            if (out_dir / name).exists():
                continue
            work.mkdir()
            build_in_own_process(build, work, work / name, config, seed=config.seed + slot)
            (work / name).rename(out_dir / name)
            shutil.rmtree(work)
    return out_dir


def ensure_toy_zoo() -> Path:
    """The cached zoo of the default settings, trained on first use (15 to 29 minutes on two cores, by the host)."""
    return build_toy_zoo(default_toy_zoo_dir(ToyZooConfig()), ToyZooConfig())
