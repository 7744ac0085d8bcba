"""Stage 2b: fine-tune SDXL with LoRA on the captioned target images (paper §III-B, §IV-A).

The paper adds weights "in the decoder part" while the pre-trained weights stay frozen: LoRA (peft) on the
attention projections of the UNet's up blocks (`--lora_scope up_blocks`), text encoders frozen (the candidate it
chose; `--train_text_encoder` gives the other). MSE on the scheduler's target, Adam at 1e-4 with a polynomial
schedule, 100 epochs of which the first 20 warm up. Output: `pytorch_lora_weights.safetensors` in diffusers'
format, reloaded with stock `StableDiffusionXLPipeline.load_lora_weights` to render a validation grid, and a card.

    accelerate launch -m vehicle_diff.training.finetune_lora --train_data_dir out/captions --output_dir out/lora
    vehicle-diff finetune --preset tiny --train_data_dir out/captions --output_dir out/lora
"""

from __future__ import annotations

import json
import math
import random
import re
import resource
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from vehicle_diff.config import check_ranges, parse_config, save_config
from vehicle_diff.errors import UserInputError

UNET_ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_ATTENTION = ("q_proj", "k_proj", "v_proj", "out_proj")
LORA_FILE = "pytorch_lora_weights.safetensors"


def lora_target_modules(scope: str) -> str | list[str]:
    """peft `target_modules` for a scope: `up_blocks` (the decoder side), `all` (every UNet attention
    projection) or a regular expression matched against full module names."""
    projections = "|".join(re.escape(name) for name in UNET_ATTENTION)
    if scope == "up_blocks":
        return rf".*up_blocks\..*\.({projections})"
    if scope == "all":
        return list(UNET_ATTENTION)
    try:
        re.compile(scope)
    except re.error as error:
        raise UserInputError(
            f"--lora_scope {scope!r}: not up_blocks, all, or a valid regular expression ({error})"
        ) from None
    return scope


def warmup_steps(*, warmup_epochs: float, steps_per_epoch: int, explicit_steps: int | None) -> int:
    """The paper counts warm-up in epochs (20 of 100); an explicit step count wins."""
    return explicit_steps if explicit_steps is not None else round(warmup_epochs * steps_per_epoch)


def training_plan(
    *,
    num_images: int,
    train_batch_size: int,
    num_processes: int,
    gradient_accumulation_steps: int,
    num_train_epochs: int,
    max_train_steps: int | None,
    lr_warmup_epochs: float,
    lr_warmup_steps: int | None,
) -> dict:
    """Steps per epoch, total and warm-up steps, as the loop below runs them (a pure function, for the dry run)."""
    batches = math.ceil(num_images / train_batch_size)
    steps_per_epoch = math.ceil(math.ceil(batches / num_processes) / gradient_accumulation_steps)
    total = max_train_steps or num_train_epochs * steps_per_epoch
    warmup = warmup_steps(
        warmup_epochs=lr_warmup_epochs, steps_per_epoch=steps_per_epoch, explicit_steps=lr_warmup_steps
    )
    return {
        "num_images": num_images,
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total,
        "epochs": math.ceil(total / steps_per_epoch),
        "warmup_steps": max(0, min(warmup, total - 1)),
    }


def augment(image, *, resolution: int, center_crop: bool, random_flip: bool, rng: random.Random):
    """Resize the shorter side to `resolution`, crop a square (random or central), maybe flip. Returns the
    pixels in [-1, 1] and SDXL's micro-conditioning: original (h, w) and the crop's (top, left)."""
    import torch
    from torchvision.transforms import functional as F

    original_size = (image.height, image.width)
    image = F.resize(image, resolution, interpolation=F.InterpolationMode.BILINEAR)
    if center_crop:
        top, left = (image.height - resolution) // 2, (image.width - resolution) // 2
    else:
        top, left = rng.randint(0, image.height - resolution), rng.randint(0, image.width - resolution)
    image = F.crop(image, top, left, resolution, resolution)
    if random_flip and rng.random() < 0.5:
        image = F.hflip(image)
    pixels = F.normalize(F.to_tensor(image), [0.5], [0.5])
    return pixels, torch.tensor([*original_size, top, left, resolution, resolution])


