"""The model input of every stage (training, post-training export, bulk classification): one function,
so training and serving can't drift apart."""
from __future__ import annotations

import cv2
import numpy as np

from ..config import SegmentConfig
from .hsv import hsv_mask, mask_fraction, remove_cells, segment_image
from .stain import StainReference, normalise


def preprocess(rgb: np.ndarray, image_size: int, seg: SegmentConfig | None,
               stain: StainReference | None = None) -> tuple[np.ndarray, float]:
    """Stain-normalised to the model's reference when `stain` is given (imaging.stain), HSV-segmented at
    full resolution when `seg` is given, then resized to image_size²; returns the image and the share
    of pixels the segmentation kept (1.0 without segmentation)."""
    rgb = normalise(rgb, stain)
    frac = 1.0
    if seg is not None:
        rgb, mask = segment_image(rgb, seg)
        frac = mask_fraction(mask)
    return np.ascontiguousarray(resize_square(rgb, image_size)), frac


def control_input(rgb: np.ndarray, image_size: int, seg: SegmentConfig) -> tuple[np.ndarray, float]:
    """The shortcut control's input (train --control background): the original field with the cells
    `preprocess` would keep inpainted away (hsv.remove_cells), and the share of pixels they covered.
    The mask comes from the full-resolution field, as in `preprocess`; the inpainting runs at the
    model's size (at 224² it costs ~0.15 s an image, ~10x less at 64-96 px)."""
    mask = hsv_mask(rgb, seg)
    small = resize_square(rgb, image_size)
    small_mask = cv2.resize(mask, (image_size, image_size), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(remove_cells(small, small_mask)), mask_fraction(mask)


def resize_square(rgb: np.ndarray, size: int) -> np.ndarray:
    """rgb resized to size² (unchanged when it is already): INTER_AREA anti-aliases a downscale (most
    archive images are larger than the model input), INTER_LINEAR upscales."""
    if rgb.shape[:2] == (size, size):
        return rgb
    interp = cv2.INTER_AREA if min(rgb.shape[:2]) > size else cv2.INTER_LINEAR
    return cv2.resize(rgb, (size, size), interpolation=interp)
