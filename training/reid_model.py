"""The re-ID network (paper §III-D): a timm backbone, a BatchNorm-neck embedding head, and an auxiliary head on
an intermediate stage (GoogLeNet-style) trained with the same losses; plus circle loss.

The trained architecture is expressed in timm's own configuration, so a saved model is a folder (or Hub repo) that
two libraries load in one call:

- `timm.create_model("hf-hub:ORG/REPO", pretrained=True)` / `("local-dir:DIR", pretrained=True)`: the embedding
  the card's metrics were computed with. `config.json` holds timm's `architecture`, `model_args` (a last stride of
  1 is timm's `output_stride=16`, for the families that take it) and `pretrained_cfg` (the re-ID preprocessing);
  `model.safetensors` has timm's parameter names, and its classifier is the BN-neck folded into a square Linear
  layer, so timm's `forward` (pool -> Linear) returns the neck's output.
- `ReIDModel.from_pretrained(repo_or_folder)`: the whole re-ID model with its training heads, from the same two
  files plus `reid_heads.safetensors` (neck, classifier, auxiliary head) and the `reid` section of `config.json`.

Everything is safetensors; nothing is unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin, hf_hub_download
from torch import nn

TIMM_CONFIG, BACKBONE_WEIGHTS, HEADS_WEIGHTS = "config.json", "model.safetensors", "reid_heads.safetensors"


def backbone_spec(model_id: str) -> tuple[str, dict]:
    """timm architecture name and constructor arguments of a model id or a timm-format folder."""
    from vehicle_diff.models import resolve_model

    path = Path(resolve_model(model_id))
    if path.is_dir():
        config = json.loads((path / "config.json").read_text())
        return config["architecture"], config.get("model_args", {})
    return model_id.removeprefix("hf-hub:").split("/")[-1].split(".")[0], {}


class BNNeckHead(nn.Module):
    """Pool -> embedding (metric losses) -> BatchNorm (its bias frozen) -> classifier (cross-entropy). Without
    `bn_neck` (the IDE baseline) the pooled embedding feeds the classifier and is the retrieval feature."""

    def __init__(self, channels: int, num_classes: int, bn_neck: bool = True):
        super().__init__()
        self.neck = nn.BatchNorm1d(channels) if bn_neck else nn.Identity()
        if bn_neck:
            self.neck.bias.requires_grad_(False)
        self.classifier = nn.Linear(channels, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)

    def forward(self, feature_map: torch.Tensor):
        embedding = feature_map.mean(dim=(2, 3))
        normalized = self.neck(embedding)
        return embedding, normalized, self.classifier(normalized)


def timm_model_args(architecture: str, backbone_args: dict, last_stride_1: bool) -> dict:
    """The timm constructor arguments of the trained backbone. A last stride of 1 (the re-ID practice that keeps 2x
    the final resolution) is timm's `output_stride=16`, which ResNets, RegNets, ConvNeXts ... accept and which dilates
    their last stage; families without it (DenseNet, Swin) keep their own stride. Saved as `model_args`, so timm
    builds the same network from the published config."""
    import inspect

    import timm

    args = {k: v for k, v in backbone_args.items() if k != "num_classes"}  # the classifier is the re-ID model's
    if not last_stride_1 or "output_stride" in args:
        return args
    with torch.device("meta"):  # only the class is wanted: no memory, no initialisation
        family = type(timm.create_model(architecture, pretrained=False, num_classes=0, **args))
    if "output_stride" in inspect.signature(family.__init__).parameters:
        return {**args, "output_stride": 16}
    return args


class ReIDModel(
    nn.Module, PyTorchModelHubMixin, library_name="timm", tags=["vehicle-re-identification", "vehicle-diff"]
):
    def __init__(
        self,
        architecture: str = "resnet50",
        backbone_args: dict | None = None,
        num_classes: int = 576,
        last_stride_1: bool = True,
        aux_head: bool = True,
        image_size: list[int] | None = None,
        bn_neck: bool = True,
    ):
        super().__init__()
        import timm

        self.architecture, self.backbone_args = architecture, dict(backbone_args or {})
        self.timm_args = timm_model_args(architecture, self.backbone_args, last_stride_1)
        self.image_size = list(image_size or [256, 256])
        # the whole timm model without its classifier: its parameters keep timm's names, so the saved backbone is
        # an ordinary timm checkpoint; the two last stages come from `forward_intermediates`
        self.backbone = timm.create_model(architecture, pretrained=False, **{**self.timm_args, "num_classes": 0})
        # the backbone's own normalisation: training, the saved config and evaluation all read it from here
        from timm.data import resolve_data_config

        data_config = resolve_data_config(model=self.backbone)
        self.mean, self.std = tuple(data_config["mean"]), tuple(data_config["std"])
        channels = [info["num_chs"] for info in self.backbone.feature_info[-2:]]
        self.head = BNNeckHead(channels[-1], num_classes, bn_neck)
        self.aux_head = BNNeckHead(channels[-2], num_classes, bn_neck) if aux_head else None

    def load_backbone(self, model_id: str) -> None:
        """Start from the weights of a timm id or folder (the paper: ImageNet-trained backbones)."""
        from vehicle_diff.models import create_timm

        pretrained = create_timm(model_id, pretrained=True, num_classes=0)
        self.backbone.load_state_dict(pretrained.state_dict())

    def feature_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The last two stages' outputs (NCHW); the last one after the final norm of the families that have one
        (Swin), as timm's `forward_features` gives it, so that timm's own `forward` computes the same embedding."""
        stages = len(self.backbone.feature_info)
        return self.backbone.forward_intermediates(
            images, indices=[stages - 2, stages - 1], norm=True, intermediates_only=True, output_fmt="NCHW"
        )

    def forward(self, images: torch.Tensor) -> dict:
        intermediate, final = self.feature_maps(images)
        embedding, normalized, logits = self.head(final)
        outputs = {"embedding": embedding, "features": normalized, "logits": logits}
        if self.aux_head is not None and self.training:
            outputs["aux_embedding"], _, outputs["aux_logits"] = self.aux_head(intermediate)
        return outputs

    @torch.no_grad()
    def extract(self, images: torch.Tensor, flip: bool = False) -> torch.Tensor:
        """Retrieval features (after the neck, L2-normalised); `flip` averages with the mirrored image."""
        features = self.head(self.feature_maps(images)[1])[1]
        if flip:
            features = features + self.head(self.feature_maps(images.flip(3))[1])[1]
        return F.normalize(features, dim=1)

    @torch.no_grad()
    def embedding_model(self) -> nn.Module:
        """The timm model a Hub user gets: the trained backbone with its classifier a square Linear layer that is
        the BN-neck in evaluation mode (y = (x - mean) / sqrt(var + eps) * weight + bias, folded into one affine
        map), so `forward` returns the features the evaluation ranks with (before L2 normalisation)."""
        import timm

        neck = self.head.neck
        channels = self.head.classifier.in_features
        model = timm.create_model(self.architecture, pretrained=False, **{**self.timm_args, "num_classes": channels})
        missing, unexpected = model.load_state_dict(self.backbone.state_dict(), strict=False)
        classifier = model.get_classifier()
        if unexpected or {name.rsplit(".", 1)[0] for name in missing} != {self.classifier_name}:
            raise RuntimeError(f"{self.architecture}: the backbone does not fit timm's model ({missing}, {unexpected})")
        if isinstance(neck, nn.BatchNorm1d):
            scale = neck.weight / torch.sqrt(neck.running_var + neck.eps)
            classifier.weight.copy_(torch.diag(scale))
            classifier.bias.copy_(neck.bias - neck.running_mean * scale)
        else:  # the IDE baseline has no neck: the pooled feature is the embedding
            classifier.weight.copy_(torch.eye(channels))
            classifier.bias.zero_()
        return model.eval()

    @property
    def classifier_name(self) -> str:
        """Where timm keeps the classifier of this family (`fc`, `classifier`, `head.fc`)."""
        return self.backbone.pretrained_cfg["classifier"]

    def _save_pretrained(self, save_directory: Path) -> None:
        """timm's own export of `embedding_model()` (config.json + model.safetensors) with the re-ID preprocessing
        as its `pretrained_cfg`, the re-ID init arguments as `config.json["reid"]`, and the heads beside it."""
        import timm
        from safetensors.torch import save_file

        save_directory = Path(save_directory)
        data_config = {
            "input_size": (3, *self.image_size),
            "mean": self.mean,
            "std": self.std,
            "interpolation": "bilinear",
            "crop_pct": 1.0,
        }
        model = self.embedding_model()
        try:
            timm.models.save_for_hf(
                model, save_directory, model_args=self.timm_args, data_config=data_config, safe_serialization=True
            )
        except ValueError:  # a fixed-size architecture (SwinV2) keeps its own input size
            data_config.pop("input_size")
            timm.models.save_for_hf(
                model, save_directory, model_args=self.timm_args, data_config=data_config, safe_serialization=True
            )
        config = json.loads((save_directory / TIMM_CONFIG).read_text())
        # the pretrained_cfg timm copied from the architecture's default tag describes ImageNet weights, not these
        for key in ("license", "origin_url", "paper_ids", "hf_hub_id"):
            config["pretrained_cfg"].pop(key, None)
        config["pretrained_cfg"]["tag"] = "vehicle_diff_reid"
        config["reid"] = dict(self._hub_mixin_config)
        (save_directory / TIMM_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        heads = {f"head.{k}": v for k, v in self.head.state_dict().items()}
        if self.aux_head is not None:
            heads |= {f"aux_head.{k}": v for k, v in self.aux_head.state_dict().items()}
        save_file({k: v.contiguous() for k, v in heads.items()}, save_directory / HEADS_WEIGHTS)

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None,
        cache_dir,
        force_download: bool,
        local_files_only: bool,
        token,
        config: dict | None = None,
        map_location: str = "cpu",
        strict: bool = True,
        **model_kwargs,
    ):
        """Build from `config.json["reid"]`, then load the backbone and heads files (safetensors only)."""
        from safetensors.torch import load_file

        if not config or "reid" not in config:
            raise ValueError(f"{model_id}: config.json has no `reid` section; not a vehicle-diff re-ID model")
        # the mixin also passes config.json's top-level keys that match __init__ (timm's `num_classes` is the
        # backbone's, 0): only what the caller gave explicitly overrides the saved re-ID arguments
        overrides = {key: value for key, value in model_kwargs.items() if key not in config}
        model = cls(**{**config["reid"], **overrides})

        def fetch(name: str) -> str:
            if Path(model_id).is_dir():
                return str(Path(model_id) / name)
            return hf_hub_download(
                model_id,
                name,
                revision=revision,
                cache_dir=cache_dir,
                force_download=force_download,
                token=token,
                local_files_only=local_files_only,
            )

        backbone = load_file(fetch(BACKBONE_WEIGHTS), device=map_location)
        prefix = model.classifier_name + "."  # the folded neck timm uses; the neck itself is in the heads file
        model.backbone.load_state_dict({k: v for k, v in backbone.items() if not k.startswith(prefix)}, strict=strict)
        heads = load_file(fetch(HEADS_WEIGHTS), device=map_location)
        model.head.load_state_dict(
            {k.removeprefix("head."): v for k, v in heads.items() if k.startswith("head.")}, strict=strict
        )
        if model.aux_head is not None:
            model.aux_head.load_state_dict(
                {k.removeprefix("aux_head."): v for k, v in heads.items() if k.startswith("aux_head.")}, strict=strict
            )
        return model.eval()


