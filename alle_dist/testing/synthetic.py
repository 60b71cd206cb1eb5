"""A deterministic synthetic smear set: four classes of drawn cells, for the demo and tests.

Each image is a pale, slightly uneven background with grey-pink red cells (low saturation: the
HSV segmentation drops them) and one to three purple-stained lymphoblasts (inside the default HSV
interval: the segmentation keeps them). The blast's look differs by class, loosely after the
real subtypes, so that a tiny CNN can learn them:

| class  | cell radius | nucleus                       | chromatin / colour                 |
| ------ | ----------- | ----------------------------- | ---------------------------------- |
| Benign | 14-17 px    | round, fills the cell         | dense, dark violet, smooth         |
| Early  | 18-22 px    | round, thin cytoplasm rim     | fine texture, blue-violet          |
| Pre    | 22-26 px    | kidney-shaped (notched)       | medium texture, cytoplasm vacuoles |
| Pro    | 25-30 px    | two lobes (cleft), nucleoli   | coarse texture, magenta-violet     |

(radii at size=224; they scale with `size`). Layout: `<out>/<class>/<class>-NNNN.jpg`.
"""
from __future__ import annotations

import cv2
import numpy as np

from ..io import storage
from ..io.images import encode_jpeg

CLASSES = ("Benign", "Early", "Pre", "Pro")

