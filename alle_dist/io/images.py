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

from ..constants import EMPTY_FILE, MAX_PIXELS
from ..errors import DecodeError

# Pillow's own bomb check is a warning below 2x its limit; we check the header ourselves.
Image.MAX_IMAGE_PIXELS = None



def decode_rgb(data: bytes, max_pixels: int = MAX_PIXELS, min_side: int | None = None) -> np.ndarray:
    """Decode JPEG / PNG / TIFF / BMP bytes to an HxWx3 uint8 RGB array.

    Greyscale, palette, RGBA, CMYK and 16-bit images are converted to 8-bit RGB. A header that
    claims more than `max_pixels` pixels is refused before the pixel data is decoded.
    `min_side`: see `reduction` (a JPEG much larger than needed is decoded at reduced scale).
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
    if img.format == "JPEG":
        arr = _jpeg_rgb(data, reduction(w, h, min_side))
        if arr is not None:
            return arr
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


def reduction(w: int, h: int, min_side: int | None) -> int:
    """The DCT-domain reduction (1, 2, 4 or 8) a JPEG of w x h is decoded at: the largest that keeps
    both sides >= min_side (libjpeg's scaled IDCT; Pillow's `draft` picks the same). A 5 MP field
    needed at 224² decodes at 1/4 scale in about half the time (the inverse DCT and colour conversion
    shrink, the entropy decoding does not); JPEGs smaller than 2 x min_side on a side,
    and other formats, decode at full size. The header checks ran before; data that is corrupt or
    truncated is refused all the same (the same decoder, at another scale)."""
    f = 1
    while min_side and f < 8 and min(w, h) // (2 * f) >= min_side:
        f *= 2
    return f


def draft_scale(img: Image.Image, min_side: int) -> None:
    """`reduction` for a JPEG Pillow decodes (CMYK / YCCK, which simplejpeg hands back to Pillow)."""
    if img.format == "JPEG":
        img.draft("RGB", (min_side, min_side))


def _jpeg_rgb(data: bytes, factor: int = 1) -> np.ndarray | None:
    """RGB pixels of a JPEG at 1/factor scale, refusing any decoder warning; None for what libjpeg-turbo
    can't convert to RGB (CMYK / YCCK: checked strictly here, converted by Pillow) or decode at all (12-bit)."""
    import simplejpeg

    try:
        h, w, colour, _ = simplejpeg.decode_jpeg_header(data)
        if colour in ("CMYK", "YCCK"):
            simplejpeg.decode_jpeg(data, colorspace="CMYK", min_factor=8, strict=True)   # entropy data checked
            return None
        # libjpeg's scaled size is ceil(side / factor): asking for that picks exactly 1/factor.
        return simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True, min_height=-(-h // factor),
                                      min_width=-(-w // factor))
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
