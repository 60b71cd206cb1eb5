"""Graded, seeded stain and acquisition shifts of a decoded field (pure: numpy + OpenCV).

Each shift takes an H x W x 3 uint8 field, a strength and a numpy Generator (the direction of a
shift, e.g. more or less of a stain, is drawn per image) and returns the field as another stain
batch, lamp, camera, focus or file format would have delivered it. `SHIFTS` lists them with the
strengths the stress stage runs (mild → severe) and the unit the report prints.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from ..imaging.stain import hed_jitter


def _signs(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.choice((-1.0, 1.0), size=n)


def stain(rgb: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """Nuclear stain and eosin each × (1 ± s) in optical density (directions drawn per image)."""
    alpha = np.r_[1 + s * _signs(rng, 2), 1.0]
    return hed_jitter(rgb, alpha, (0.0, 0.0, 0.0))


def hue(rgb: np.ndarray, degrees: float, rng: np.random.Generator) -> np.ndarray:
    """Hue rotated by ± degrees (a different dye lot, white balance or lamp colour)."""
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV_FULL)
    step = int(round(_signs(rng, 1)[0] * degrees * 256 / 360))
    hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + step) % 256).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)


def brightness_gamma(rgb: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """Gamma exp(± s) and brightness × (1 ± s / 2): exposure, lamp intensity, camera tone curve."""
    g, b = np.exp(_signs(rng, 1)[0] * s), 1 + _signs(rng, 1)[0] * s / 2
    out = 255.0 * (rgb / 255.0) ** g * b
    return np.clip(out, 0, 255).round().astype(np.uint8)


def blur(rgb: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian defocus of sigma px at the field's resolution."""
    return cv2.GaussianBlur(rgb, (0, 0), sigma)


def noise(rgb: np.ndarray, sd: float, rng: np.random.Generator) -> np.ndarray:
    """Additive Gaussian sensor noise of sd grey levels."""
    return np.clip(rgb + rng.normal(0.0, sd, rgb.shape), 0, 255).round().astype(np.uint8)


def jpeg(rgb: np.ndarray, quality: float, rng: np.random.Generator) -> np.ndarray:
    """The field as a JPEG of this quality would decode."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def rescale(rgb: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    """The field at `factor` × its resolution (a camera with fewer pixels, or a lower magnification
    scanned to the same field): the file really is smaller, the model input is resized from it."""
    h, w = rgb.shape[:2]
    size = (max(8, round(w * factor)), max(8, round(h * factor)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


@dataclass(frozen=True)
class Shift:
    name: str
    apply: Callable[[np.ndarray, float, np.random.Generator], np.ndarray]
    strengths: tuple[float, ...]        # mild → severe
    unit: str                           # how the report prints a strength


SHIFTS = {s.name: s for s in (
    Shift("stain", stain, (0.1, 0.2, 0.4), "× OD"),
    Shift("hue", hue, (5.0, 10.0, 20.0), "°"),
    Shift("brightness_gamma", brightness_gamma, (0.1, 0.25, 0.5), "log γ"),
    Shift("blur", blur, (0.75, 1.5, 3.0), "px σ"),
    Shift("noise", noise, (4.0, 8.0, 16.0), "grey levels σ"),
    Shift("jpeg", jpeg, (70.0, 40.0, 15.0), "quality"),
    Shift("rescale", rescale, (0.75, 0.5, 0.3), "× resolution"),
)}


def shifted(rgb: np.ndarray, name: str, strength: float, seed: int, index: int) -> np.ndarray:
    """One field under one shift, reproducible from (seed, shift, strength, image index)."""
    shift = SHIFTS[name]
    k = shift.strengths.index(strength) if strength in shift.strengths else int(strength * 1000)
    rng = np.random.default_rng([seed, list(SHIFTS).index(name), k, index])
    return np.ascontiguousarray(shift.apply(rgb, strength, rng))
