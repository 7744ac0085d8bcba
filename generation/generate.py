"""Stage 3b: generate the synthetic images (paper §III-C, §IV-A), resumable and sharded with accelerate.

The plan is the prompt library x `--images_per_identity` K, cut into fixed batches. Image `i` of identity `v`
gets `image_id = "{identity}-{i:04d}"` and a seed derived from the global seed and that id, so any image can be
regenerated from its record alone. Workers (the processes of one `accelerate launch`, or several invocations on
one folder) claim the unfinished batches; a batch is finished when its record shard is whole (see
`vehicle_diff.jobs`), so a killed run resumes where it stopped and a changed input is never mixed in.

    vehicle-diff generate --prompts out/prompts --lora_weights out/lora --output_dir out/generated
    accelerate launch --num_processes 8 -m vehicle_diff.generation.generate --prompts out/prompts --output_dir out/generated
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from vehicle_diff.config import check_ranges, parse_config, save_config
from vehicle_diff.errors import UserInputError
from vehicle_diff.io import atomic_path, sha256_file
from vehicle_diff.jobs import Job, check_output_path, duplicates, output_settings, write_plan
from vehicle_diff.models import PRECISIONS

from .prompts import TEMPLATES, build_prompt

LIBRARY_COLUMNS = ("vehicle_id", "identity", "color", "year", "brand", "model", "body_style", "template_id", "prompt")
IMAGE_FORMATS = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}
ATTRIBUTES = ("color", "year", "brand", "model", "body_style")
SAFE_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# rough bytes per pixel of a 1024 px photo-like image, for the dry run's disk estimate
BYTES_PER_PIXEL = {"png": 1.5, "jpg": 0.35, "webp": 0.25}
QUANTIZATIONS = ("fp8",)
FP8_MIN_CAPABILITY = (8, 9)  # Ada and Hopper have FP8 tensor cores


def image_seed(seed: int, image_id: str) -> int:
    """A 63-bit seed from the global seed and the image id: independent of batching and process count."""
    digest = hashlib.sha256(f"{seed}/{image_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


def view_phrase_for(image_id: str, phrases: list[str]) -> str:
    """An optional viewpoint / scene phrase, picked by the image id (so it is stable and recorded)."""
    if not phrases:
        return ""
    return phrases[int.from_bytes(hashlib.sha256(f"view/{image_id}".encode()).digest()[:4], "big") % len(phrases)]


def image_prompt(prompt: str, view_phrase: str) -> str:
    return f"{prompt.rstrip('. ')}, {view_phrase}." if view_phrase else prompt


def batch_requests(
    library: dict[str, list],
    images_per_identity: int,
    batch_index: int,
    batch_size: int,
    seed: int,
    view_phrases: list[str],
    template_id: str | None = None,
) -> list[dict]:
    """The images of one batch of the plan: attributes, prompt, seed. Pure, so any batch can be rebuilt.
    With `template_id`, prompts are rendered again from the library's attributes with that template."""
    total = len(library["identity"]) * images_per_identity
    requests = []
    for plan_index in range(batch_index * batch_size, min((batch_index + 1) * batch_size, total)):
        row, sample = divmod(plan_index, images_per_identity)
        attributes = {column: library[column][row] for column in LIBRARY_COLUMNS}
        if template_id is not None:
            attributes["template_id"] = template_id
            attributes["prompt"] = build_prompt(TEMPLATES[template_id], **{k: attributes[k] for k in ATTRIBUTES})
        image_id = f"{attributes['identity']}-{sample:04d}"
        view_phrase = view_phrase_for(image_id, view_phrases)
        requests.append(
            {
                **attributes,
                "image_id": image_id,
                "plan_index": plan_index,
                "batch_index": batch_index,
                "view_phrase": view_phrase,
                "prompt": image_prompt(attributes["prompt"], view_phrase),
                "seed": image_seed(seed, image_id),
            }
        )
    return requests


def prompt_library_file(path: str) -> Path:
    """`path` is the prompts stage's folder or its Parquet file."""
    return Path(path) / "prompts.parquet" if Path(path).is_dir() else Path(path)


