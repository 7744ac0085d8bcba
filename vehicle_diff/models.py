"""Load every model by id-or-path with its library's own loader, the same way for `paper` and `tiny` ids.

A `tiny:NAME` id names a model of the offline random zoo (`vehicle_diff.tiny_models`), a `toy:NAME` id one of the
trained toy zoo (`vehicle_diff.toy_models`); each zoo is built on first use. Any other
id goes to the library unchanged; when it cannot be had offline, the error is one line that names the model and
the download that provides it (only the files the loader reads), instead of a traceback from deep inside a library.

`resolved_revision` says exactly which weights an id meant: the Hub commit, or a content hash for local files.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import re
from contextlib import contextmanager
from pathlib import Path

from .errors import UserInputError

TINY_PREFIX = "tiny:"
TOY_PREFIX = "toy:"
ZOO_PREFIXES = (TINY_PREFIX, TOY_PREFIX)
PRECISIONS = ("no", "fp16", "bf16")  # accelerate's --mixed_precision names


def torch_dtype(mixed_precision: str):
    """The torch dtype of accelerate's `--mixed_precision` name (`no` = float32)."""
    import torch

    return {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[mixed_precision]


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

COMMIT_SHA = re.compile(r"[0-9a-f]{40}")

# The files each loader reads from a Hub repo: what `hf download --include` must fetch, and nothing else.
DIFFUSERS_PIPELINE_FILES = [
    "model_index.json",
    "*/config.json",
    "scheduler/scheduler_config.json",
    "tokenizer*/*",
    "*/model.safetensors",
    "*/diffusion_pytorch_model.safetensors",
]
TRANSFORMERS_FILES = ["*.json", "*.safetensors", "*.txt"]
TIMM_FILES = ["config.json", "model.safetensors"]
OPEN_CLIP_FILES = ["open_clip_config.json", "open_clip_model.safetensors"]


def resolve_model(name_or_path: str) -> str:
    """`tiny:NAME` / `toy:NAME` -> the path of that zoo model; anything else unchanged."""
    if name_or_path.startswith(TINY_PREFIX):
        from .tiny_models import ZOO_MODELS, ensure_zoo

        zoo, names = ensure_zoo, ZOO_MODELS
    elif name_or_path.startswith(TOY_PREFIX):
        from .toy_models import TOY_MODELS, ensure_toy_zoo

        zoo, names = ensure_toy_zoo, tuple(TOY_MODELS)
    else:
        return name_or_path
    prefix, _, name = name_or_path.partition(":")
    if name not in names:
        raise UserInputError(f"unknown {prefix} model {name_or_path!r}; the zoo has: {', '.join(names)}")
    return str(zoo() / name)


def looks_like_path(name: str) -> bool:
    """A filesystem path rather than a Hub id (`org/name`, `hf-hub:org/name`) or a library's model name."""
    if name.startswith("local-dir:"):
        return True
    name = name.removeprefix("hf-hub:")
    return name.startswith((".", "/", "~")) or os.sep in name and not re.fullmatch(r"[\w.-]+/[\w.-]+(@[\w./-]+)?", name)


def hub_download_command(repo_id: str, files: list[str]) -> str:
    return f"hf download {repo_id} " + " ".join(f"--include '{pattern}'" for pattern in files)


def hub_hint(repo_id: str, files: list[str], flag: str) -> str:
    return (
        f"where the Hub is reachable run `{hub_download_command(repo_id, files)}`, copy that HF_HOME cache "
        f"here and set HF_HUB_OFFLINE=1, or pass a local folder with {flag} (--preset tiny needs no download)"
    )


def timm_hub_id(model_id: str) -> str | None:
    """The Hub repo of a timm name (`resnet50.tv_in1k` -> `timm/resnet50.tv_in1k`) or of an `hf-hub:` id."""
    if model_id.startswith("hf-hub:"):
        return model_id.removeprefix("hf-hub:").split("@")[0]
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(model_id)
    except RuntimeError:  # an architecture with no such pretrained tag
        return None
    return cfg.hf_hub_id if cfg is not None else None


def _first_line(error: BaseException, limit: int = 160) -> str:
    line = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {line[:limit]}{'...' if len(line) > limit else ''}"


@contextmanager
def clear_load_errors(model_id: str, flag: str, hint: str):
    """A failed hub look-up becomes one line: the model, the flag, the cause, and `hint` (how to provide it)."""
    try:
        yield
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as error:
        if Path(model_id).exists():  # a local model that is broken: the library's reason, in one line
            reason = f"KeyError: missing key {error}" if isinstance(error, KeyError) else _first_line(error)
            raise UserInputError(
                f"{flag} {model_id}: not a complete saved model ({reason}); point {flag} "
                "at a folder the library saved whole (e.g. with save_pretrained)"
            ) from error
        if isinstance(error, (KeyError, TypeError)):
            raise
        if looks_like_path(model_id):
            raise UserInputError(f"{flag} {model_id}: no such file or folder") from error
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "false", "")
        where = "offline (HF_HUB_OFFLINE=1)" if offline else "here (no network?)"
        raise UserInputError(
            f"cannot load model {model_id!r} ({flag}) {where} [{_first_line(error)}]; {hint}"
        ) from error


