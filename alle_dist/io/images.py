"""Image bytes → RGB uint8 arrays, refusing what can't or shouldn't be decoded.

Shared by prepare (validation), segment, train and classify so that every stage accepts and
refuses the same files for the same reasons.

JPEG data is decoded by libjpeg-turbo through simplejpeg with strict=True: a warning of the decoder
("Corrupt JPEG data: premature end of data segment", "Premature end of JPEG file", ...) refuses the
file. Pillow decodes such files without a word, filling what is missing with grey: a truncated
file with an end marker appended, or a header whose dimensions were changed, would pass as an
image. simplejpeg's pixels are Pillow's (same libjpeg-turbo, same IDCT and upsampling: identical on
the shared data set, tests/unit/io/test_images.py), at about half the time.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DecodeError

# Pillow's own bomb check is a warning below 2x its limit; we check the header ourselves.
Image.MAX_IMAGE_PIXELS = None

DEFAULT_MAX_PIXELS = 50_000_000


def decode_rgb(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode JPEG / PNG / TIFF / BMP bytes to an HxWx3 uint8 RGB array.

    Greyscale, palette, RGBA, CMYK and 16-bit images are converted to 8-bit RGB. A header that
    claims more than `max_pixels` pixels is refused before the pixel data is decoded.
    """
    if not data:
        raise DecodeError("empty file (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data))  # reads the header only
    except UnidentifiedImageError:
        raise DecodeError("not an image (unrecognised format)") from None
    except Exception as exc:  # noqa: BLE001 - any parser failure is a bad file, not a crash
        raise DecodeError(f"unreadable header: {exc}") from None
    w, h = img.size
    if w * h > max_pixels:
        raise DecodeError(f"image too large: {w}x{h} pixels > limit {max_pixels}; refused before decoding")
    if img.format == "JPEG":
        arr = _jpeg_rgb(data)
        if arr is not None:
            return arr
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


def _jpeg_rgb(data: bytes) -> np.ndarray | None:
    """RGB pixels of a JPEG, refusing any decoder warning; None for what libjpeg-turbo can't convert
    to RGB (CMYK / YCCK: checked strictly here, converted by Pillow) or decode at all (12-bit)."""
    import simplejpeg

    try:
        colour = simplejpeg.decode_jpeg_header(data)[2]
        if colour in ("CMYK", "YCCK"):
            simplejpeg.decode_jpeg(data, colorspace="CMYK", min_factor=8, strict=True)   # entropy data checked
            return None
        return simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
    except ValueError as exc:
        if "Unsupported" in str(exc):
            return None
        raise DecodeError(f"corrupt or truncated image data (JPEG): {exc}") from None


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
