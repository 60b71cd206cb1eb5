"""An out-of-distribution image set built from in-distribution smear images, deterministically.

Each generator turns one in-distribution RGB field into an image a haematologist would not want
labelled with an ALL subtype: another lab's stain (hue rotation, channel swap, over-staining,
unstained / grey), an empty field, a red-cells-only field (the stained cells inpainted away),
an out-of-focus field, noise, debris, and other white-cell-like shapes (lobed nuclei of granulocytes,
small dense lymphocytes, a synthetic smear from `alle_dist.synthetic`). Every image is seeded by
(seed, kind, index), so the set is the same on every run.
"""
from __future__ import annotations

import zlib
from pathlib import Path

import cv2
import numpy as np

from ..config import SegmentConfig
from ..imaging.hsv import hsv_mask


def _rng(seed: int, kind: str, i: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(kind.encode()), i])


def _hsv_shift(rgb: np.ndarray, dh: int = 0, s_gain: float = 1.0, v_gain: float = 1.0) -> np.ndarray:
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV).astype(np.int32)
    hsv[..., 0] = (hsv[..., 0] + dh) % 180
    hsv[..., 1] = np.clip(hsv[..., 1] * s_gain, 0, 255)
    hsv[..., 2] = np.clip(hsv[..., 2] * v_gain, 0, 255)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)


def cell_mask(rgb: np.ndarray, dilate: int = 7) -> np.ndarray:
    """The stained cells (the project's HSV segmentation), grown a little to cover their halo."""
    m = hsv_mask(rgb, SegmentConfig())
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (dilate, dilate))
    return cv2.dilate(m, k)


def red_cells_only(rgb: np.ndarray, rng=None) -> np.ndarray:
    """The field with every stained cell inpainted away: red cells and background only."""
    return cv2.inpaint(rgb, cell_mask(rgb), 5, cv2.INPAINT_TELEA)


def stain_hue(rgb, rng):
    return _hsv_shift(rgb, int(rng.integers(30, 70)) * int(rng.choice([-1, 1])), float(rng.uniform(0.8, 1.3)))


def stain_swap(rgb, rng):
    order = [(1, 2, 0), (2, 0, 1), (1, 0, 2), (0, 2, 1)][int(rng.integers(4))]
    return np.ascontiguousarray(rgb[..., order])


def over_stain(rgb, rng):
    """Heavy, dark staining: a gamma > 1 and more saturation."""
    dark = (255.0 * (rgb / 255.0) ** float(rng.uniform(2.2, 3.5))).astype(np.uint8)
    return _hsv_shift(dark, 0, float(rng.uniform(1.3, 1.8)))


def unstained(rgb, rng):
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    return np.repeat(grey[..., None], 3, axis=2)


def pale_stain(rgb, rng):
    """Faded, washed-out staining (another lab's protocol, old slide)."""
    return _hsv_shift(rgb, int(rng.integers(-8, 9)), float(rng.uniform(0.15, 0.35)), float(rng.uniform(1.0, 1.15)))