def load_sdxl_pipeline(
    model_id: str, revision: str | None = None, torch_dtype=None, flag="--pretrained_model_name_or_path"
):
    from diffusers import StableDiffusionXLPipeline

    with clear_load_errors(model_id, flag, hub_hint(model_id, DIFFUSERS_PIPELINE_FILES, flag)):
        return StableDiffusionXLPipeline.from_pretrained(
            resolve_model(model_id), revision=revision, dtype=torch_dtype, use_safetensors=True
        )


def load_blip2(model_id: str, revision: str | None = None, torch_dtype=None, flag="--caption_model"):
    """BLIP-2 model + processor."""
    from transformers import Blip2ForConditionalGeneration, Blip2Processor

    path = resolve_model(model_id)
    with clear_load_errors(model_id, flag, hub_hint(model_id, TRANSFORMERS_FILES, flag)):
        processor = Blip2Processor.from_pretrained(path, revision=revision)
        model = Blip2ForConditionalGeneration.from_pretrained(path, revision=revision, dtype=torch_dtype)
    return model, processor


def ultralytics_release_url(name: str) -> tuple[str, Path]:
    """Where ultralytics downloads an official `.pt` from (its GitHub release assets), and where it looks for one."""
    from ultralytics.utils import SETTINGS
    from ultralytics.utils.checks import check_yolov5u_filename
    from ultralytics.utils.downloads import GITHUB_ASSETS_REPO, attempt_download_asset

    release = inspect.signature(attempt_download_asset).parameters["release"].default
    name = check_yolov5u_filename(name, verbose=False)  # yolov5x6.pt -> yolov5x6u.pt, as ultralytics does
    return f"https://github.com/{GITHUB_ASSETS_REPO}/releases/download/{release}/{name}", Path(
        SETTINGS["weights_dir"]
    ) / name


def ultralytics_safe_load() -> None:
    """Turn on ultralytics' restricted loading (`torch.load(weights_only=True)` against its allow-list of model
    classes) for this process and its children: a `.pt` is a pickle, and a pickle can run code. ultralytics reads
    `ULTRALYTICS_SAFE_LOAD` when it is first imported; if that happened earlier, its module flag is set too."""
    os.environ["ULTRALYTICS_SAFE_LOAD"] = "1"
    from ultralytics.nn import tasks

    if not tasks._SafeLoad.SUPPORTED:
        raise UserInputError("loading a YOLO .pt safely needs torch >= 2.6 (weights_only checkpoints); upgrade torch")
    tasks.SAFE_LOAD = True


