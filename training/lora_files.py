"""The LoRA in the formats its users load: diffusers' (`pytorch_lora_weights.safetensors`, what
`pipe.load_lora_weights` reads) and kohya's native SDXL format (what sd-scripts writes and ComfyUI, AUTOMATIC1111
and other SDXL UIs read).

The kohya file follows what kohya-ss/sd-scripts writes for an SDXL UNet LoRA (`networks/lora.py`,
`sdxl_train_network.py`):
- keys name the module of the SGM UNet (Stability AI's generative-models layout the SDXL checkpoint uses) with
  underscores: `lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight`, `..._middle_block_1_...`,
  `..._output_blocks_0_1_...`; text encoders `lora_te1_...` / `lora_te2_...`; each module has `.lora_down.weight`,
  `.lora_up.weight` and `.alpha` (the loaders scale each update by alpha / rank). The SGM names are derived from the
  UNet's own configuration (`layers_per_block`, its block types), the layout diffusers' SGM mapping
  (`diffusers.loaders.lora_conversion_utils._maybe_map_sgm_blocks_to_diffusers`) undoes.
- metadata, all strings: sd-scripts' training metadata that AUTOMATIC1111 classifies LoRAs by
  (`ss_base_model_version` = `sdxl_base_v1-0`, sd-scripts' `MODEL_VERSION_SDXL_BASE_V1_0`; `ss_network_module`,
  `ss_network_dim`, `ss_network_alpha`, `ss_v2`), and the Stability AI model spec
  (https://github.com/Stability-AI/ModelSpec, as sd-scripts' `library/sai_model_spec.py` fills it for an SDXL LoRA):
  `modelspec.sai_model_spec` 1.0.0, `modelspec.architecture` `stable-diffusion-xl-v1-base/lora`,
  `modelspec.implementation` `https://github.com/Stability-AI/generative-models`, `modelspec.title`,
  `modelspec.resolution`, `modelspec.prediction_type`. No date, so the same LoRA gives the same bytes.

The diffusers file records the trained `lora_alpha` only in its safetensors metadata (`lora_adapter_metadata`,
when the trainer saved it); without it, diffusers loads with `alpha = rank`, and so does the kohya copy, so that
both files mean the same model.
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
}  # as sd-scripts writes them for SDXL (and diffusers' convert_state_dict_to_kohya)


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


# the SDXL base UNet's layout; a LoRA trained on another UNet passes that UNet's config
SDXL_UNET_LAYOUT = {
    "layers_per_block": 2,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
}
SDXL_BASE_MODEL_VERSION = "sdxl_base_v1-0"  # sd-scripts' sdxl_model_util.MODEL_VERSION_SDXL_BASE_V1_0
SDXL_LORA_ARCHITECTURE = "stable-diffusion-xl-v1-base/lora"  # model spec: architecture id + "/lora"
SGM_IMPLEMENTATION = "https://github.com/Stability-AI/generative-models"
# inside a block: diffusers' ResnetBlock2D names -> the SGM ResBlock's (attention blocks are named alike)
SGM_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
SGM_TOP_LEVEL = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


def sgm_block_prefixes(unet_config: dict) -> dict[str, str]:
    """diffusers block prefix -> SGM block prefix, from the UNet's structure: each down block is `layers_per_block`
    input blocks (resnet = sub-module 0, attention = 1) and one more for its downsampler (`.0.op`) unless it is the
    last; the middle block is resnet, attention, resnet; each up block is `layers_per_block + 1` output blocks and
    its upsampler follows the last one's resnet (and attention, if the block has attentions)."""
    layers = unet_config["layers_per_block"]
    prefixes: dict[str, str] = {}
    index = 1
    down_blocks = unet_config["down_block_types"]
    for block, kind in enumerate(down_blocks):
        for layer in range(layers):
            prefixes[f"down_blocks.{block}.resnets.{layer}"] = f"input_blocks.{index}.0"
            if "CrossAttn" in kind:
                prefixes[f"down_blocks.{block}.attentions.{layer}"] = f"input_blocks.{index}.1"
            index += 1
        if block < len(down_blocks) - 1:
            prefixes[f"down_blocks.{block}.downsamplers.0.conv"] = f"input_blocks.{index}.0.op"
            index += 1
    prefixes |= {
        "mid_block.resnets.0": "middle_block.0",
        "mid_block.attentions.0": "middle_block.1",
        "mid_block.resnets.1": "middle_block.2",
    }
    index = 0
    up_blocks = unet_config["up_block_types"]
    for block, kind in enumerate(up_blocks):
        attention = "CrossAttn" in kind
        for layer in range(layers + 1):
            prefixes[f"up_blocks.{block}.resnets.{layer}"] = f"output_blocks.{index}.0"
            if attention:
                prefixes[f"up_blocks.{block}.attentions.{layer}"] = f"output_blocks.{index}.1"
            if layer == layers and block < len(up_blocks) - 1:
                prefixes[f"up_blocks.{block}.upsamplers.0"] = f"output_blocks.{index}.{2 if attention else 1}"
            index += 1
    return prefixes


