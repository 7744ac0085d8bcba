"""The LoRA in the formats its users load: diffusers' (`pytorch_lora_weights.safetensors`, what
`pipe.load_lora_weights` reads) and kohya's (what ComfyUI, AUTOMATIC1111 and sd-scripts read).

Kohya keys name the module with underscores (`lora_unet_up_blocks_0_..._to_q.lora_down.weight`) and carry one
`.alpha` per module; the loaders scale each update by `alpha / rank`. The diffusers file records the trained
`lora_alpha` only in its safetensors metadata (`lora_adapter_metadata`, when the trainer saved it); without it,
diffusers loads with `alpha = rank`, and so does the kohya copy, so that both files mean the same model.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

LORA_FILE = "pytorch_lora_weights.safetensors"
KOHYA_LORA_FILE = "pytorch_lora_weights_kohya.safetensors"
METADATA_KEY = "lora_adapter_metadata"  # diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY
KOHYA_PREFIXES = {
    "unet": "lora_unet",
    "text_encoder": "lora_te1",
    "text_encoder_2": "lora_te2",
}  # as diffusers writes them


def adapter_configs(metadata: dict | None) -> dict[str, dict]:
    """Per component (`unet`, `text_encoder`, `text_encoder_2`), the LoraConfig fields diffusers stored."""
    packed = json.loads((metadata or {}).get(METADATA_KEY, "{}"))
    configs: dict[str, dict] = {}
    for key, value in packed.items():
        component, _, field = key.partition(".")
        configs.setdefault(component, {})[field] = value
    return configs


def module_alpha(module: str, rank: int, config: dict, lora_alpha: float | None) -> float:
    """The alpha a module was trained with: peft's `alpha_pattern` match, else `lora_alpha`, else the rank."""
    for pattern, alpha in (config.get("alpha_pattern") or {}).items():
        if re.search(rf"(^|\.){pattern}$", module):
            return float(alpha)
    if lora_alpha is not None:
        return float(lora_alpha)
    return float(config.get("lora_alpha", rank))


def save_kohya_lora(diffusers_lora_file: str | Path, out_file: str | Path, *, lora_alpha: float | None = None) -> Path:
    """Write a kohya-format copy of a diffusers SDXL LoRA file (diffusers' `convert_state_dict_to_kohya`), with
    each module's `.alpha` set to its trained alpha (from the file's metadata, or `lora_alpha`, else the rank)."""
    import torch
    from diffusers.utils import convert_state_dict_to_kohya, convert_state_dict_to_peft, convert_unet_state_dict_to_peft
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(diffusers_lora_file), framework="pt") as handle:
        metadata = handle.metadata()
        state_dict = {key: handle.get_tensor(key) for key in handle.keys()}
    configs = adapter_configs(metadata)
    peft_state_dict = {}
    for component in ("unet", "text_encoder", "text_encoder_2"):
        part = {k[len(component) + 1 :]: v for k, v in state_dict.items() if k.split(".", 1)[0] == component}
        if not part:
            continue
        if component == "unet":
            part = convert_unet_state_dict_to_peft(part)
        elif not any(".lora_A." in key for key in part):
            part = convert_state_dict_to_peft(part)
        peft_state_dict |= {f"{component}.{k}": v for k, v in part.items()}
    unknown = sorted({k.split(".", 1)[0] for k in state_dict} - {"unet", "text_encoder", "text_encoder_2"})
    if unknown:
        raise ValueError(f"{diffusers_lora_file}: not an SDXL LoRA in diffusers' format (components {unknown})")
    kohya = convert_state_dict_to_kohya(peft_state_dict)
    modules = {}  # kohya module name -> (component, peft module name)
    for key in peft_state_dict:
        if key.endswith(".lora_A.weight"):
            component, module = key.removesuffix(".lora_A.weight").split(".", 1)
            modules[f"{KOHYA_PREFIXES[component]}_{module.replace('.', '_')}"] = (component, module)
    for key in [k for k in kohya if k.endswith(".alpha")]:
        component, module = modules[key.removesuffix(".alpha")]
        rank = kohya[key.replace(".alpha", ".lora_down.weight")].shape[0]
        alpha = module_alpha(module, rank, configs.get(component, {}), lora_alpha)
        kohya[key] = torch.tensor(alpha, dtype=torch.float32)
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in kohya.items()}, str(out_file), metadata={"format": "pt"})
    return out_file


def keep_one_metadata_entry(lora_file: str | Path) -> Path:
    """Rewrite a diffusers LoRA file with `lora_adapter_metadata` as its only metadata entry. safetensors writes
    its metadata map in an order that changes from process to process, so a file with two entries (diffusers adds
    `format: pt`) has different bytes, and a different sha256, each time the same LoRA is saved; the records and
    fingerprints that pin the LoRA by its sha256 need the same bytes. Loaders do not read `format`."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(lora_file), framework="pt") as handle:
        metadata = handle.metadata() or {}
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    kept = {METADATA_KEY: metadata[METADATA_KEY]} if METADATA_KEY in metadata else None
    save_file(tensors, str(lora_file), metadata=kept)
    return Path(lora_file)
