"""Image statistics of a whole field, and how unlike the training fields they are.

Core (Ray-free). The network's feature distance (models.feature_distance) sees the model input, which the HSV
segmentation has already reduced to the stained cells: a blurred, noisy, re-stained or faded field
can still look like a blast there. These statistics look at the original field instead: focus,
noise, contrast, the stain's hue and strength, the illumination, the background's colour, and the
size and shape of the stained objects. Every training image comes from one lab's microscope and
stain, so these numbers sit in a tight cloud, and a field from elsewhere falls outside it.

`features_of(field)` → one float32 vector per image (FEATURES names its entries), computed on the
field at the model's working resolution (imaging.model_input: 224² for every model so far, so archives
of any resolution compare with the training images) from the HSV and mask its model input used;
`features(rgb, seg)` the same on a STATS_SIZE² copy of a decoded field.
`fit(train_features)` → a Gaussian model of the training fields (standardised, Ledoit-Wolf
shrunk, as models.feature_distance with one class); `score(features, stats)` → squared Mahalanobis distance,
higher = less like the training fields. Bulk classification and training call the same
`features`, so the score means the same in both.
"""
from __future__ import annotations

import cv2
import numpy as np

from ..config import SegmentConfig
from ..imaging.hsv import Components
from ..imaging.model_input import STATS_SIZE, WorkingField, resize_square
from . import feature_distance

FEATURES = (
    "sharpness", "noise", "gradient",                       # focus, sensor noise, texture
    "hue_cos", "hue_sin", "sat_mean", "sat_std", "val_mean", "val_std",   # stain and illumination
    "log_mask_fraction", "mask_hue_cos", "mask_hue_sin", "mask_sat", "mask_val",  # the stained cells
    "bg_r", "bg_g", "bg_b",                                 # background and red cells
    "log_components", "log_largest", "solidity",            # how many stained objects, how big, how round
)
PREFIX = "image_"   # key prefix of these statistics inside a model's ood.safetensors
# Immerkær's noise estimator: the Laplacian difference kernel cancels smooth image content.
_NOISE_KERNEL = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
# cos and sin of each OpenCV hue (0..179 = 0..360°), the float32 values a per-pixel cos / sin gave
_ANGLE = np.arange(180, dtype=np.float32) * np.float32(2 * np.pi / 180)
_COS_SIN = np.stack([np.cos(_ANGLE), np.sin(_ANGLE)]).astype(np.float64)
_LEVELS = np.arange(256, dtype=np.float64)


def _hue(hsv: np.ndarray, mask: np.ndarray | None) -> tuple[float, float]:
    """Saturation-weighted circular mean of OpenCV hue as (cos, sin) (red sits at both ends of the
    range), over the pixels of mask (all without one). From the joint hue × saturation histogram:
    one counting pass instead of a float copy, a cos and a sin per pixel."""
    hist = cv2.calcHist([hsv], [0, 1], mask, [180, 256], [0, 180, 0, 256])
    sat_by_hue = hist.astype(np.float64) @ _LEVELS
    cos, sin = _COS_SIN @ sat_by_hue / (sat_by_hue.sum() + 1e-6)
    return float(cos), float(sin)


def _texture(grey: np.ndarray) -> list[float]:
    """Focus (variance of the Laplacian), noise (Immerkær's σ) and mean gradient of a uint8 grey field."""
    lap = cv2.meanStdDev(cv2.Laplacian(grey, cv2.CV_32F))[1][0, 0] ** 2
    noise = cv2.filter2D(grey, cv2.CV_32F, _NOISE_KERNEL)[1:-1, 1:-1]
    sigma = cv2.norm(noise, cv2.NORM_L1) / noise.size * np.sqrt(np.pi / 2) / 6
    grad = cv2.mean(cv2.magnitude(cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1)))[0]
    return [float(np.log1p(lap)), float(np.log(sigma + 1e-2)), float(np.log1p(grad))]


