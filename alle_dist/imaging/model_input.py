"""The model input of every stage (training, post-training export, bulk classification, the report's
gallery): one path, `from_bytes` (decode) → `preprocess`, so training and serving can't drift apart.

Two paths, chosen by the model's recorded working size (models.preprocessing.Preprocessing.working_size):

- working size W (every model trained since it was recorded): the field is brought to W² once
  (decoded at reduced scale first where it is much larger: io.images.decode_rgb's `min_side`), and
  its HSV conversion and segmentation mask are computed once there, shared by the model input and
  the field statistics (models.field_stats.features_of). The segmentation's pixel settings were
  chosen at 224² (docs/segmentation.md), so a 5 MP field is segmented as a 224² one is.
- no working size (models trained before): the original path, kept exactly: segmentation at the
  decoded field's full resolution, then the resize; the statistics' view is a separate STATS_SIZE²
  copy of the field with its own HSV and mask.

At 224² with W = 224 both paths give the same model input and the same statistics, bit for bit
(tests/unit/imaging/test_read_path_equality.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import cv2
import numpy as np

from ..config import SegmentConfig
from ..constants import MAX_PIXELS
from ..io.images import decode_rgb
from .hsv import Components, apply_mask, hsv_components, hsv_mask, mask_fraction, remove_cells
from .stain import StainReference, normalise

# The working resolution of segmentation and field statistics of new models (the public dataset's
# field size; a model with a larger input gets it resized from this), and the size the original path
# computed the statistics at.
WORKING_SIZE = 224
STATS_SIZE = 224
# A JPEG is decoded at reduced scale to at least DECODE_MARGIN x the working size on both sides, then
# area-resized: at 1/8 scale (the DCT's DC term alone) the texture statistics of a 5 MP field moved
# by up to 0.9 of their spread over the shared images, at 1/4 by 0.2 (docs/classify.md#the-read-path).
# Part of the recorded path's definition: changing it changes what every recorded model reads.
DECODE_MARGIN = 2


class WorkingField:
    """A field at the working resolution (size² RGB) with its HSV conversion and its segmentation mask,
    each computed once on first use: the model input and the field statistics both read them.
    `seg` is the mask's segmentation: the model's, or the default for a model trained on originals
    (the field statistics still look at the stained cells)."""

    def __init__(self, rgb: np.ndarray, seg: SegmentConfig):
        self.rgb, self.seg = rgb, seg

    @cached_property
    def hsv(self) -> np.ndarray:
        return cv2.cvtColor(self.rgb, cv2.COLOR_RGB2HSV)

    @cached_property
    def components(self) -> Components:
        return hsv_components(self.rgb, self.seg, self.hsv)

    @property
    def mask(self) -> np.ndarray:
        return self.components.mask


@dataclass(frozen=True)
class Prepared:
    image: np.ndarray          # the model input: image_size² uint8 RGB, C-contiguous
    mask_fraction: float       # share of the field the segmentation kept (1.0 without segmentation)
    field: WorkingField        # what the field statistics read


def from_bytes(data: bytes, image_size: int, seg: SegmentConfig | None, working_size: int | None = None,
               max_pixels: int = MAX_PIXELS, stain: StainReference | None = None) -> Prepared:
    """Image bytes → model input: `decode`, then `preprocess`. Every stage reads through it."""
    return preprocess(decode(data, working_size, max_pixels), image_size, seg, working_size, stain)


def decode(data: bytes, working_size: int | None = None, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """The field as the read path decodes it: a JPEG much larger than the working size at 1/2, 1/4 or
    1/8 scale (io.images.draft_scale), anything else at full size; refuses the files
    io.images.decode_rgb refuses, for the same reasons (DecodeError)."""
    return decode_rgb(data, max_pixels, DECODE_MARGIN * working_size if working_size else None)


def preprocess(rgb: np.ndarray, image_size: int, seg: SegmentConfig | None,
               working_size: int | None = None, stain: StainReference | None = None) -> Prepared:
    """The model input of one decoded field: stain-normalised to the model's reference when `stain` is
    given (imaging.stain), HSV-segmented when `seg` is given, resized to image_size². `working_size`
    None: the original path (segmentation at full resolution); see the module doc. The field
    statistics always read the field as it came (a stain unlike the training fields is what they are
    there to see): with a stain reference the model input gets its own HSV and mask."""
    if working_size is None:
        return _original(rgb, image_size, seg, stain)
    field = WorkingField(resize_square(rgb, working_size), seg or SegmentConfig())
    view = field if stain is None else WorkingField(normalise(field.rgb, stain), field.seg)
    if seg is None:
        return Prepared(np.ascontiguousarray(resize_square(view.rgb, image_size)), 1.0, field)
    kept = apply_mask(view.rgb, view.mask, seg.background)
    return Prepared(np.ascontiguousarray(resize_square(kept, image_size)), mask_fraction(view.mask), field)


def _original(rgb: np.ndarray, image_size: int, seg: SegmentConfig | None,
              stain: StainReference | None = None) -> Prepared:
    """The path of models without a working size: stain-normalised and segmented at full resolution,
    then resized; the statistics' view a separate STATS_SIZE² copy of the field as it came (its HSV and
    mask computed only if it is read)."""
    field = WorkingField(resize_square(rgb, STATS_SIZE), seg or SegmentConfig())
    rgb = normalise(rgb, stain)
    frac = 1.0
    if seg is not None:
        mask = hsv_mask(rgb, seg)
        rgb, frac = apply_mask(rgb, mask, seg.background), mask_fraction(mask)
    return Prepared(np.ascontiguousarray(resize_square(rgb, image_size)), frac, field)


def control_input(rgb: np.ndarray, image_size: int, seg: SegmentConfig,
                  working_size: int | None = None) -> tuple[np.ndarray, float]:
    """The shortcut control's input (train --control background): the original field with the cells
    `preprocess` would keep inpainted away (hsv.remove_cells), and the share of pixels they covered.
    The mask is the one `preprocess` computes (at the working size, or at full resolution without one);
    the inpainting runs at the model's size (at 224² it costs ~0.15 s an image, ~10x less at 64-96 px)."""
    if working_size is not None:
        rgb = resize_square(rgb, working_size)
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
