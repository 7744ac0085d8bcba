"""The re-ID network (paper §III-D): a timm backbone, a BatchNorm-neck embedding head, and an auxiliary head on
an intermediate stage (GoogLeNet-style) trained with the same losses; plus circle loss.

`ReIDModel.from_pretrained(repo_or_folder)` rebuilds it in one call (huggingface_hub's PyTorchModelHubMixin:
`config.json` + `model.safetensors`); the backbone is described by its timm architecture and arguments, so no
backbone download is needed to load a trained model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import nn


def backbone_spec(model_id: str) -> tuple[str, dict]:
    """timm architecture name and constructor arguments of a model id or a timm-format folder."""
    from vehicle_diff.models import resolve_model

    path = Path(resolve_model(model_id))
    if path.is_dir():
        config = json.loads((path / "config.json").read_text())
        return config["architecture"], config.get("model_args", {})
    return model_id.removeprefix("hf-hub:").split("/")[-1].split(".")[0], {}


class BNNeckHead(nn.Module):
    """Pool -> embedding (metric losses) -> BatchNorm (its bias frozen) -> classifier (cross-entropy)."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.neck = nn.BatchNorm1d(channels)
        self.neck.bias.requires_grad_(False)
        self.classifier = nn.Linear(channels, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)

    def forward(self, feature_map: torch.Tensor):
        embedding = feature_map.mean(dim=(2, 3))
        normalized = self.neck(embedding)
        return embedding, normalized, self.classifier(normalized)


class ReIDModel(
    nn.Module, PyTorchModelHubMixin, library_name="vehicle-diff", tags=["vehicle-re-identification", "vehicle-diff"]
):
    def __init__(self, architecture: str = "resnet50", backbone_args: dict | None = None, num_classes: int = 576,
                 last_stride_1: bool = True, aux_head: bool = True, image_size: list[int] | None = None):  # fmt: skip
        super().__init__()
        import timm

        self.image_size = list(image_size or [256, 256])
        self.backbone = timm.create_model(
            architecture, pretrained=False, features_only=True, out_indices=(-2, -1), **(backbone_args or {})
        )
        self._setup(last_stride_1)
        channels = self.backbone.feature_info.channels()
        self.head = BNNeckHead(channels[-1], num_classes)
        self.aux_head = BNNeckHead(channels[-2], num_classes) if aux_head else None

    def _setup(self, last_stride_1: bool) -> None:
        self.channels_last_output = str(getattr(self.backbone, "output_fmt", "NCHW")).endswith("NHWC")
        if last_stride_1 and hasattr(self.backbone, "layer4"):  # ResNets: keep 2x the spatial resolution at the end
            block = self.backbone.layer4[0]
            (block.conv2 if hasattr(block, "conv3") else block.conv1).stride = (1, 1)  # bottleneck / basic block
            for module in block.downsample or []:
                if isinstance(module, nn.Conv2d):
                    module.stride = (1, 1)

    def load_backbone(self, model_id: str) -> None:
        """Start from the weights of a timm id or folder (the paper: ImageNet-trained backbones)."""
        from vehicle_diff.models import create_timm

        pretrained = create_timm(model_id, pretrained=True, features_only=True, out_indices=(-2, -1))
        self.backbone.load_state_dict(pretrained.state_dict())

    def feature_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        maps = self.backbone(images)
        return [m.permute(0, 3, 1, 2) for m in maps] if self.channels_last_output else maps

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


def reid_loss(outputs: dict, labels: torch.Tensor, *, label_smoothing: float, circle_m: float, circle_gamma: float,
              aux_weight: float) -> tuple[torch.Tensor, dict]:  # fmt: skip
    """L_total = L_ce + L_circle on the main head, and the same on the auxiliary head (paper §III-D)."""
    parts = {
        "ce": F.cross_entropy(outputs["logits"].float(), labels, label_smoothing=label_smoothing),
        "circle": circle_loss(outputs["embedding"], labels, circle_m, circle_gamma),
    }
    if "aux_logits" in outputs:
        parts["aux_ce"] = aux_weight * F.cross_entropy(
            outputs["aux_logits"].float(), labels, label_smoothing=label_smoothing
        )
        parts["aux_circle"] = aux_weight * circle_loss(outputs["aux_embedding"], labels, circle_m, circle_gamma)
    return sum(parts.values()), {name: value.item() for name, value in parts.items()}