def read_prompt_library(path: str) -> dict[str, list]:
    """The prompt library as columns."""
    import pyarrow.parquet as pq

    file = prompt_library_file(path)
    if not file.is_file():
        raise UserInputError(f"--prompts {path}: no prompt library there; run `vehicle-diff prompts` first")
    try:
        table = pq.read_table(file)
    except Exception as error:  # pyarrow raises several types for a damaged file
        raise UserInputError(f"--prompts {file}: not a readable Parquet file ({error})") from error
    missing = [column for column in LIBRARY_COLUMNS if column not in table.column_names]
    if missing or table.num_rows == 0:
        raise UserInputError(f"--prompts {file}: not a prompt library (missing columns {missing} or no rows)")
    library = table.select(list(LIBRARY_COLUMNS)).to_pydict()
    repeated = duplicates(library["identity"])
    if repeated:
        raise UserInputError(
            f"--prompts {file}: identity key(s) {repeated[:3]} appear more than once; every "
            "identity needs its own key (rebuild the library with `vehicle-diff prompts`)"
        )
    unsafe = [key for key in library["identity"] if not isinstance(key, str) or not SAFE_KEY.fullmatch(key)]
    if unsafe:
        raise UserInputError(
            f"--prompts {file}: identity key {unsafe[0]!r} is not a safe file name (letters, digits, "
            "'.', '_', '-'; at most 128 characters); rebuild the library with `vehicle-diff prompts`"
        )
    return library


def lora_file(path: str, flag: str = "--lora_weights") -> Path:
    """The LoRA safetensors file of a path that is the file itself or a folder holding one."""
    candidate = Path(path)
    if candidate.is_dir():
        candidate = candidate / "pytorch_lora_weights.safetensors"
    if not candidate.is_file():
        raise UserInputError(f"{flag} {path}: no LoRA file (expected pytorch_lora_weights.safetensors)")
    return candidate


def load_pipeline(model_id: str, *, revision: str | None, mixed_precision: str, device):
    """The base SDXL pipeline on `device` in the requested dtype, without progress bars."""
    from vehicle_diff.models import load_sdxl_pipeline, torch_dtype

    pipe = load_sdxl_pipeline(model_id, revision=revision, torch_dtype=torch_dtype(mixed_precision))
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def attach_lora(pipe, lora: Path, base_model: str) -> None:
    """Load a LoRA file into the pipeline, with a clear error when it does not fit the base model."""
    try:
        pipe.load_lora_weights(str(lora.parent), weight_name=lora.name)
    except (ValueError, RuntimeError, KeyError) as error:
        raise UserInputError(
            f"--lora_weights {lora}: does not fit {base_model} "
            f"({type(error).__name__}: {str(error).splitlines()[0][:300]}); use a LoRA trained on this base model"
        ) from error
    if not pipe.get_list_adapters():
        raise UserInputError(f"--lora_weights {lora}: no layer of {base_model} matched its keys")


def render(
    pipe,
    prompts: list[str],
    seeds: list[int],
    *,
    num_inference_steps: int,
    guidance_scale: float,
    height: int,
    width: int,
    negative_prompt: str | None = None,
    lora_scale: float | None = None,
) -> list:
    """One batched pipeline call; each image has its own generator, so its noise depends on its seed only."""
    import torch

    generators = [torch.Generator(device=pipe.device).manual_seed(seed) for seed in seeds]
    return pipe(
        prompt=prompts,
        negative_prompt=[negative_prompt] * len(prompts) if negative_prompt else None,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        height=height,
        width=width,
        generator=generators,
        cross_attention_kwargs={"scale": lora_scale} if lora_scale is not None else None,
    ).images