def sgm_module_name(module: str, unet_config: dict) -> str:
    """The SGM name of a diffusers UNet module (`up_blocks.0.attentions.1.transformer_blocks.0.attn1.to_q` ->
    `output_blocks.1.1.transformer_blocks.0.attn1.to_q` for SDXL)."""
    if module in SGM_TOP_LEVEL:
        return SGM_TOP_LEVEL[module]
    for prefix, sgm in sorted(sgm_block_prefixes(unet_config).items(), key=lambda item: -len(item[0])):
        if module == prefix or module.startswith(prefix + "."):
            rest = module[len(prefix) + 1 :]
            if ".resnets." in prefix + ".":
                rest = SGM_RESNET.get(rest, rest)
            return f"{sgm}.{rest}" if rest else sgm
    raise ValueError(f"UNet module {module!r} has no place in the SGM layout of this UNet")


def save_with_sorted_metadata(tensors: dict, out_file: Path, metadata: dict[str, str]) -> None:
    """`safetensors.torch.save_file` with the metadata in sorted order: safetensors writes its metadata map in an
    order that changes from process to process, and the same LoRA must give the same bytes (and sha256)."""
    from safetensors.torch import save

    raw = save(tensors, metadata=metadata)
    length = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + length])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data stays 8-byte aligned, as safetensors keeps it
    out_file.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + length :])


def save_kohya_lora(
    diffusers_lora_file: str | Path,
    out_file: str | Path,
    *,
    lora_alpha: float | None = None,
    unet_config: dict | None = None,
    resolution: int = 1024,
    prediction_type: str | None = None,
    title: str = "vehicle-diff SDXL LoRA",
) -> Path:
    """Write a native SDXL kohya copy of a diffusers SDXL LoRA file: SGM key names for the UNet (from
    `unet_config`, the SDXL base layout if not given), diffusers' `convert_state_dict_to_kohya` names for the text
    encoders, each module's `.alpha` set to its trained alpha (from the file's metadata, or `lora_alpha`, else the
    rank), and sd-scripts' and the model spec's metadata."""
    import torch
    from diffusers.utils import convert_state_dict_to_kohya, convert_state_dict_to_peft, convert_unet_state_dict_to_peft
    from safetensors import safe_open

    layout = {key: list(value) if isinstance(value, tuple) else value for key, value in (unet_config or {}).items()}
    layout = {key: layout.get(key, default) for key, default in SDXL_UNET_LAYOUT.items()}
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
    names = {}  # diffusers-derived kohya module name -> (component, peft module name, native kohya module name)
    for key in peft_state_dict:
        if key.endswith(".lora_A.weight"):
            component, module = key.removesuffix(".lora_A.weight").split(".", 1)
            native = sgm_module_name(module, layout) if component == "unet" else module
            names[f"{KOHYA_PREFIXES[component]}_{module.replace('.', '_')}"] = (
                component,
                module,
                f"{KOHYA_PREFIXES[component]}_{native.replace('.', '_')}",
            )
    native_state_dict, ranks, alphas = {}, [], []
    for key, value in kohya.items():
        name, _, suffix = key.partition(".")
        component, module, native = names[name]
        if suffix == "alpha":
            rank = kohya[f"{name}.lora_down.weight"].shape[0]
            alpha = module_alpha(module, rank, configs.get(component, {}), lora_alpha)
            value = torch.tensor(alpha, dtype=torch.float32)
            ranks.append(rank)
            alphas.append(alpha)
        native_state_dict[f"{native}.{suffix}"] = value.contiguous()
    if len(native_state_dict) != len(kohya):
        raise ValueError(f"{diffusers_lora_file}: two modules map to one kohya name")
    kohya_metadata = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(max(set(ranks), key=ranks.count)),
        "ss_network_alpha": format_number(max(set(alphas), key=alphas.count)),
        "ss_base_model_version": SDXL_BASE_MODEL_VERSION,
        "ss_v2": "False",
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": SDXL_LORA_ARCHITECTURE,
        "modelspec.implementation": SGM_IMPLEMENTATION,
        "modelspec.title": title,
        "modelspec.resolution": f"{resolution}x{resolution}",
        "modelspec.prediction_type": "v" if prediction_type == "v_prediction" else "epsilon",
    }
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    save_with_sorted_metadata(native_state_dict, out_file, kohya_metadata)
    return out_file


def format_number(value: float) -> str:
    """`8.0` -> `8`, `0.5` -> `0.5`: as sd-scripts writes a network alpha given on its command line."""
    return str(int(value)) if float(value).is_integer() else str(value)


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
