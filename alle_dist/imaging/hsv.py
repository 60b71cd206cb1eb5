"""The paper's HSV colour-interval segmentation of lymphoblasts (pure: numpy + OpenCV).

RGB → HSV; pixels inside [hsv_lower, hsv_upper] are the stained cells; a morphological opening and
closing clean the mask, small components (red-cell rims, debris) are dropped, and the mask is
applied to the image. Thresholds and their choice: docs/segmentation.md.
"""
from __future__ import annotations

import cv2
import numpy as np

from ..config import SegmentConfig


def hsv_mask(rgb: np.ndarray, cfg: SegmentConfig, hsv: np.ndarray | None = None) -> np.ndarray:
    """Binary uint8 mask (0 / 255) of the pixels inside the HSV interval, cleaned up; pass `hsv`
    (cv2.COLOR_RGB2HSV of rgb) when the caller has it already."""
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV) if hsv is None else hsv
    mask = cv2.inRange(hsv, np.array(cfg.hsv_lower, np.uint8), np.array(cfg.hsv_upper, np.uint8))
    if cfg.open_kernel > 1:
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (cfg.open_kernel, cfg.open_kernel))
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, k)
    if cfg.close_kernel > 1:
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (cfg.close_kernel, cfg.close_kernel))
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, k)
    if cfg.min_component_px > 0:
        mask = _drop_small_components(mask, cfg.min_component_px)
    return mask


def _drop_small_components(mask: np.ndarray, min_px: int) -> np.ndarray:
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    keep = np.zeros(n, bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_px
    return np.where(keep[labels], 255, 0).astype(np.uint8)


def segment_image(rgb: np.ndarray, cfg: SegmentConfig = SegmentConfig()) -> tuple[np.ndarray, np.ndarray]:
    """(masked image, mask): pixels outside the mask set to cfg.background."""
    mask = hsv_mask(rgb, cfg)
    out = np.full_like(rgb, cfg.background)
    np.copyto(out, rgb, where=mask[:, :, None].astype(bool))
    return out, mask


def mask_fraction(mask: np.ndarray) -> float:
    return float(np.count_nonzero(mask)) / mask.size
