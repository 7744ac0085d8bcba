"""Fréchet distance between two sets of image features (FID when the features are Inception-v3 pool3).

d^2 = ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2})      (Heusel et al., 2017)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vehicle_diff.errors import UserInputError


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of an (n, d) feature matrix, in float64."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors, got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0, None))) @ eigenvectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Squared Fréchet distance of two Gaussians. Tr((S_1 S_2)^{1/2}) is the sum of the singular values of
    S_2^{1/2} S_1^{1/2} (their squares are the eigenvalues of S_1^{1/2} S_2 S_1^{1/2}, which has the spectrum of
    S_1 S_2): real arithmetic, no complex sqrtm, and no squared matrices whose rounding would swamp the result."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    trace_sqrt = np.linalg.svd(_psd_sqrt(sigma2) @ _psd_sqrt(sigma1), compute_uv=False).sum()
    difference = mu1 - mu2
    return float(difference @ difference + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt)


def frechet_distance_of_features(features1: np.ndarray, features2: np.ndarray) -> float:
    return frechet_distance(*feature_statistics(features1), *feature_statistics(features2))


@dataclass
class FidConfig:
    """FID between two image folders (paper Table IV), with Inception-v3 weights you supply."""

    output_dir: str = field(default="vehicle-diff-output/fid", metadata={"help": "fid.json"})
    preset: str = field(default="paper", metadata={"help": "paper, tiny, or a YAML file"})
    real_images: str = field(default="", metadata={"help": "folder of real images (recursive)"})
    generated_images: str = field(default="", metadata={"help": "folder of generated images (recursive)"})
    inception_weights: str | None = field(
        default=None, metadata={"help": "torchvision inception_v3 state dict (.safetensors or .pth)"}
    )
    batch_size: int = 32
    max_images: int | None = field(default=None, metadata={"help": "a seeded sample of at most this many per side"})
    seed: int = 0


def inception_features_model(weights: str | None):
    """torchvision's Inception-v3 with its classifier removed: 2048-d pool features."""
    import torch
    from torchvision.models import inception_v3

    if not weights:
        raise UserInputError(
            "--inception_weights is required: FID needs Inception-v3 weights and nothing is downloaded here. Pass a "
            "local torchvision inception_v3 state dict (e.g. inception_v3_google-0cc3c7bd.pth, or it converted to "
            ".safetensors). FIDs are comparable only with FIDs computed from the same weights."
        )
    path = Path(weights)
    if not path.is_file():
        raise UserInputError(f"--inception_weights {weights}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)  # tensors only: no code is unpickled
    model = inception_v3(weights=None, aux_logits=True, init_weights=False)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise UserInputError(
            f"--inception_weights {weights}: not a torchvision inception_v3 state dict ({str(error)[:200]})"
        ) from error
    model.fc = torch.nn.Identity()
    return model.eval()


def image_features(model, files: list[Path], batch_size: int, device) -> np.ndarray:
    import torch
    from PIL import Image
    from torchvision import transforms

    transform = transforms.Compose([transforms.Resize((299, 299)), transforms.ToTensor(),
                                    transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])  # fmt: skip
    features = []
    with torch.no_grad():
        for start in range(0, len(files), batch_size):
            batch = []
            for file in files[start : start + batch_size]:
                with Image.open(file) as image:
                    batch.append(transform(image.convert("RGB")))
            features.append(model(torch.stack(batch).to(device)).float().cpu().numpy())
    return np.concatenate(features)


def main(argv: list[str] | None = None) -> Path:
    import json
    import random

    import torch

    from generation.select import real_image_files
    from vehicle_diff.config import parse_config, save_config

    config = parse_config(FidConfig, "fid", argv)
    model = inception_features_model(config.inception_weights)
    sides = {}
    for name in ("real_images", "generated_images"):
        if not getattr(config, name):
            raise UserInputError(f"--{name} is required")
        files = real_image_files(getattr(config, name))
        if config.max_images and len(files) > config.max_images:
            files = sorted(random.Random(config.seed).sample(files, config.max_images))
        sides[name] = files
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    features = {name: image_features(model, files, config.batch_size, device) for name, files in sides.items()}
    fid = frechet_distance_of_features(features["real_images"], features["generated_images"])
    out_dir = Path(config.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {"fid": fid, "real_images": len(sides["real_images"]), "generated_images": len(sides["generated_images"]),
              "features": "torchvision inception_v3 pool (2048-d)", "weights": config.inception_weights}  # fmt: skip
    (out_dir / "fid.json").write_text(json.dumps(result, indent=2))
    save_config(config, out_dir / "config.yaml", stage="fid")
    print(
        f"FID {fid:.3f} ({result['real_images']} real vs {result['generated_images']} generated images); {out_dir / 'fid.json'}"
    )
    return out_dir


if __name__ == "__main__":
    from vehicle_diff.cli import run_main

    run_main(main)