def _shape(parts: Components) -> list[float]:
    """Count of stained objects, area share of the largest, and its solidity (area / convex hull area),
    from the components the segmentation labelled (imaging.hsv.Components: no second labelling)."""
    kept = np.flatnonzero(parts.areas)
    if not len(kept):
        return [0.0, float(np.log(1e-3)), 0.0]
    big = int(parts.areas.argmax())   # the first of equal largest in label order, as a fresh labelling gives
    largest = int(parts.areas[big])
    contours, _ = cv2.findContours((parts.labels == big).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    hull = cv2.contourArea(cv2.convexHull(max(contours, key=cv2.contourArea)))
    return [float(np.log1p(len(kept))), float(np.log(largest / parts.mask.size + 1e-3)), float(largest / max(hull, 1.0))]


def features(rgb: np.ndarray, seg: SegmentConfig | None = None) -> np.ndarray:
    """FEATURES of one uint8 RGB field (any size), float32, on its STATS_SIZE² copy; `seg`: the model's
    segmentation (default HSV). The read path's own view: features_of(preprocess(...).field)."""
    return features_of(WorkingField(resize_square(rgb, STATS_SIZE), seg or SegmentConfig()))


def features_of(field: WorkingField) -> np.ndarray:
    """FEATURES of a field at its working resolution, from the HSV and mask the model input used too.
    OpenCV's reductions (accumulating in float64) where numpy's float32 ones were: the values agree
    with those to float32 rounding (tests/unit/imaging/test_read_path_equality.py)."""
    rgb, hsv, mask = field.rgb, field.hsv, field.mask
    kept = cv2.countNonZero(mask)
    mean, std = (v[:, 0] for v in cv2.meanStdDev(hsv))
    cells = [*_hue(hsv, mask), *cv2.mean(hsv, mask=mask)[1:3]] if kept else [0.0] * 4
    background = cv2.mean(rgb, mask=cv2.bitwise_not(mask))[:3] if kept < mask.size else cv2.mean(rgb)[:3]
    out = (_texture(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)) + [*_hue(hsv, None), mean[1], std[1], mean[2], std[2]]
           + [float(np.log(kept / mask.size + 1e-3))] + cells + list(background) + _shape(field.components))
    return np.asarray(out, np.float32)


def fit(train_features: np.ndarray, folds: int = 5, seed: int = 0) -> dict[str, np.ndarray]:
    """A Gaussian model of the training fields' statistics (safetensors-ready float32 arrays, PREFIX keys).

    Also `calibration`: every training field's score under a model fitted without its fold
    (k-fold, out-of-fold), i.e. how in-distribution fields score. The referral threshold is a tail
    quantile of these plus the validation scores: ~10x more fields than validation alone.
    """
    feats = _check(train_features)
    if len(feats) < 2:
        raise ValueError(f"image statistics need at least 2 training images, got {len(feats)}")
    stats = _gaussian(feats)
    calibration = np.zeros(0, np.float32)
    if len(feats) >= 10 * folds:
        fold = np.random.default_rng(seed).permutation(len(feats)) % folds
        calibration = np.empty(len(feats), np.float32)
        for k in range(folds):
            calibration[fold == k] = score(feats[fold == k], _gaussian(feats[fold != k]))
    return {**stats, PREFIX + "calibration": calibration}


def _gaussian(feats: np.ndarray) -> dict[str, np.ndarray]:
    mean = feats.mean(0)
    scale = np.maximum(feats.std(0), 1e-6)   # a constant feature (e.g. no texture at all) must not divide by 0
    stats = feature_distance.fit((feats - mean) / scale, np.zeros(len(feats), int), 1, normalize=False)
    stats.update(mean=mean.astype(np.float32), scale=scale.astype(np.float32))
    return {PREFIX + k: v for k, v in stats.items()}


def score(feats: np.ndarray, stats: dict[str, np.ndarray]) -> np.ndarray:
    """Squared Mahalanobis distance of each row's statistics to the training fields' (float32 N)."""
    own = {k[len(PREFIX):]: np.asarray(v) for k, v in stats.items() if k.startswith(PREFIX)}
    feats = _check(feats)
    if len(feats) == 0:
        return np.zeros(0, np.float32)
    return feature_distance.score((feats - own["mean"]) / own["scale"], own)


def has_stats(stats: dict | None) -> bool:
    return bool(stats) and PREFIX + "precision" in stats


def calibration(stats: dict | None) -> np.ndarray | None:
    """The training fields' out-of-fold scores, or None (too few training images, or older statistics)."""
    c = None if not stats else stats.get(PREFIX + "calibration")
    return np.asarray(c, np.float64) if c is not None and np.size(c) else None


def _check(feats: np.ndarray) -> np.ndarray:
    feats = np.asarray(feats, np.float64)
    if feats.size == 0:                        # no rows, whatever shape the empty input had
        feats = feats.reshape(0, len(FEATURES))
    if feats.ndim != 2 or feats.shape[1] != len(FEATURES):
        raise ValueError(f"image statistics must be N x {len(FEATURES)} ({', '.join(FEATURES)}), got {feats.shape}")
    return feats