@dataclass
class GenerateConfig:
    """Generate the synthetic images of a prompt library with SDXL (+ LoRA)."""

    output_dir: str = field(
        default="vehicle-diff-output/generated", metadata={"help": "images/, records/, records.parquet"}
    )
    preset: str = field(default="paper", metadata={"help": "paper, toy, tiny, or a YAML file"})
    prompts: str = field(
        default="vehicle-diff-output/prompts", metadata={"help": "prompt library folder or Parquet file"}
    )
    pretrained_model_name_or_path: str = "stabilityai/stable-diffusion-xl-base-1.0"
    revision: str | None = None
    lora_weights: str | None = field(
        default=None, metadata={"help": "LoRA file or folder; none = the vanilla base model"}
    )
    lora_scale: float = 1.0
    template_id: str | None = field(
        default=None, metadata={"help": f"render the prompts again with this template ({sorted(TEMPLATES)})"}
    )
    images_per_identity: int = field(default=30, metadata={"help": "K images per identity (paper: ~30)"})
    seed: int = 0
    num_inference_steps: int = 50
    guidance_scale: float = 8.0
    height: int = 1024
    width: int = 1024
    negative_prompt: str | None = None
    view_phrases: list[str] = field(default_factory=list, metadata={"help": "optional phrases, one picked per image"})
    batch_size: int = 4
    mixed_precision: str = field(default="no", metadata={"help": "no (fp32), fp16 or bf16"})
    image_format: str = field(default="png", metadata={"help": "png (lossless), jpg or webp"})
    image_quality: int = field(default=95, metadata={"help": "for jpg / webp"})
    image_writers: int = field(
        default=2,
        metadata={"help": "threads that encode, hash and write a batch while the next one renders (0: in turn)"},
    )
    compile: bool = field(
        default=False, metadata={"help": "channels_last, fused QKV projections and torch.compile of the UNet"}
    )
    quantize: str | None = field(
        default=None, metadata={"help": "fp8: the UNet's linear layers in FP8 with torchao (changes pixels)"}
    )
    overwrite: bool = field(default=False, metadata={"help": "replace this stage's earlier outputs in --output_dir"})
    dry_run: bool = field(default=False, metadata={"help": "print and write plan.json; load no model, render nothing"})

    def __post_init__(self):
        check_ranges(self, non_negative=("seed",))
        for name in ("images_per_identity", "num_inference_steps", "batch_size", "height", "width"):
            if getattr(self, name) <= 0:
                raise UserInputError(f"--{name} must be positive (got {getattr(self, name)})")
        for name in ("height", "width"):
            if getattr(self, name) % 8:
                raise UserInputError(
                    f"--{name} must be a multiple of 8 (got {getattr(self, name)}): the VAE works on 8x8 patches"
                )
        if self.mixed_precision not in PRECISIONS:
            raise UserInputError(f"--mixed_precision {self.mixed_precision!r}: use one of {list(PRECISIONS)}")
        if self.image_format not in IMAGE_FORMATS:
            raise UserInputError(f"--image_format {self.image_format!r}: use one of {list(IMAGE_FORMATS)}")
        if self.image_writers < 0:
            raise UserInputError(f"--image_writers must be >= 0 (got {self.image_writers})")
        if self.quantize is not None and self.quantize not in QUANTIZATIONS:
            raise UserInputError(f"--quantize {self.quantize!r}: use one of {list(QUANTIZATIONS)} or leave it unset")
        if not 1 <= self.image_quality <= 100:
            raise UserInputError(f"--image_quality must be in 1..100 (got {self.image_quality})")
        if self.guidance_scale < 0:
            raise UserInputError(f"--guidance_scale must be >= 0 (got {self.guidance_scale})")
        if self.template_id is not None and self.template_id not in TEMPLATES:
            raise UserInputError(f"--template_id {self.template_id!r}: unknown; use one of {sorted(TEMPLATES)}")


def job_components(config: GenerateConfig, lora: Path | None) -> dict:
    """Everything the images and records depend on: the settings and the content of the inputs."""
    from vehicle_diff.models import resolved_revision

    return {
        # the writer count changes when files are written, never what they hold
        "settings": output_settings(config, ignore=("prompts", "lora_weights", "image_writers")),
        "prompt_library_sha256": sha256_file(prompt_library_file(config.prompts)),
        "lora_sha256": sha256_file(lora) if lora else None,
        "base_model_revision": resolved_revision(
            config.pretrained_model_name_or_path, config.revision, "--pretrained_model_name_or_path"
        ),
    }


def job_for(config: GenerateConfig) -> Job:
    lora = lora_file(config.lora_weights) if config.lora_weights else None
    return Job(
        config.output_dir,
        "generate",
        job_components(config, lora),
        overwrite=config.overwrite,
        inputs=[config.prompts, config.lora_weights],
        owned=[*(f"images/*/*.{suffix}" for suffix in IMAGE_FORMATS), "records.parquet", "config.yaml"],
    )