# Per class: radius range (at 224 px), nucleus share of the radius, nucleus RGB, cytoplasm RGB,
# texture amplitude (0..1) and texture grain (px).
_LOOK = {
    "Benign": dict(radius=(14, 17), nucleus=0.88, nuc=(92, 48, 128), cyto=(150, 125, 195), tex=0.06, grain=2.0),
    "Early": dict(radius=(18, 22), nucleus=0.80, nuc=(105, 75, 170), cyto=(165, 150, 215), tex=0.14, grain=1.5),
    "Pre": dict(radius=(22, 26), nucleus=0.70, nuc=(115, 80, 165), cyto=(175, 155, 215), tex=0.18, grain=2.5),
    "Pro": dict(radius=(25, 30), nucleus=0.72, nuc=(140, 60, 150), cyto=(190, 150, 210), tex=0.28, grain=3.5),
}


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Pale, unevenly lit field (float RGB 0..255)."""
    base = np.array([238, 232, 228], np.float32) + rng.normal(0, 3, 3)
    light = cv2.GaussianBlur(rng.normal(0, 6, (size, size)).astype(np.float32), (0, 0), size / 8)
    return np.clip(base[None, None, :] + light[:, :, None] * 2.0, 0, 255)


def _red_cells(img: np.ndarray, rng: np.random.Generator, size: int) -> None:
    """Grey-pink discs with a paler centre (biconcave); saturation stays below the HSV interval."""
    s = size / 224
    for _ in range(int(rng.integers(14, 26))):
        c = (int(rng.integers(0, size)), int(rng.integers(0, size)))
        r = max(2, int(rng.uniform(10, 14) * s))
        col = np.array([212, 196, 200]) + rng.normal(0, 5) + rng.normal(0, 1.5, 3)  # brightness, slight tint
        cv2.circle(img, c, r, col.tolist(), -1, cv2.LINE_AA)
        cv2.circle(img, c, max(1, r // 2), (col + 12).tolist(), -1, cv2.LINE_AA)


def _texture(rng: np.random.Generator, size: int, grain: float) -> np.ndarray:
    noise = cv2.GaussianBlur(rng.normal(0, 1, (size, size)).astype(np.float32), (0, 0), grain)
    return noise / (noise.std() + 1e-6)


def _nucleus_mask(cls: str, rng: np.random.Generator, size: int, c: tuple[int, int], r: int) -> np.ndarray:
    m = np.zeros((size, size), np.uint8)
    angle = float(rng.uniform(0, 180))
    if cls == "Pro":  # two overlapping lobes: a cleft nucleus
        off = np.array([np.cos(np.radians(angle)), np.sin(np.radians(angle))]) * r * 0.45
        for sign in (-1, 1):
            cc = (int(c[0] + sign * off[0]), int(c[1] + sign * off[1]))
            cv2.ellipse(m, cc, (int(r * 0.62), int(r * 0.5)), angle + 90, 0, 360, 255, -1, cv2.LINE_AA)
        return m
    axes = (r, int(r * rng.uniform(0.85, 1.0)))
    cv2.ellipse(m, c, axes, angle, 0, 360, 255, -1, cv2.LINE_AA)
    if cls == "Pre":  # a notch cut from one side: kidney shape
        notch = (int(c[0] + np.cos(np.radians(angle)) * r * 1.05), int(c[1] + np.sin(np.radians(angle)) * r * 1.05))
        cv2.circle(m, notch, int(r * 0.55), 0, -1, cv2.LINE_AA)
    return m


def _blast(img: np.ndarray, cls: str, rng: np.random.Generator, size: int) -> None:
    """One lymphoblast of class `cls`, drawn in place."""
    look, s = _LOOK[cls], size / 224
    r = int(rng.uniform(*look["radius"]) * s)
    margin = r + 2
    c = (int(rng.integers(margin, size - margin)), int(rng.integers(margin, size - margin)))
    cell = np.zeros((size, size), np.uint8)
    cv2.circle(cell, c, r, 255, -1, cv2.LINE_AA)
    cyto = np.array(look["cyto"], np.float32) + rng.normal(0, 5, 3)
    a = (cell.astype(np.float32) / 255)[:, :, None]
    img[:] = img * (1 - a) + cyto * a
    if cls == "Pre":  # cytoplasm vacuoles: small pale dots
        for _ in range(int(rng.integers(3, 7))):
            ang, d = rng.uniform(0, 2 * np.pi), r * rng.uniform(0.75, 0.92)
            cv2.circle(img, (int(c[0] + d * np.cos(ang)), int(c[1] + d * np.sin(ang))), max(1, int(2 * s)),
                       (cyto + 30).tolist(), -1, cv2.LINE_AA)
    nuc = _nucleus_mask(cls, rng, size, c, max(2, int(r * look["nucleus"])))
    shade = 1 + look["tex"] * _texture(rng, size, look["grain"] * s)
    colour = (np.array(look["nuc"], np.float32) + rng.normal(0, 6, 3))[None, None, :] * shade[:, :, None]
    a = (nuc.astype(np.float32) / 255)[:, :, None]
    img[:] = img * (1 - a) + colour * a
    if cls == "Pro":  # nucleoli: pale spots inside the nucleus
        ys, xs = np.nonzero(nuc > 200)
        for k in rng.choice(len(ys), size=min(len(ys), int(rng.integers(2, 4))), replace=False):
            cv2.circle(img, (int(xs[k]), int(ys[k])), max(1, int(2.5 * s)), (175, 130, 190), -1, cv2.LINE_AA)


def draw_smear(cls: str, rng: np.random.Generator, size: int = 224) -> np.ndarray:
    """One synthetic smear image (HxWx3 uint8 RGB) with blast(s) of class `cls`."""
    if cls not in _LOOK:
        raise ValueError(f"class {cls!r}: choose one of {list(CLASSES)}")
    img = _background(rng, size)
    _red_cells(img, rng, size)
    for _ in range(int(rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15]))):
        _blast(img, cls, rng, size)
    img += rng.normal(0, 2.0, img.shape)  # sensor noise
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def generate(out_dir: str, n_per_class: int = 40, seed: int = 0, size: int = 224) -> str:
    """Write n_per_class JPEGs per class to out_dir/<class>/ (local or s3://); returns out_dir.

    Deterministic: image i of class k depends only on (seed, k, i), so a larger n_per_class
    keeps the smaller set's files unchanged.
    """
    for k, cls in enumerate(CLASSES):
        for i in range(n_per_class):
            rng = np.random.default_rng([seed, k, i])
            img = draw_smear(cls, rng, size)
            storage.write_bytes(storage.join(out_dir, cls, f"{cls}-{i:04d}.jpg"), encode_jpeg(img, quality=92))
    return out_dir
