"""Stain colour (pure numpy + OpenCV): normalisation to a reference fitted on the training fields
(Reinhard, Macenko) and jitter in optical density (the stain augmentation, the stress test's stain shift).

Both normalisers follow torchstain's numpy ones (the same constants: transmitted light Io = 240, stain
pixels where every channel's optical density is ≥ 0.15, the 1st / 99th angle percentiles) and a test
checks that they agree with torchstain to a grey level. They are written out here because they run on
every field of every epoch and of every classification: torchstain solves Macenko's concentrations
with a per-pixel least squares and converts to LAB in Python, ~10x slower than a 2 x 3 pseudo-inverse
and OpenCV's LAB; and its Reinhard casts out-of-gamut values to uint8 without clipping (they wrap).

A `StainReference` is plain numbers: models.preprocessing records it in a model's meta.json (under its
hash), so training, export, classification and the report apply the same transform. `normalise` is what
imaging.model_input.preprocess calls on every decoded field, before segmentation.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

METHODS = ("reinhard", "macenko")
IO = 240.0               # transmitted light (Macenko)
BETA = 0.15              # optical density below which a channel counts as unstained
ALPHA = 1.0              # percentile of the stain-vector angles (Macenko)
# Macenko needs enough stained pixels for a 3 x 3 covariance and its angle percentiles; Reinhard needs
# some spread. A blank or washed-out field is left as it is (the referral rules judge it).
_MIN_STAINED_PX = 100
_MIN_STD = 1e-3
# Ruifrok & Johnston's haematoxylin, eosin, DAB optical-density vectors (rows), as scikit-image's
# rgb2hed uses them. In Romanowsky (Wright / Giemsa / May-Grünwald) smears the azure-methylene blue
# nuclear stain sits near haematoxylin and eosin is eosin.
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)


@dataclass(frozen=True)
class StainReference:
    """A fitted normalisation target.

    reinhard: values = (LAB means (3), LAB standard deviations (3)), OpenCV's float LAB (L 0-100);
    macenko:  values = (first stain vector (3), second stain vector (3), their 99th-percentile
              concentrations (2)): the optical-density basis (nuclear stain first) and its scale.
    fitted_on: how many training fields the reference is the median of."""
    method: str
    values: tuple[tuple[float, ...], ...]
    fitted_on: int = 0

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"stain normalisation {self.method!r}: choose one of {list(METHODS)}")
        object.__setattr__(self, "values", tuple(tuple(float(v) for v in row) for row in self.values))
        object.__setattr__(self, "fitted_on", int(self.fitted_on))

    def to_dict(self) -> dict:
        return {"method": self.method, "values": [list(v) for v in self.values], "fitted_on": self.fitted_on}

    @classmethod
    def from_dict(cls, doc: dict | None) -> "StainReference | None":
        return None if not doc else cls(doc["method"], doc["values"], doc.get("fitted_on", 0))


# ---------------------------------------------------------------- Reinhard (LAB mean and spread)

def _lab(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb.astype(np.float32) / 255, cv2.COLOR_RGB2LAB).reshape(-1, 3)


def _reinhard_fit(rgb: np.ndarray):
    lab = _lab(rgb)
    mean, std = lab.mean(axis=0), lab.std(axis=0)
    return None if std.min() < _MIN_STD else (tuple(mean.tolist()), tuple(std.tolist()))


def _reinhard_apply(rgb: np.ndarray, ref: StainReference) -> np.ndarray:
    lab = _lab(rgb)
    mean, std = lab.mean(axis=0), lab.std(axis=0)
    if std.min() < _MIN_STD:
        return rgb
    out = (lab - mean) / std * np.float32(ref.values[1]) + np.float32(ref.values[0])
    back = cv2.cvtColor(out.reshape(rgb.shape).astype(np.float32), cv2.COLOR_LAB2RGB)
    return (np.clip(back, 0, 1) * 255).round().astype(np.uint8)


# ---------------------------------------------------------------- Macenko (stain vectors in OD)

def _od(rgb: np.ndarray) -> np.ndarray:
    return -np.log((rgb.reshape(-1, 3).astype(np.float64) + 1) / IO)


def _macenko_basis(od: np.ndarray) -> np.ndarray | None:
    """The two stain vectors (3 x 2, nuclear stain first) of one field's optical densities."""
    stained = od[~np.any(od < BETA, axis=1)]
    if len(stained) < _MIN_STAINED_PX:
        return None
    _, vecs = np.linalg.eigh(np.cov(stained.T))
    plane = vecs[:, 1:3]
    proj = stained @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, (ALPHA, 100 - ALPHA))
    v_min, v_max = (plane @ np.array([np.cos(a), np.sin(a)]) for a in (lo, hi))
    basis = np.stack([v_min, v_max] if v_min[0] > v_max[0] else [v_max, v_min], axis=1)
    return basis if np.all(np.isfinite(basis)) else None