class CaptionedImages:
    """Map-style dataset over an imagefolder; augmentation is drawn from (seed, epoch, index) alone, so it is
    the same on any number of processes and after a resume."""

    def __init__(
        self,
        hf_dataset,
        *,
        image_column: str,
        caption_column: str,
        resolution: int,
        center_crop: bool,
        random_flip: bool,
        seed: int,
    ):
        self.data, self.image_column, self.caption_column = hf_dataset, image_column, caption_column
        self.options = {"resolution": resolution, "center_crop": center_crop, "random_flip": random_flip}
        self.seed, self.epoch = seed, 0
        self.indices_only = False  # set once the model inputs are cached: no image is decoded then

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index: int) -> dict:
        if self.indices_only:
            return {"index": index}
        row = self.data[index]
        rng = random.Random(f"{self.seed}/{self.epoch}/{index}")
        pixels, time_ids = augment(row[self.image_column].convert("RGB"), rng=rng, **self.options)
        return {"pixel_values": pixels, "time_ids": time_ids, "caption": row[self.caption_column], "index": index}


def posterior_sample(vae, pixels, indices: list[int], *, seed: int, epoch: int):
    """Scaled latents drawn from the VAE's posterior, each image's noise from (seed, epoch, index) alone: a run
    with cached inputs (encoded once, at epoch 0) and one without train on the same latents and leave the global
    RNG, which draws the training noise and timesteps, in the same state."""
    import torch

    posterior = vae.encode(pixels).latent_dist
    noise = torch.stack(
        [
            torch.randn(
                posterior.mean.shape[1:],
                generator=torch.Generator().manual_seed(
                    random.Random(f"latent/{seed}/{epoch}/{index}").getrandbits(63)
                ),
                dtype=torch.float32,
            )
            for index in indices
        ]
    ).to(posterior.mean.device, posterior.mean.dtype)
    return (posterior.mean + posterior.std * noise) * vae.config.scaling_factor


def collate(examples: list[dict]) -> dict:
    import torch

    batch = {"indices": [e["index"] for e in examples]}
    if "pixel_values" in examples[0]:
        batch["pixel_values"] = torch.stack([e["pixel_values"] for e in examples])
        batch["time_ids"] = torch.stack([e["time_ids"] for e in examples])
        batch["captions"] = [e["caption"] for e in examples]
    return batch


def dropped_captions(indices: list[int], *, epoch: int, seed: int, share: float) -> list[bool]:
    """Which images of a batch train the unconditional branch this epoch: a pure function of (seed, epoch, image),
    so a resumed run drops the same captions as an uninterrupted one."""
    return [share > 0 and random.Random(f"{seed}/{epoch}/{index}").random() < share for index in indices]


