"""Load every model by id-or-path with its library's own loader, the same way for `paper` and `tiny` ids.

A `tiny:NAME` id names a model of the offline zoo (`vehicle_diff.tiny_models`), built on first use. Any other
id goes to the library unchanged; when it cannot be had offline, the error names the model and how to supply
it instead of a traceback from deep inside a library.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from .errors import UserInputError

TINY_PREFIX = "tiny:"
SDXL_BASE = "stabilityai/stable-diffusion-xl-base-1.0"
# SDXL base 1.0's UNet (its published unet/config.json): full-size plans and meta-device checks need it offline.
SDXL_UNET = {
    "sample_size": 128,
    "block_out_channels": (320, 640, 1280),
    "layers_per_block": 2,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "transformer_layers_per_block": (1, 2, 10),
    "attention_head_dim": (5, 10, 20),
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}


def resolve_model(name_or_path: str) -> str:
    """`tiny:NAME` -> the path of that zoo model; anything else unchanged."""
    if name_or_path.startswith(TINY_PREFIX):
        from .tiny_models import ZOO_MODELS, ensure_zoo

        name = name_or_path[len(TINY_PREFIX) :]
        if name not in ZOO_MODELS:
            raise UserInputError(f"unknown tiny model {name_or_path!r}; the zoo has: {', '.join(ZOO_MODELS)}")
        return str(ensure_zoo() / name)
    return name_or_path


@contextmanager
def clear_load_errors(model_id: str, flag: str):
    """Turn a failed hub look-up into a message that names the model, the flag, and the ways to supply it."""
    try:
        yield
    except (OSError, ValueError, RuntimeError) as error:
        if Path(model_id).exists():
            raise  # a local file that is broken: the library's own message says more than ours would
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "false", "False", "")
        raise UserInputError(
            f"could not load model {model_id!r} ({flag}): {type(error).__name__}: {str(error).splitlines()[0]}\n"
            f"  This machine {'is set offline (HF_HUB_OFFLINE=1)' if offline else 'may not reach the model hub'}. "
            f"Either pass a local folder or file with {flag}, or download the model where the hub is reachable "
            f"(`hf download {model_id.removeprefix('hf-hub:')}`), copy that HF_HOME cache here and set "
            "HF_HUB_OFFLINE=1. For a run without any real model use --preset tiny."
        ) from error


def load_sdxl_pipeline(
    model_id: str, revision: str | None = None, torch_dtype=None, flag="--pretrained_model_name_or_path"
):
    from diffusers import StableDiffusionXLPipeline

    with clear_load_errors(model_id, flag):
        return StableDiffusionXLPipeline.from_pretrained(
            resolve_model(model_id), revision=revision, dtype=torch_dtype, use_safetensors=True
        )


def load_blip2(model_id: str, revision: str | None = None, torch_dtype=None, flag="--caption_model"):
    """BLIP-2 model + processor."""
    from transformers import Blip2ForConditionalGeneration, Blip2Processor

    path = resolve_model(model_id)
    with clear_load_errors(model_id, flag):
        processor = Blip2Processor.from_pretrained(path, revision=revision)
        model = Blip2ForConditionalGeneration.from_pretrained(path, revision=revision, dtype=torch_dtype)
    return model, processor


def load_yolo(model_id: str, flag="--detector"):
    """An ultralytics detector from a `.pt` path (ultralytics fetches its own release names, e.g. `yolov5x6u.pt`)."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics import YOLO

    path = resolve_model(model_id)
    with clear_load_errors(model_id, flag):
        return YOLO(path, task="detect")


def load_open_clip(model_id: str, flag="--clip_model"):
    """open_clip model, eval preprocess and tokenizer. Ids use open_clip's schemas (`hf-hub:ORG/NAME`,
    `local-dir:PATH`); a bare local folder is read as `local-dir:`."""
    import open_clip

    name = resolve_model(model_id)
    if Path(name).is_dir():
        name = "local-dir:" + name
    with clear_load_errors(model_id, flag):
        model, _, preprocess = open_clip.create_model_and_transforms(name)
        tokenizer = open_clip.get_tokenizer(name)
    return model.eval(), preprocess, tokenizer


def create_timm(model_id: str, pretrained: bool = True, flag="--backbone", **kwargs):
    """A timm model by name (`resnet50.tv_in1k`, `hf-hub:timm/...`) or a folder in timm's hub format."""
    import timm

    name = resolve_model(model_id)
    if Path(name).is_dir():
        name = "local-dir:" + name
    with clear_load_errors(model_id, flag):
        return timm.create_model(name, pretrained=pretrained, **kwargs)


def resolved_revision(model_id: str, revision: str | None = None) -> str:
    """What exactly was loaded: the commit sha from the Hub cache for a hub id, a content hash for a local
    folder, file or tiny model (so records and cards pin the weights, not a moving name)."""
    from .io import sha256_file

    path = Path(resolve_model(model_id).removeprefix("local-dir:"))
    if path.is_file():
        return "sha256:" + sha256_file(path)
    if path.is_dir():
        from .jobs import folder_digest

        return "sha256:" + folder_digest(path)
    name = model_id.removeprefix("hf-hub:")
    try:
        from huggingface_hub import scan_cache_dir

        for repo in scan_cache_dir().repos:
            if repo.repo_id == name:
                for cached in repo.revisions:
                    if revision in (None, cached.commit_hash) or revision in cached.refs:
                        return cached.commit_hash
    except Exception:  # no cache yet, or an unreadable one: fall back to what was asked for
        pass
    return revision or "main"