def _macenko_fit(rgb: np.ndarray):
    od = _od(rgb)
    basis = _macenko_basis(od)
    if basis is None:
        return None
    max_c = np.percentile(np.linalg.pinv(basis) @ od.T, 99, axis=1)
    return tuple(basis[:, 0].tolist()), tuple(basis[:, 1].tolist()), tuple(max_c.tolist())


def _macenko_apply(rgb: np.ndarray, ref: StainReference) -> np.ndarray:
    od = _od(rgb)
    basis = _macenko_basis(od)
    if basis is None:
        return rgb
    conc = np.linalg.pinv(basis) @ od.T                   # 2 x N stain concentrations
    max_c = np.percentile(conc, 99, axis=1)
    if np.any(max_c <= 0):
        return rgb
    conc *= (np.asarray(ref.values[2]) / max_c)[:, None]
    out = IO * np.exp(-(np.array(ref.values[:2]).T @ conc))
    return np.minimum(out, 255).T.reshape(rgb.shape).astype(np.uint8)   # truncates, as torchstain does


_FIT = {"reinhard": _reinhard_fit, "macenko": _macenko_fit}
_APPLY = {"reinhard": _reinhard_apply, "macenko": _macenko_apply}


def normalise(rgb: np.ndarray, ref: StainReference | None) -> np.ndarray:
    """rgb (H x W x 3 uint8) mapped to the reference's stain appearance; unchanged when ref is None or
    the field has too little stain to fit (a blank field)."""
    if ref is None:
        return rgb
    try:
        return np.ascontiguousarray(_APPLY[ref.method](rgb, ref))
    except np.linalg.LinAlgError:
        return rgb


def fit_reference(images, method: str) -> StainReference:
    """The reference of `method` from training fields: the element-wise median of the per-field fits
    (robust to the odd field), Macenko's stain vectors re-normalised to unit length. ValueError when
    no field could be fitted."""
    fits = []
    for rgb in images:
        try:
            fit = _FIT[method](rgb)
        except np.linalg.LinAlgError:
            fit = None
        if fit is not None:
            fits.append(fit)
    if not fits:
        raise ValueError(f"stain normalisation {method}: no training field had enough stain to fit")
    med = [np.median(np.array([f[i] for f in fits]), axis=0) for i in range(len(fits[0]))]
    if method == "macenko":
        med[0], med[1] = (v / np.linalg.norm(v) for v in med[:2])
    return StainReference(method, tuple(tuple(v.tolist()) for v in med), fitted_on=len(fits))


# ---------------------------------------------------------------- jitter in optical density (HED)

def hed_jitter(rgb: np.ndarray, alpha, beta) -> np.ndarray:
    """Each stain's concentration (haematoxylin, eosin, DAB: colour deconvolution with RGB_FROM_HED)
    scaled by alpha[i] and shifted by beta[i] optical-density units (Tellez et al. 2018): a stain batch
    or staining time that differs, in the space where stains add up (Beer-Lambert), not in RGB.
    alpha = 1, beta = 0 gives the field back (to rounding)."""
    od = -np.log((rgb.reshape(-1, 3).astype(np.float64) + 1) / 256)
    conc = (od @ HED_FROM_RGB) * np.asarray(alpha, np.float64) + np.asarray(beta, np.float64)
    out = 256 * np.exp(-(conc @ RGB_FROM_HED)) - 1
    return np.clip(out, 0, 255).round().astype(np.uint8).reshape(rgb.shape)