def encode_prompt(text_encoders, tokenizers, captions: list[str], device):
    """SDXL's conditioning: both encoders' penultimate hidden states, concatenated, and encoder 2's pooled,
    projected embedding."""
    import torch

    hidden_states = []
    for tokenizer, encoder in zip(tokenizers, text_encoders, strict=True):
        ids = tokenizer(
            captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids
        output = encoder(ids.to(device), output_hidden_states=True)
        pooled = output[0]
        hidden_states.append(output.hidden_states[-2])
    return torch.cat(hidden_states, dim=-1), pooled


def read_training_set(config: FinetuneConfig):
    """The imagefolder, checked before any model is loaded."""
    import datasets

    if not Path(config.train_data_dir).is_dir():
        raise UserInputError(
            f"--train_data_dir {config.train_data_dir}: not a folder; run `vehicle-diff caption` first"
        )
    try:
        data = datasets.load_dataset("imagefolder", data_dir=config.train_data_dir, split="train")
    except (FileNotFoundError, ValueError, datasets.exceptions.DatasetGenerationError) as error:
        raise UserInputError(
            f"--train_data_dir {config.train_data_dir}: not an imagefolder with images ({error})"
        ) from error
    missing = [c for c in (config.image_column, config.caption_column) if c not in data.column_names]
    if missing:
        raise UserInputError(
            f"--train_data_dir {config.train_data_dir}: missing column(s) {missing} (has "
            f"{data.column_names}); captions come from metadata.jsonl's `text`"
        )
    empty = [i for i, text in enumerate(data[config.caption_column]) if not text or not str(text).strip()]
    if len(data) == 0 or empty:
        raise UserInputError(
            f"--train_data_dir {config.train_data_dir}: {len(data)} images, {len(empty)} without a "
            "caption; every image needs a non-empty caption"
        )
    return data


@dataclass
class FinetuneConfig:
    """Fine-tune SDXL with LoRA on captioned target images (an accelerate script)."""

    output_dir: str = field(
        default="vehicle-diff-output/lora", metadata={"help": "LoRA, checkpoints, validation grid, card"}
    )
    preset: str = field(default="paper", metadata={"help": "paper, toy, tiny, or a YAML file"})
    train_data_dir: str = field(default="vehicle-diff-output/captions", metadata={"help": "imagefolder from `caption`"})
    image_column: str = "image"
    caption_column: str = "text"
    pretrained_model_name_or_path: str = "stabilityai/stable-diffusion-xl-base-1.0"
    revision: str | None = None
    pretrained_vae_model_name_or_path: str | None = field(default=None, metadata={"help": "e.g. an fp16-safe SDXL VAE"})
    lora_scope: str = field(default="up_blocks", metadata={"help": "up_blocks (paper: decoder side), all, or a regex"})
    rank: int = 4
    lora_alpha: int = 4
    train_text_encoder: bool = field(default=False, metadata={"help": "also LoRA on both text encoders"})
    caption_dropout: float = field(
        default=0.0,
        metadata={"help": "share of images trained with zeroed text conditioning, guidance's unconditional branch"},
    )
    resolution: int = 1024
    center_crop: bool = False
    random_flip: bool = True
    train_batch_size: int = 1
    gradient_accumulation_steps: int = 1
    num_train_epochs: int = 100
    max_train_steps: int | None = field(default=None, metadata={"help": "overrides --num_train_epochs"})
    learning_rate: float = 1e-4
    optimizer: str = field(default="adam", metadata={"help": "adam (paper) or adamw"})
    adam_weight_decay: float = field(default=0.0, metadata={"help": "AdamW's decoupled decay (1e-2 is common)"})
    lr_scheduler: str = field(default="polynomial", metadata={"help": "a diffusers schedule name"})
    lr_power: float = field(default=1.0, metadata={"help": "the polynomial schedule's power (1 = linear decay)"})
    lr_warmup_epochs: float = field(default=20, metadata={"help": "warm-up, in epochs (paper: 20 of 100)"})
    lr_warmup_steps: int | None = field(default=None, metadata={"help": "warm-up in optimizer steps; overrides epochs"})
    max_grad_norm: float = 1.0
    prediction_type: str | None = field(
        default=None, metadata={"help": "epsilon or v_prediction; default: the scheduler's"}
    )
    mixed_precision: str = field(default="no", metadata={"help": "no, fp16 or bf16 (the VAE stays fp32)"})
    gradient_checkpointing: bool = False
    cache_inputs: bool = field(
        default=False, metadata={"help": "encode latents (+ frozen text) once; augmentation fixed"}
    )
    checkpointing_steps: int = 500
    checkpoints_total_limit: int = 3
    resume_from_checkpoint: str = field(
        default="latest",
        metadata={"help": "latest (continue this run), checkpoint-STEP, a checkpoint folder, or none (start afresh)"},
    )
    seed: int = 0
    dataloader_num_workers: int | None = field(
        default=None, metadata={"help": "loader worker processes (default: one a spare CPU core, at most 8)"}
    )
    validation_prompts: list[str] = field(
        default_factory=lambda: [
            "a red 2012 Toyota Camry sedan driving down the road.",
            "a white 2018 Ford F-150 pickup truck driving down the road.",
            "a black 2015 BMW X5 SUV driving down the road.",
            "a blue 2010 Honda Odyssey van driving down the road.",
        ]
    )
    validation_seeds: int = field(default=2, metadata={"help": "seeds per validation prompt"})
    validation_inference_steps: int = 30
    overwrite: bool = field(default=False, metadata={"help": "replace this stage's earlier outputs in --output_dir"})
    dry_run: bool = field(default=False, metadata={"help": "print and write plan.json; load no model"})

    def __post_init__(self):
        check_ranges(self, non_negative=("seed", "dataloader_num_workers"))
        if self.resolution <= 0 or self.resolution % 8:
            raise UserInputError(f"--resolution must be a positive multiple of 8 (got {self.resolution})")
        for name in (
            "rank",
            "lora_alpha",
            "train_batch_size",
            "gradient_accumulation_steps",
            "num_train_epochs",
            "checkpointing_steps",
            "checkpoints_total_limit",
        ):
            if getattr(self, name) <= 0:
                raise UserInputError(f"--{name} must be positive (got {getattr(self, name)})")
        if not self.learning_rate > 0 or self.max_grad_norm <= 0 or self.lr_power <= 0:
            raise UserInputError("--learning_rate, --max_grad_norm and --lr_power must be positive")
        if self.lr_warmup_epochs < 0 or (self.lr_warmup_steps is not None and self.lr_warmup_steps < 0):
            raise UserInputError("--lr_warmup_epochs and --lr_warmup_steps must be >= 0")
        if not 0 <= self.caption_dropout < 1:
            raise UserInputError(f"--caption_dropout must be in [0, 1) (got {self.caption_dropout})")
        if self.adam_weight_decay < 0 or self.validation_seeds < 0 or self.validation_inference_steps <= 0:
            raise UserInputError(
                "--adam_weight_decay and --validation_seeds must be >= 0, --validation_inference_steps > 0"
            )
        if self.max_train_steps is not None and self.max_train_steps <= 0:
            raise UserInputError(f"--max_train_steps must be positive (got {self.max_train_steps})")
        if self.optimizer not in ("adam", "adamw"):
            raise UserInputError(f"--optimizer {self.optimizer!r}: use adam or adamw")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise UserInputError(f"--mixed_precision {self.mixed_precision!r}: use no, fp16 or bf16")
        if self.prediction_type not in (None, "epsilon", "v_prediction"):
            raise UserInputError(f"--prediction_type {self.prediction_type!r}: use epsilon or v_prediction")
        lora_target_modules(self.lora_scope)


def job_components(config: FinetuneConfig) -> dict:
    """The LoRA depends on its settings, the captioned images' content and the base model's revision."""
    from vehicle_diff.jobs import folder_digest, output_settings
    from vehicle_diff.models import resolved_revision

    return {
        "settings": output_settings(
            config, ignore=("train_data_dir", "checkpointing_steps", "checkpoints_total_limit")
        ),
        "training_data": folder_digest(Path(config.train_data_dir)),
        "base_model_revision": resolved_revision(
            config.pretrained_model_name_or_path, config.revision, "--pretrained_model_name_or_path"
        ),
    }


def provenance(config: FinetuneConfig, components: dict) -> dict:
    """The exact models behind the LoRA, saved with its config: the base model at the revision the job resolved
    (a Hub commit, or sha256 of a local model's content) and the captioner of its training captions."""
    from vehicle_diff.cards import recorded_revisions

    return {
        "base_model": {"id": config.pretrained_model_name_or_path, "revision": components["base_model_revision"]},
        "caption_model": {
            "id": read_caption_model(config.train_data_dir),
            "revision": recorded_revisions(Path(config.train_data_dir)).get("caption_model_revision"),
        },
    }


def pinned(config: FinetuneConfig, components: dict) -> FinetuneConfig:
    """The config as it ran: an unset `--revision` of a Hub base model becomes the commit the job resolved, so the
    saved (and published) config reproduces these weights and never says `revision: null`."""
    from vehicle_diff.models import COMMIT_SHA

    commit = components["base_model_revision"]
    return replace(config, revision=commit) if config.revision is None and COMMIT_SHA.fullmatch(commit) else config


def read_caption_model(train_data_dir: str) -> str | None:
    path = Path(train_data_dir) / "captions.json"
    return json.loads(path.read_text()).get("caption_model") if path.is_file() else None


def count_training_images(train_data_dir: str) -> int:
    """The captioned images, read from the imagefolder's metadata alone (no image decoded)."""
    files = list(Path(train_data_dir).rglob("metadata.jsonl"))
    if not files:
        raise UserInputError(f"--train_data_dir {train_data_dir}: no metadata.jsonl; run `vehicle-diff caption` first")
    return sum(1 for file in files for line in file.read_text().splitlines() if line.strip())


def dry_run(config: FinetuneConfig) -> Path:
    """The training plan at full scale without loading a model: steps, warm-up, checkpoints and their size."""
    from vehicle_diff.jobs import write_plan

    plan = training_plan(
        num_images=count_training_images(config.train_data_dir),
        train_batch_size=config.train_batch_size,
        num_processes=1,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        num_train_epochs=config.num_train_epochs,
        max_train_steps=config.max_train_steps,
        lr_warmup_epochs=config.lr_warmup_epochs,
        lr_warmup_steps=config.lr_warmup_steps,
    )
    plan = {
        "stage": "finetune",
        **plan,
        "processes": 1,
        "checkpoints_written": plan["total_steps"] // config.checkpointing_steps,
        "checkpoints_kept": min(config.checkpoints_total_limit, plan["total_steps"] // config.checkpointing_steps),
    }
    lora_parameters = count_lora_parameters(config)
    if lora_parameters is not None:
        # fp32 adapters in the LoRA file; a checkpoint adds Adam's two moments and small states
        plan.update(
            lora_parameters=lora_parameters,
            lora_file_mb=round(lora_parameters * 4 / 1e6, 2),
            checkpoint_mb=round(lora_parameters * 4 * 3 / 1e6, 2),
        )
    return write_plan(config.output_dir, plan)


def count_lora_parameters(config: FinetuneConfig) -> int | None:
    """LoRA parameters of the UNet, counted on the meta device from its config (None when the config is neither
    available offline nor SDXL base 1.0's, which the package knows)."""
    import torch
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig, inject_adapter_in_model

    from vehicle_diff.models import SDXL_BASE, SDXL_UNET, resolve_model

    try:
        unet_config = UNet2DConditionModel.load_config(
            resolve_model(config.pretrained_model_name_or_path), subfolder="unet", revision=config.revision
        )
    except (OSError, ValueError):
        if config.pretrained_model_name_or_path != SDXL_BASE:
            return None
        unet_config = SDXL_UNET  # not downloaded here: its published config
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config)
    inject_adapter_in_model(
        LoraConfig(r=config.rank, lora_alpha=config.lora_alpha, target_modules=lora_target_modules(config.lora_scope)),
        unet,
    )
    return sum(p.numel() for name, p in unet.named_parameters() if "lora_" in name)


def finetune(config: FinetuneConfig) -> Path:
    """The training script, top-down: accelerator, frozen models, adapters, data, optimizer, loop, save."""
    if config.dry_run:
        return dry_run(config)
    import torch
    import torch.nn.functional as F
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, set_seed
    from diffusers import DDPMScheduler, StableDiffusionXLPipeline
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import cast_training_params
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict
    from tqdm.auto import tqdm
    from vehicle_diff.training.checkpointing import (
        adapter_checkpoint_hooks,
        checkpoint_to_resume,
        open_training_output,
        resume,
        save_checkpoint,
    )

    from vehicle_diff.models import load_sdxl_pipeline, torch_dtype

    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),  # order from (seed, epoch) alone
    )
    data = read_training_set(config)
    job = open_training_output(
        config.output_dir,
        "finetune",
        job_components(config),
        overwrite=config.overwrite,
        accelerator=accelerator,
        owned=[
            LORA_FILE,
            "pytorch_lora_weights_kohya.safetensors",
            "README.md",
            "card_context.json",
            "validation*.png",
            "training_stats.json",
            "training_curves.png",
            "config.yaml",
            "plan.json",
        ],
    )
    out_dir = job.out_dir
    resume_point = checkpoint_to_resume(job, config.resume_from_checkpoint)  # checked before any model loads
    set_seed(config.seed)

    # frozen models: the base pipeline's parts, loaded with the stock loader
    base = load_sdxl_pipeline(config.pretrained_model_name_or_path, revision=config.revision)
    if config.pretrained_vae_model_name_or_path:
        from diffusers import AutoencoderKL

        base.vae = AutoencoderKL.from_pretrained(config.pretrained_vae_model_name_or_path)
    unet, vae = base.unet, base.vae
    text_encoders, tokenizers = [base.text_encoder, base.text_encoder_2], [base.tokenizer, base.tokenizer_2]
    noise_scheduler = DDPMScheduler.from_config(base.scheduler.config)
    if config.prediction_type:
        noise_scheduler.register_to_config(prediction_type=config.prediction_type)
    weight_dtype = torch_dtype(config.mixed_precision)
    for model in (unet, vae, *text_encoders):
        model.requires_grad_(False)
    unet.to(accelerator.device, dtype=weight_dtype)
    # SDXL's own VAE overflows in fp16 (NaN / black images): keep it in fp32 unless an fp16-safe one is given
    vae.to(accelerator.device, dtype=weight_dtype if config.pretrained_vae_model_name_or_path else torch.float32)
    for encoder in text_encoders:
        encoder.to(accelerator.device, dtype=weight_dtype)

    # adapters
    target_modules = lora_target_modules(config.lora_scope)
    unet.add_adapter(
        LoraConfig(
            r=config.rank, lora_alpha=config.lora_alpha, init_lora_weights="gaussian", target_modules=target_modules
        )
    )
    trained = [unet]
    if config.train_text_encoder:
        for encoder in text_encoders:  # peft directly: transformers' add_adapter wants a newer peft than PyPI has
            inject_adapter_in_model(
                LoraConfig(
                    r=config.rank,
                    lora_alpha=config.lora_alpha,
                    init_lora_weights="gaussian",
                    target_modules=list(TEXT_ATTENTION),
                ),
                encoder,
            )
        trained += text_encoders
    cast_training_params(trained, dtype=torch.float32)  # LoRA weights train in fp32 under mixed precision
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        for encoder in trained[1:]:
            encoder.gradient_checkpointing_enable()
    parameters = [p for model in trained for p in model.parameters() if p.requires_grad]
    if not parameters:
        raise UserInputError(f"--lora_scope {config.lora_scope!r} matched no module of the UNet")

    # data
    dataset = CaptionedImages(
        data,
        image_column=config.image_column,
        caption_column=config.caption_column,
        resolution=config.resolution,
        center_crop=config.center_crop,
        random_flip=config.random_flip,
        seed=config.seed,
    )
    from vehicle_diff.loading import default_num_workers

    # Workers decode and augment while the UNet trains (none once the inputs are cached: nothing is left to
    # decode). They are not kept across epochs, since each epoch's augmentation is read from `dataset.epoch`.
    workers = config.dataloader_num_workers
    workers = (
        0 if config.cache_inputs else default_num_workers(accelerator.num_processes) if workers is None else workers
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=config.train_batch_size,
        shuffle=True,
        collate_fn=collate,
        num_workers=workers,
        pin_memory=accelerator.device.type == "cuda",
        generator=torch.Generator().manual_seed(config.seed),
    )

    def model_inputs(batch: dict):
        """Latents, micro-conditioning and text conditioning of a batch (from the cache when there is one)."""
        if cache:
            entries = [cache[i] for i in batch["indices"]]
            return tuple(torch.cat([entry[k] for entry in entries]) for k in range(4))
        with torch.no_grad():
            pixels = batch["pixel_values"].to(vae.device, vae.dtype)
            latents = posterior_sample(vae, pixels, batch["indices"], seed=config.seed, epoch=dataset.epoch)
        with torch.set_grad_enabled(config.train_text_encoder):
            prompt_embeds, pooled = encode_prompt(text_encoders, tokenizers, batch["captions"], accelerator.device)
        return latents, batch["time_ids"].to(accelerator.device), prompt_embeds, pooled

    cache = {}
    if config.cache_inputs:  # encode every image once, with the augmentation of epoch 0
        if config.train_text_encoder:
            raise UserInputError("--cache_inputs needs frozen text encoders (drop --train_text_encoder)")
        indices = tqdm(range(len(dataset)), desc="caching inputs", disable=not accelerator.is_local_main_process)
        cache = {index: model_inputs(collate([dataset[index]])) for index in indices}
        dataset.indices_only = True

    # optimizer and schedule
    optimizer_cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    optimizer = optimizer_cls(parameters, lr=config.learning_rate, weight_decay=config.adam_weight_decay)
    plan = training_plan(
        num_images=len(dataset),
        train_batch_size=config.train_batch_size,
        num_processes=accelerator.num_processes,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        num_train_epochs=config.num_train_epochs,
        max_train_steps=config.max_train_steps,
        lr_warmup_epochs=config.lr_warmup_epochs,
        lr_warmup_steps=config.lr_warmup_steps,
    )
    steps_per_epoch, max_train_steps, num_epochs, warmup = (
        plan[k] for k in ("steps_per_epoch", "total_steps", "epochs", "warmup_steps")
    )
    lr_scheduler = get_scheduler(
        config.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=warmup * accelerator.num_processes,
        num_training_steps=max_train_steps * accelerator.num_processes,
        power=config.lr_power,
    )

    prepared = accelerator.prepare(*trained, optimizer, loader, lr_scheduler)
    trained, (optimizer, loader, lr_scheduler) = list(prepared[: len(trained)]), prepared[len(trained) :]
    unet = trained[0]
    if config.train_text_encoder:
        text_encoders = trained[1:]
    adapter_checkpoint_hooks(accelerator, trained)
    step, progress = resume(accelerator, resume_point)

    if accelerator.is_main_process:
        save_config(
            pinned(config, job.components),
            out_dir / "config.yaml",
            stage="finetune",
            provenance=provenance(config, job.components),
        )
    # the loss curve and training time of the steps before the checkpoint continue, not restart
    history, seconds_before = progress.get("history", []), progress.get("seconds", 0.0)
    resumed_from = progress.get("resumed_from", [])
    bar = tqdm(
        total=max_train_steps, initial=step, desc="finetune", unit="step", disable=not accelerator.is_local_main_process
    )
    first_epoch, started = step // steps_per_epoch, time.perf_counter()
    # a checkpoint of the last step has nothing left to train, though its epoch may look unfinished
    end_epoch = num_epochs if step < max_train_steps else first_epoch
    for epoch in range(first_epoch, end_epoch):
        dataset.epoch = epoch
        loader.set_epoch(epoch)
        skip = (step - epoch * steps_per_epoch) * config.gradient_accumulation_steps if epoch == first_epoch else 0
        for batch in accelerator.skip_first_batches(loader, skip) if skip else loader:
            with accelerator.accumulate(*trained):
                latents, time_ids, prompt_embeds, pooled = model_inputs(batch)
                dropped = dropped_captions(
                    batch["indices"], epoch=epoch, seed=config.seed, share=config.caption_dropout
                )
                if any(dropped):  # zeroed as SDXL's pipeline zeroes an empty negative prompt
                    keep = ~torch.tensor(dropped, device=prompt_embeds.device)
                    prompt_embeds, pooled = prompt_embeds * keep[:, None, None], pooled * keep[:, None]
                latents = latents.to(weight_dtype)
                noise = torch.randn_like(latents)
                timesteps = torch.randint(
                    0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), device=latents.device
                )
                noisy = noise_scheduler.add_noise(latents, noise, timesteps)
                conditioning = {"text_embeds": pooled.to(weight_dtype), "time_ids": time_ids.to(weight_dtype)}
                prediction = unet(
                    noisy, timesteps, prompt_embeds.to(weight_dtype), added_cond_kwargs=conditioning
                ).sample
                if noise_scheduler.config.prediction_type == "epsilon":
                    target = noise
                else:
                    target = noise_scheduler.get_velocity(latents, noise, timesteps)
                loss = F.mse_loss(prediction.float(), target.float())
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(parameters, config.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            if accelerator.sync_gradients:
                step += 1
                bar.update(1)
                learning_rate = lr_scheduler.get_last_lr()[0]
                bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{learning_rate:.2e}")
                history.append({"step": step, "loss": loss.item(), "learning_rate": learning_rate})
                if step % config.checkpointing_steps == 0:
                    seconds = seconds_before + time.perf_counter() - started
                    save_checkpoint(
                        accelerator,
                        job,
                        step,
                        config.checkpoints_total_limit,
                        {"history": history, "seconds": seconds, "resumed_from": resumed_from},
                    )
                if step >= max_train_steps:
                    break
        if step >= max_train_steps:
            break
    bar.close()
    seconds = seconds_before + time.perf_counter() - started
    accelerator.wait_for_everyone()

    if accelerator.is_main_process:
        layers, metadata = {}, {}
        names = ("unet", "text_encoder", "text_encoder_2")[: len(trained)]
        for name, model in zip(names, trained, strict=True):
            model = accelerator.unwrap_model(model)
            layers[f"{name}_lora_layers"] = convert_state_dict_to_diffusers(get_peft_model_state_dict(model))
            # the adapter's config travels in the file's header, so a stock reload uses the trained alpha
            metadata[f"{name}_lora_adapter_metadata"] = model.peft_config["default"].to_dict()
        from vehicle_diff.training.lora_files import KOHYA_LORA_FILE, keep_one_metadata_entry, save_kohya_lora

        StableDiffusionXLPipeline.save_lora_weights(out_dir, safe_serialization=True, **layers, **metadata)
        keep_one_metadata_entry(out_dir / LORA_FILE)  # the same LoRA, the same bytes
        images = step * config.train_batch_size * config.gradient_accumulation_steps * accelerator.num_processes
        stats = {
            "steps": step,
            "seconds": round(seconds, 3),
            "images_per_second": round(images / max(seconds, 1e-9), 3),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "peak_cuda_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3) if torch.cuda.is_available() else None,
        }
        (out_dir / "training_stats.json").write_text(json.dumps(stats, indent=2))
        from vehicle_diff.training.checkpointing import plot_training_curves

        save_kohya_lora(  # native SDXL kohya: ComfyUI, AUTOMATIC1111, sd-scripts
            out_dir / LORA_FILE,
            out_dir / KOHYA_LORA_FILE,
            unet_config=dict(accelerator.unwrap_model(unet).config),
            resolution=config.resolution,
            prediction_type=noise_scheduler.config.prediction_type,
        )
        plot_training_curves(history, out_dir / "training_curves.png", title=f"finetune: LoRA rank {config.rank}")
        validation = validate(config, out_dir, accelerator.device)
        write_card(
            config,
            out_dir,
            data,
            validation,
            steps=step,
            epochs=num_epochs,
            warmup=warmup,
            target_modules=target_modules,
            num_tensors=sum(len(v) for v in layers.values()),
        )
        job.mark_done({"steps": step, "resumed_from": resumed_from})
        print(
            f"LoRA: {out_dir / LORA_FILE} ({step} steps)\nValidation grid: {out_dir / 'validation.png'}\n"
            f"Card: {out_dir / 'README.md'}"
        )
    accelerator.end_training()
    job.release()
    return out_dir


def main(argv: list[str] | None = None) -> Path:
    return finetune(parse_config(FinetuneConfig, "finetune", argv))


def validate(config: FinetuneConfig, out_dir: Path, device) -> dict:
    """Render the validation prompts with the base model, then reload the saved LoRA into the same stock
    pipeline and render them again (same seeds): side by side, each pair shows what the LoRA changed."""
    import numpy as np
    from vehicle_diff.generation.generate import load_pipeline, render

    from vehicle_diff.contact_sheet import contact_sheet
    from vehicle_diff.io import atomic_path

    pipe = load_pipeline(
        config.pretrained_model_name_or_path,
        revision=config.revision,
        mixed_precision=config.mixed_precision,
        device=device,
    )
    prompts = [p for p in config.validation_prompts for _ in range(config.validation_seeds)]
    seeds = [seed for _ in config.validation_prompts for seed in range(config.validation_seeds)]
    settings = {
        "num_inference_steps": config.validation_inference_steps,
        "guidance_scale": 8.0,
        "height": config.resolution,
        "width": config.resolution,
    }
    base_images = render(pipe, prompts, seeds, **settings) if prompts else []
    pipe.load_lora_weights(str(out_dir), weight_name=LORA_FILE)
    images = render(pipe, prompts, seeds, **settings) if prompts else []
    degenerate = sum(
        1
        for image in images
        if not np.isfinite(np.asarray(image, dtype=np.float32)).all() or np.asarray(image).max() == 0
    )
    tiles, labels = [], []
    for prompt, seed, base, tuned in zip(prompts, seeds, base_images, images, strict=True):
        tiles += [base, tuned]
        labels += [[f"base model, seed {seed}", prompt], [f"with the LoRA, seed {seed}", prompt]]
    if tiles:
        with atomic_path(out_dir / "validation.png") as tmp:
            contact_sheet(
                tiles,
                labels,
                columns=min(len(tiles), 4),
                cell=min(config.resolution * 2, 256),
                title=f"{Path(config.pretrained_model_name_or_path).name}: base model | LoRA, same prompt and seed",
                borders=["#9e9e9e", "#1565c0"] * len(prompts),
            ).save(tmp, format="PNG")
    return {
        "prompts": config.validation_prompts,
        "seeds": list(range(config.validation_seeds)),
        "black_or_nan": degenerate,
    }


def write_card(config: FinetuneConfig, out_dir: Path, data, validation: dict, **facts) -> None:
    """README.md, and the facts it states as card_context.json, from which `publish` renders the card again with
    the repo id it publishes to. No path of this machine goes into either the card or its metadata."""
    import yaml
    from vehicle_diff.cards import is_hub_id, model_ref, recorded_revisions, render_lora_card, save_context
    from vehicle_diff.training.lora_files import KOHYA_LORA_FILE

    from vehicle_diff import __version__

    def read(path: Path, loader):
        return loader(path.read_text()) if path.is_file() else {}

    captions = Path(config.train_data_dir)
    caption_info = read(captions / "captions.json", json.loads)
    caption_config = (read(captions / "config.yaml", yaml.safe_load) or {}).get("config", {})
    source = caption_config.get("input_dataset") or caption_info.get("source")
    widget = validation.get("images") or (
        [{"prompt": validation["prompts"][0], "file": "validation.png"}] if validation.get("prompts") else []
    )
    local = {
        "output_dir",
        "train_data_dir",
        "preset",
        "pretrained_model_name_or_path",
        "resume_from_checkpoint",
        "pretrained_vae_model_name_or_path",
    }
    context = {
        "base_model": model_ref(config.pretrained_model_name_or_path),
        # what the job resolved when training started (a Hub commit, or sha256 of a local model), not the flag
        "base_revision": recorded_revisions(out_dir).get("base_model_revision") or config.revision,
        "vae": model_ref(vae) if (vae := config.pretrained_vae_model_name_or_path) else None,
        "config": {key: value for key, value in asdict(config).items() if key not in local},
        "caption_model": model_ref(caption_info.get("caption_model")),
        "caption_model_revision": recorded_revisions(captions).get("caption_model_revision"),
        "caption_source": model_ref(source),
        "datasets": [source] if caption_config.get("input_dataset") and is_hub_id(source) else [],
        "instance_prompt": (caption_config.get("prompt_prefix") or "").strip() or None,
        "num_images": len(data),
        "total_images": caption_info.get("total_images"),
        "validation": validation,
        "widget": widget,
        "example_prompt": (config.validation_prompts or ["a red 2012 Toyota Camry sedan driving down the road."])[0],
        "lora_file": LORA_FILE,
        "kohya_file": KOHYA_LORA_FILE if (out_dir / KOHYA_LORA_FILE).exists() else None,
        "vehicle_diff_version": __version__,
        **facts,
    }
    save_context(out_dir, context)
    render_lora_card(context).save(out_dir / "README.md")


if __name__ == "__main__":
    from vehicle_diff.cli import run_main

    run_main(main)