def blank_field(rgb, rng):
    """An empty field: the image's background colour, a soft illumination gradient and sensor noise."""
    bg = np.median(rgb[cell_mask(rgb) == 0].reshape(-1, 3), axis=0) if (cell_mask(rgb) == 0).any() else rgb.mean((0, 1))
    h, w = rgb.shape[:2]
    yy, xx = np.mgrid[:h, :w] / max(h, w)
    grad = 1.0 + 0.08 * (xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1))
    img = bg[None, None, :] * grad[..., None] + rng.normal(0, 3, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def out_of_focus(rgb, rng):
    s = float(rng.uniform(5, 9))
    return cv2.GaussianBlur(rgb, (0, 0), s)


def noise(rgb, rng):
    return np.clip(rgb + rng.normal(0, float(rng.uniform(45, 70)), rgb.shape), 0, 255).astype(np.uint8)


def debris(rgb, rng):
    """Red cells plus scattered small stained specks (platelets, stain precipitate), no blast."""
    img = red_cells_only(rgb)
    h, w = img.shape[:2]
    for _ in range(int(rng.integers(20, 60))):
        c = (int(rng.integers(w)), int(rng.integers(h)))
        cv2.circle(img, c, int(rng.integers(1, 4)), _purple(rng), -1)
    return img


def _purple(rng) -> tuple[int, int, int]:
    return (int(rng.integers(90, 140)), int(rng.integers(30, 70)), int(rng.integers(130, 190)))


def lobed_cell(rgb, rng):
    """A granulocyte-like cell: pale granular cytoplasm around a nucleus of 2-5 connected lobes."""
    img = red_cells_only(rgb)
    h, w = img.shape[:2]
    cx, cy, r = int(rng.integers(w // 3, 2 * w // 3)), int(rng.integers(h // 3, 2 * h // 3)), int(w * rng.uniform(0.1, 0.16))
    cyto = img.copy()
    cv2.circle(cyto, (cx, cy), r, (225, 190, 200), -1)
    grain = rng.normal(0, 12, img.shape)
    img = np.clip(np.where(cyto != img, cyto + grain, img), 0, 255).astype(np.uint8)
    n, ang = int(rng.integers(2, 6)), rng.uniform(0, 2 * np.pi)
    pts = [(int(cx + 0.5 * r * np.cos(ang + k * 1.3)), int(cy + 0.5 * r * np.sin(ang + k * 1.3))) for k in range(n)]
    colour = _purple(rng)
    for a, b in zip(pts, pts[1:]):
        cv2.line(img, a, b, colour, max(1, r // 10))
    for p in pts:
        cv2.circle(img, p, max(2, r // 4), colour, -1)
    return img


def small_lymphocyte(rgb, rng):
    """Mature small lymphocytes: tiny, round, very dark nuclei with a thin rim, on a red-cell field."""
    img = red_cells_only(rgb)
    h, w = img.shape[:2]
    for _ in range(int(rng.integers(1, 4))):
        c = (int(rng.integers(w // 6, 5 * w // 6)), int(rng.integers(h // 6, 5 * h // 6)))
        r = int(w * rng.uniform(0.035, 0.05))
        cv2.circle(img, c, r + 2, (180, 170, 215), -1)
        cv2.circle(img, c, r, (60, 20, 90), -1)
    return img


def synthetic_smear(rgb, rng):
    """A field from the project's synthetic smear generator (drawn cells, not a real smear)."""
    from . import synthetic
    cls = ("Benign", "Early", "Pre", "Pro")[int(rng.integers(4))]
    img = synthetic.draw_smear(cls, rng, size=224)
    return cv2.resize(img, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_AREA)


GENERATORS = {
    "stain_hue": stain_hue, "stain_swap": stain_swap, "over_stain": over_stain, "unstained": unstained,
    "pale_stain": pale_stain, "blank_field": blank_field, "red_cells_only": red_cells_only,
    "out_of_focus": out_of_focus, "noise": noise, "debris": debris, "lobed_cell": lobed_cell,
    "small_lymphocyte": small_lymphocyte, "synthetic_smear": synthetic_smear,
}
KINDS = tuple(GENERATORS)


def build(images: list[np.ndarray], seed: int = 0, kinds=KINDS) -> list[tuple[str, int, np.ndarray]]:
    """(kind, source index, OOD RGB uint8) for every kind × every image; deterministic."""
    unknown = set(kinds) - set(GENERATORS)
    if unknown:
        raise ValueError(f"unknown OOD kind(s) {sorted(unknown)}; known: {list(KINDS)}")
    out = []
    for kind in kinds:
        for i, rgb in enumerate(images):
            img = GENERATORS[kind](np.ascontiguousarray(rgb, dtype=np.uint8), _rng(seed, kind, i))
            out.append((kind, i, np.ascontiguousarray(img, dtype=np.uint8)))
    return out


def write(items: list[tuple[str, int, np.ndarray]], out_dir: str) -> list[str]:
    """PNG files out_dir/<kind>/<index>.png (for looking at the set); returns their paths."""
    from ..io.images import encode_png

    paths = []
    for kind, i, img in items:
        p = Path(out_dir) / kind / f"{i:05d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(encode_png(img))
        paths.append(str(p))
    return paths
