"""Image bytes → RGB uint8 arrays, refusing what can't or shouldn't be decoded.

Shared by prepare (validation), segment, train and classify so that every stage accepts and
refuses the same files for the same reasons.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..constants import EMPTY_FILE, MAX_PIXELS
from ..errors import DecodeError

# Pillow's own bomb check is a warning below 2x its limit; we check the header ourselves.
Image.MAX_IMAGE_PIXELS = None



def decode_rgb(data: bytes, max_pixels: int = MAX_PIXELS, min_side: int | None = None) -> np.ndarray:
    """Decode JPEG / PNG / TIFF / BMP bytes to an HxWx3 uint8 RGB array.

    Greyscale, palette, RGBA, CMYK and 16-bit images are converted to 8-bit RGB. A header that
    claims more than `max_pixels` pixels is refused before the pixel data is decoded.
    `min_side`: see draft_scale (a JPEG much larger than needed is decoded at reduced scale).
    """
    if not data:
        raise DecodeError(EMPTY_FILE)
    try:
        img = Image.open(io.BytesIO(data))  # reads the header only
    except UnidentifiedImageError:
        raise DecodeError("not an image (unrecognised format)") from None
    except Exception as exc:  # noqa: BLE001 - any parser failure is a bad file, not a crash
        raise DecodeError(f"unreadable header: {exc}") from None
    w, h = img.size
    if w * h > max_pixels:
        raise DecodeError(f"image too large: {w}x{h} pixels > limit {max_pixels}; refused before decoding")
    if min_side:
        draft_scale(img, min_side)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img.load()  # truncated data raises here (LOAD_TRUNCATED_IMAGES stays False)
        arr = _to_rgb8(img)
    except DecodeError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise DecodeError(f"corrupt or truncated image data ({img.format}): {exc}") from None
    return arr


def draft_scale(img: Image.Image, min_side: int) -> None:
    """Have a JPEG (not yet loaded) decode at 1/2, 1/4 or 1/8 scale in the DCT domain (libjpeg's scaled
    IDCT, Pillow's `draft`): the largest reduction that keeps both sides >= min_side. A 5 MP field
    needed at 224² decodes in about a quarter of the time. Other formats, and JPEGs smaller than
    2 x min_side on a side, decode at full size. The header checks ran before; data that is corrupt
    or truncated is refused all the same (the same load, at another scale)."""
    if img.format == "JPEG":
        img.draft("RGB", (min_side, min_side))


def _to_rgb8(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16-bit / 32-bit greyscale: scale the used range to 8 bits, then grey → RGB.
        a = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if mode.startswith("I;16") else max(float(a.max()), 1.0)
        a = np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(a[:, :, None], 3, axis=2)
    if mode == "RGB":
        arr = np.asarray(img)
    else:
        arr = np.asarray(img.convert("RGB"))  # L, P, RGBA, CMYK, YCbCr, LA, 1
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise DecodeError(f"unsupported pixel layout: mode {mode}, array {arr.shape} {arr.dtype}")
    return np.ascontiguousarray(arr)


def encode_png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def encode_jpeg(arr: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