@contextmanager
def torch_threads_kept():
    """ultralytics sets torch's CPU thread count to cores - 1 whenever it picks a device (to predict or to train)
    and leaves it so. Put it back: what runs after a detector in this process must compute with the same threads
    as in a resumed process that never ran one, or a resumed job ends with other numbers (and runs slower)."""
    import torch

    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def load_yolo(model_id: str, flag="--detector"):
    """An ultralytics detector from a `.pt` path or an official release name (e.g. `yolov5x6u.pt`), loaded in
    ultralytics' safe mode: a checkpoint that references anything but known model classes is refused unopened."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    ultralytics_safe_load()
    from ultralytics import YOLO

    path = resolve_model(model_id)
    if Path(path).suffix != ".pt":
        raise UserInputError(f"{flag} {model_id}: give an ultralytics .pt checkpoint (a path or a release name)")
    if looks_like_path(path) and not Path(path).exists():
        raise UserInputError(f"{flag} {model_id}: no such file")
    if not Path(path).exists():
        url, weights_dir_file = ultralytics_release_url(Path(path).name)
        hint = (
            f"download {url} (ultralytics' GitHub release assets) and put it at {weights_dir_file} "
            f"(ultralytics' weights_dir), or pass the .pt file's path with {flag}"
        )
    else:
        hint = f"pass an existing ultralytics .pt file with {flag}"
    with clear_load_errors(model_id, flag, hint):
        try:
            return YOLO(path, task="detect")
        except TypeError as error:  # ultralytics' refusal of a checkpoint outside its allow-list
            raise UserInputError(
                f"{flag} {model_id}: refused to load, the file references code outside ultralytics' model classes "
                f"(safe loading); use an official ultralytics checkpoint or one saved with model.save() [{_first_line(error)}]"
            ) from error


def load_open_clip(model_id: str, flag="--clip_model"):
    """open_clip model, eval preprocess and tokenizer. Ids use open_clip's schemas (`hf-hub:ORG/NAME`,
    `local-dir:PATH`); a bare local folder is read as `local-dir:`."""
    import open_clip

    name = resolve_model(model_id)
    if Path(name).is_dir():
        name = "local-dir:" + name
    repo_id = model_id.removeprefix("hf-hub:")
    hint = hub_hint(repo_id, OPEN_CLIP_FILES, flag) + f" (open_clip's id for that repo is hf-hub:{repo_id})"
    with clear_load_errors(model_id, flag, hint):
        model, _, preprocess = open_clip.create_model_and_transforms(name)
        tokenizer = open_clip.get_tokenizer(name)
    return model.eval(), preprocess, tokenizer


def create_timm(model_id: str, pretrained: bool = True, flag="--backbone", **kwargs):
    """A timm model by name (`resnet50.tv_in1k`, `hf-hub:timm/...`) or a folder in timm's hub format."""
    import timm

    name = resolve_model(model_id)
    if Path(name).is_dir():
        name = "local-dir:" + name
    repo_id = None if Path(name.removeprefix("local-dir:")).exists() else timm_hub_id(model_id)
    hint = (
        hub_hint(repo_id, TIMM_FILES, flag) + f" (timm also takes it as hf-hub:{repo_id})"
        if repo_id
        else (f"pass a timm model folder (config.json + model.safetensors) with {flag}")
    )
    with clear_load_errors(model_id, flag, hint):
        return timm.create_model(name, pretrained=pretrained, **kwargs)


def hash_cache_file() -> Path:
    """Where the sha256 of model files is remembered between runs ($VEHICLE_DIFF_CACHE, else the user cache)."""
    root = os.environ.get("VEHICLE_DIFF_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "vehicle-diff"
    return Path(root).expanduser() / "content-hashes.json"


def file_identity(file: Path) -> list:
    """What changes whenever a file's content can have changed: size, mtime, ctime and inode (a rewrite moves
    ctime even when mtime is put back)."""
    stat = file.stat()
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]