def generate(config: GenerateConfig) -> Path:
    """Render every not-yet-finished batch of the plan, then merge the records (see the module doc)."""
    import torch
    from accelerate import PartialState
    from tqdm.auto import tqdm

    check_output_path(config.output_dir, inputs=[config.prompts, config.lora_weights])  # before any work
    library = read_prompt_library(config.prompts)
    num_images = len(library["identity"]) * config.images_per_identity
    num_batches = math.ceil(num_images / config.batch_size)
    if config.dry_run:  # before the LoRA is looked at: the plan may be made before fine-tuning writes it
        return dry_run(config, library, num_images, num_batches)
    lora = lora_file(config.lora_weights) if config.lora_weights else None
    check_quantization(config.quantize)
    state = PartialState(cpu=not torch.cuda.is_available())
    job = job_for(config).open()
    components, out_dir = job.components, job.out_dir
    if state.is_main_process:
        save_config(config, out_dir / "config.yaml", stage="generate")

    def requests_of(batch_index: int) -> list[dict]:
        return batch_requests(
            library,
            config.images_per_identity,
            batch_index,
            config.batch_size,
            config.seed,
            config.view_phrases,
            config.template_id,
        )

    render_settings = {
        name: getattr(config, name)
        for name in ("num_inference_steps", "guidance_scale", "height", "width", "negative_prompt")
    }
    if lora and not (config.compile or config.quantize):  # otherwise the LoRA is fused into the weights
        render_settings["lora_scale"] = config.lora_scale
    from vehicle_diff.cards import model_ref

    base_model_name = model_ref(config.pretrained_model_name_or_path)["name"]  # a local folder: its name, no path
    pipe, progress, scheduler, first_batch_started = None, None, None, None
    # processes start at different batches so that they rarely wait on each other's claims
    order = list(range(num_batches))
    order = order[state.process_index :: state.num_processes] + order
    # Encoding, hashing and the shard of batch N run on writer threads while batch N+1 denoises (PNG encoding and
    # hashing release the GIL); at most `image_writers` rendered batches wait, so memory stays bounded.
    pending = deque()
    try:
        with ThreadPoolExecutor(max_workers=max(config.image_writers, 1), thread_name_prefix="image-writer") as writers:
            for batch_index in job.batches(num_batches, lambda b: [r["image_id"] for r in requests_of(b)], order=order):
                if pipe is None:
                    pipe = pipeline_for(config, lora, state.device)
                    scheduler = type(pipe.scheduler).__name__
                    progress = tqdm(
                        total=num_images,
                        desc=f"generate [process {state.process_index}]",
                        unit="img",
                        position=state.process_index,
                        dynamic_ncols=True,
                    )
                    first_batch_started = time.perf_counter()
                requests = requests_of(batch_index)
                images = render(pipe, [r["prompt"] for r in requests], [r["seed"] for r in requests], **render_settings)
                if first_batch_started is not None and config.compile:  # reported once: the compiler's cost
                    seconds = time.perf_counter() - first_batch_started
                    progress.write(f"compiled the UNet: the first batch took {seconds:.0f} s, compilation included")
                first_batch_started = None
                common = {
                    "base_model": base_model_name,
                    "base_model_revision": components["base_model_revision"],
                    "lora_sha256": components["lora_sha256"] or "",
                    "lora_scale": config.lora_scale if lora else 0.0,
                    "scheduler": scheduler,
                    "num_inference_steps": config.num_inference_steps,
                    "guidance_scale": config.guidance_scale,
                    "negative_prompt": config.negative_prompt or "",
                    "height": config.height,
                    "width": config.width,
                    "mixed_precision": config.mixed_precision,
                    "unet_quantization": config.quantize or "",
                }
                write = (job, out_dir, batch_index, requests, images, common, config.image_format, config.image_quality)
                if config.image_writers == 0:
                    progress.update(write_batch(*write))
                    continue
                job.hold_claim(batch_index)  # released when the writer has written the shard
                pending.append(writers.submit(write_batch, *write))
                while len(pending) > config.image_writers:
                    progress.update(pending.popleft().result())
            while pending:
                progress.update(pending.popleft().result())
    finally:  # a failed writer's batch is not left claimed by this (living) process
        job.release_held_claims()
    if progress is not None:
        progress.close()
    state.wait_for_everyone()

    if state.is_main_process:
        with job.locked():
            if not job.complete:
                count = job.merge(
                    num_batches, out_dir / "records.parquet", lambda b: [r["image_id"] for r in requests_of(b)]
                )
                job.mark_done({"images": count, "identities": len(library["identity"])})
        print(f"Generated {num_images} images of {len(library['identity'])} identities into {out_dir / 'images'}.")
        print(f"Records: {out_dir / 'records.parquet'}")
    state.wait_for_everyone()
    return out_dir


