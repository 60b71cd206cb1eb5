"""Referral of unfamiliar images: a feature-space distance to the training data.

Core (Ray-free). Fitted on the training split's penultimate-layer features of each backbone:
class means and one shared covariance (a Mahalanobis detector); the score of an image is its
distance to the nearest class mean. Higher = less like the training images.
"""
from __future__ import annotations

import numpy as np


def fit(features: np.ndarray, labels: np.ndarray, num_classes: int, shrinkage: float = 1e-3) -> dict[str, np.ndarray]:
    """Statistics to save (safetensors-ready: a dict of float32 arrays)."""
    feats = np.asarray(features, np.float64)
    means = np.stack([feats[labels == c].mean(0) if np.any(labels == c) else feats.mean(0)
                      for c in range(num_classes)])
    centred = feats - means[labels]
    cov = centred.T @ centred / max(len(feats) - 1, 1)
    cov += shrinkage * np.trace(cov) / cov.shape[0] * np.eye(cov.shape[0])  # keep it invertible
    precision = np.linalg.inv(cov)
    return {"means": means.astype(np.float32), "precision": precision.astype(np.float32)}


def score(features: np.ndarray, stats: dict[str, np.ndarray]) -> np.ndarray:
    """Squared Mahalanobis distance to the nearest class mean, per row (float32)."""
    feats = np.asarray(features, np.float64)
    means, prec = stats["means"].astype(np.float64), stats["precision"].astype(np.float64)
    d = feats[:, None, :] - means[None, :, :]                      # N x C x D
    m = np.einsum("ncd,de,nce->nc", d, prec, d)
    return m.min(axis=1).astype(np.float32)