def content_hash(path: Path) -> str:
    """sha256 over a file, or over a folder's files (relative name and content, sorted); hidden entries
    (`.git`, `.cache` of `hf download --local-dir`) are not part of the model. Each file's digest is remembered by
    its real path and `file_identity`, so a 7 GB base model is read once, not at every start."""
    import json

    from tqdm.auto import tqdm

    from .io import atomic_path

    path = Path(path)
    files = (
        [path]
        if path.is_file()
        else sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
    )
    cache_file = hash_cache_file()
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):  # no cache yet, or a damaged one: hash again
        cache = {}
    identities = {str(f.resolve()): file_identity(f) for f in files}
    to_read = {f for f in files if cache.get(str(f.resolve()), {}).get("identity") != identities[str(f.resolve())]}
    digest = hashlib.sha256()
    with tqdm(
        total=sum(f.stat().st_size for f in to_read),
        unit="B",
        unit_scale=True,
        desc=f"hashing {path.name}",
        disable=None,
        leave=False,
    ) as bar:
        for file in files:
            key = str(file.resolve())
            if file in to_read:
                file_digest = hashlib.sha256()
                with open(file, "rb") as handle:
                    for chunk in iter(lambda: handle.read(1 << 20), b""):
                        file_digest.update(chunk)
                        bar.update(len(chunk))
                cache[key] = {"identity": identities[key], "sha256": file_digest.hexdigest()}
            name = "" if file == path else file.relative_to(path).as_posix()
            digest.update(f"{name}\0{cache[key]['sha256']}\n".encode())
    if to_read:
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(cache_file) as tmp:
                tmp.write_text(json.dumps(cache))
        except OSError:  # a read-only home: the hash is right, only the next start reads the files again
            pass
    return digest.hexdigest()


def cached_commit(repo_id: str, revision: str | None, repo_type: str = "model") -> str | None:
    """The commit a revision points to in the local HF cache (`refs/` of the documented cache layout)."""
    from huggingface_hub import constants

    folder = Path(constants.HF_HUB_CACHE) / f"{repo_type}s--{repo_id.replace('/', '--')}"
    if revision and COMMIT_SHA.fullmatch(revision):
        return revision if (folder / "snapshots" / revision).is_dir() else None
    ref = folder / "refs" / (revision or "main")
    return ref.read_text().strip() if ref.is_file() else None


def resolved_revision(model_id: str, revision: str | None = None, flag: str | None = None) -> str:
    """Exactly which weights `model_id` (at `revision`) meant, to record beside the outputs (see
    `_resolved_revision`); with `flag`, an error names the flag it came from."""
    try:
        return _resolved_revision(model_id, revision)
    except UserInputError as error:
        if flag is None:
            raise
        raise UserInputError(f"{flag} {model_id!r}: {error}; or pass a local folder or file with {flag}") from None


def _resolved_revision(model_id: str, revision: str | None = None) -> str:
    """Exactly which weights `model_id` (at `revision`) meant, to record beside the outputs: the commit sha of a
    Hub repo (from the local HF cache; from the Hub when online and not cached), or `sha256:HEX` of the content
    of a local folder or file and of a `tiny:` model (which has no commit)."""
    path = Path(resolve_model(model_id).removeprefix("local-dir:"))
    if model_id.startswith(ZOO_PREFIXES) or path.exists():
        return "sha256:" + content_hash(path)
    if looks_like_path(model_id):
        raise UserInputError(f"{model_id}: no such file or folder")
    if model_id.endswith(".pt"):  # an ultralytics release name, found where ultralytics keeps downloads
        url, local = ultralytics_release_url(model_id)
        if local.exists():
            return "sha256:" + content_hash(local)
        raise UserInputError(f"{model_id}: not on this machine; download {url} to {local}")
    repo_id = model_id.removeprefix("hf-hub:").split("@")[0] if "/" in model_id else timm_hub_id(model_id)
    if repo_id is None:
        raise UserInputError(f"{model_id!r} is neither a local path nor a Hub id; its revision cannot be resolved")
    revision = revision or (model_id.split("@", 1)[1] if "@" in model_id else None)
    commit = cached_commit(repo_id, revision)
    if commit:
        return commit
    from huggingface_hub import HfApi, constants

    if not constants.HF_HUB_OFFLINE:
        try:
            return HfApi().model_info(repo_id, revision=revision).sha
        except Exception as error:  # noqa: BLE001 - any failure of the look-up means the same to the user
            raise UserInputError(f"cannot resolve {repo_id}@{revision or 'main'}: {_first_line(error)}") from error
    raise UserInputError(
        f"{repo_id}@{revision or 'main'} is not in the HF cache ({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE=1; "
        f"`{hub_download_command(repo_id, ['*.json'])}` where the Hub is reachable records its commit"
    )