def circle_loss(embeddings: torch.Tensor, labels: torch.Tensor, m: float = 0.25, gamma: float = 128.0) -> torch.Tensor:
    """Circle loss (Sun et al., CVPR 2020), pair-wise form, on cosine similarities of L2-normalised embeddings.

    Per anchor: log(1 + sum_n exp(gamma a_n (s_n - m)) * sum_p exp(-gamma a_p (s_p - 1 + m))), with the
    self-paced weights a_p = [1 + m - s_p]+ and a_n = [s_n + m]+ held constant (no gradient), averaged over
    anchors that have a positive and a negative in the batch.
    """
    normalized = F.normalize(embeddings.float(), dim=1)
    similarity = normalized @ normalized.T
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    positive, negative = same & ~eye, ~same
    alpha_p = (1 + m - similarity).clamp(min=0).detach()
    alpha_n = (similarity + m).clamp(min=0).detach()
    logit_p = -gamma * alpha_p * (similarity - (1 - m))
    logit_n = gamma * alpha_n * (similarity - m)
    neg_inf = torch.finfo(similarity.dtype).min
    lse_p = torch.logsumexp(logit_p.masked_fill(~positive, neg_inf), dim=1)
    lse_n = torch.logsumexp(logit_n.masked_fill(~negative, neg_inf), dim=1)
    valid = positive.any(dim=1) & negative.any(dim=1)
    if not valid.any():
        return similarity.sum() * 0.0
    return F.softplus(lse_p + lse_n)[valid].mean()


def reid_loss(
    outputs: dict,
    labels: torch.Tensor,
    *,
    label_smoothing: float,
    circle_m: float,
    circle_gamma: float,
    aux_weight: float,
    circle: bool = True,
) -> tuple[torch.Tensor, dict]:
    """L_total = L_ce + L_circle on the main head, and the same on the auxiliary head (paper §III-D); without
    `circle`, cross-entropy alone (the IDE baseline)."""
    parts = {"ce": F.cross_entropy(outputs["logits"].float(), labels, label_smoothing=label_smoothing)}
    if circle:
        parts["circle"] = circle_loss(outputs["embedding"], labels, circle_m, circle_gamma)
    if "aux_logits" in outputs:
        parts["aux_ce"] = aux_weight * F.cross_entropy(
            outputs["aux_logits"].float(), labels, label_smoothing=label_smoothing
        )
        if circle:
            parts["aux_circle"] = aux_weight * circle_loss(outputs["aux_embedding"], labels, circle_m, circle_gamma)
    return sum(parts.values()), {name: value.item() for name, value in parts.items()}