def main(argv: list[str] | None = None) -> Path:
    return generate(parse_config(GenerateConfig, "generate", argv))


def write_batch(
    job: Job,
    out_dir: Path,
    batch_index: int,
    requests: list[dict],
    images: list,
    common: dict,
    image_format: str,
    image_quality: int,
) -> int:
    """Encode and hash the images of one batch, then write its record shard: the batch counts as done only once
    every file is whole. Runs on a writer thread, so nothing here may touch the pipeline."""
    records = []
    for request, image in zip(requests, images, strict=True):
        file_name = f"images/{request['identity']}/{request['image_id']}.{image_format}"
        with atomic_path(out_dir / file_name) as tmp:
            image.save(tmp, format=IMAGE_FORMATS[image_format], quality=image_quality)
            image_sha256 = sha256_file(tmp)
        records.append({**request, "file_name": file_name, "image_sha256": image_sha256, **common})
    job.write_shard(batch_index, records)
    return len(records)


def check_quantization(quantize: str | None) -> None:
    """Refuse `--quantize fp8` before any work where it cannot run: torchao missing, or no FP8 tensor cores."""
    if quantize is None:
        return
    import importlib.util

    import torch

    if importlib.util.find_spec("torchao") is None:
        raise UserInputError("--quantize fp8 needs torchao: `pip install torchao` (or `pip install vehicle-diff[fp8]`)")
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < FP8_MIN_CAPABILITY:
        raise UserInputError(
            "--quantize fp8 needs a CUDA GPU with FP8 tensor cores (compute capability 8.9+: Ada, Hopper); "
            "run without --quantize here"
        )


def quantize_unet(unet, quantize: str) -> None:
    """FP8 weights and dynamic FP8 activations for the UNet's linear layers (torchao), the Hopper serving recipe."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, quantize_

    quantize_(unet, Float8DynamicActivationFloat8WeightConfig())


def speed_up_unet(pipe, *, compile_unet: bool, quantize: str | None, lora_scale: float | None) -> None:
    """The diffusers speed recipe: channels_last, fused QKV projections, `torch.compile` of the UNet (and FP8 when
    asked). A LoRA is fused into the weights first, since the QKV fusion and the compiler need plain linear layers;
    rendering then passes no LoRA scale."""
    import torch

    if lora_scale is not None:
        pipe.fuse_lora(lora_scale=lora_scale)
        pipe.unload_lora_weights()
    if quantize:
        quantize_unet(pipe.unet, quantize)
    if compile_unet:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.fuse_qkv_projections()
        pipe.unet = torch.compile(pipe.unet, fullgraph=True)


def pipeline_for(config: GenerateConfig, lora: Path | None, device):
    pipe = load_pipeline(
        config.pretrained_model_name_or_path,
        revision=config.revision,
        mixed_precision=config.mixed_precision,
        device=device,
    )
    if lora is not None:
        attach_lora(pipe, lora, config.pretrained_model_name_or_path)
    if config.compile or config.quantize:
        speed_up_unet(
            pipe,
            compile_unet=config.compile,
            quantize=config.quantize,
            lora_scale=config.lora_scale if lora is not None else None,
        )
    return pipe


def dry_run(config: GenerateConfig, library: dict, num_images: int, num_batches: int) -> Path:
    """The plan at full scale without loading a model: images, batches, denoising steps and disk needed."""
    pixels = config.height * config.width
    image_bytes = num_images * pixels * BYTES_PER_PIXEL[config.image_format]
    plan = {
        "stage": "generate",
        "identities": len(library["identity"]),
        "images_per_identity": config.images_per_identity,
        "images": num_images,
        "batches": num_batches,
        "batch_size": config.batch_size,
        "unet_evaluations": num_images * config.num_inference_steps * (2 if config.guidance_scale > 1 else 1),
        "record_shards": num_batches,
        "estimated_disk_gb": round(image_bytes / 1e9, 2),
        "disk_estimate_basis": f"{BYTES_PER_PIXEL[config.image_format]} bytes/pixel for {config.image_format}",
    }
    return write_plan(config.output_dir, plan)


if __name__ == "__main__":
    from vehicle_diff.cli import run_main

    run_main(main)
