"""Fréchet distance between two sets of features (FID when they are Inception-v3 pool3 features; FD-CLIP for
the candidate selection's CLIP features). Shared by `fid` and `select`, so neither imports the other.

d^2 = ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2})      (Heusel et al., 2017)
"""

from __future__ import annotations

import numpy as np


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
