"""Referral of unfamiliar images: a feature-space distance to the training data.

Core (Ray-free). Fitted on the training split's penultimate-layer features of each backbone:
class means and one shared covariance (a Mahalanobis detector); the score of an image is its
squared distance to the nearest class mean. Higher = less like the training images.

Two choices that matter with ~2 000 training images and 1 920-2 048 feature dimensions:
features are L2-normalised first (the direction of a feature vector carries the class evidence,
its norm mostly the contrast of the image; normalised Mahalanobis separates far-OOD images much
better), and the covariance is Ledoit-Wolf shrunk (the sample covariance is singular when
samples < dimensions, and a fixed ridge either under- or over-regularises).
"""
from __future__ import annotations

import numpy as np
from sklearn.covariance import ledoit_wolf


def _prepare(features: np.ndarray, normalize: bool) -> np.ndarray:
    feats = np.asarray(features, np.float64)
    if feats.ndim != 2:
        raise ValueError(f"ood features must be N x D, got shape {feats.shape}")
    if normalize:
        feats = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    return feats


def fit(features: np.ndarray, labels: np.ndarray, num_classes: int, normalize: bool = True) -> dict[str, np.ndarray]:
    """Statistics to save (safetensors-ready: a dict of float32 arrays)."""
    labels = np.asarray(labels)
    feats = _prepare(features, normalize)
    means = np.stack([feats[labels == c].mean(0) if np.any(labels == c) else feats.mean(0)
                      for c in range(num_classes)])
    centred = feats - means[labels]
    cov, _ = ledoit_wolf(centred, assume_centered=True)
    precision = np.linalg.pinv(cov, hermitian=True)
    return {"means": means.astype(np.float32), "precision": precision.astype(np.float32),
            "normalize": np.array([1.0 if normalize else 0.0], np.float32)}


def score(features: np.ndarray, stats: dict[str, np.ndarray]) -> np.ndarray:
    """Squared Mahalanobis distance to the nearest class mean, per row (float32)."""
    normalize = bool(np.asarray(stats.get("normalize", [0.0])).ravel()[0])  # old stats: raw features
    feats = _prepare(features, normalize)
    means, prec = stats["means"].astype(np.float64), stats["precision"].astype(np.float64)
    best = np.full(len(feats), np.inf)
    for mu in means:                                   # C x (N x D @ D x D): no N x C x D x D temporaries
        d = feats - mu
        best = np.minimum(best, np.einsum("nd,nd->n", d @ prec, d))
    return best.astype(np.float32)
