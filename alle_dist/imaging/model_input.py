"""The model input of every stage (training, post-training export, bulk classification): one function,
so training and serving can't drift apart."""
from __future__ import annotations

import cv2
import numpy as np

from ..config import SegmentConfig
from .hsv import mask_fraction, segment_image


def preprocess(rgb: np.ndarray, image_size: int, seg: SegmentConfig | None) -> tuple[np.ndarray, float]:
    """HSV-segmented at full resolution when `seg` is given, then resized to image_size²; returns the
    image and the share of pixels the segmentation kept (1.0 without segmentation)."""
    frac = 1.0
    if seg is not None:
        rgb, mask = segment_image(rgb, seg)
        frac = mask_fraction(mask)
    return np.ascontiguousarray(resize_square(rgb, image_size)), frac


def resize_square(rgb: np.ndarray, size: int) -> np.ndarray:
    """rgb resized to size² (unchanged when it is already): INTER_AREA anti-aliases a downscale (most
    archive images are larger than the model input), INTER_LINEAR upscales."""
    if rgb.shape[:2] == (size, size):
        return rgb
    interp = cv2.INTER_AREA if min(rgb.shape[:2]) > size else cv2.INTER_LINEAR
    return cv2.resize(rgb, (size, size), interpolation=interp)
