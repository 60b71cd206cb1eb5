"""The report's image galleries: the test images read from the manifest's source, shown as the models
saw them (each model's recorded preprocessing), with a Grad-CAM map per backbone.

`build(run_dir, data, outputs, spec)` → {"corrected" | "referred" | "misclassified": [gallery_item]}.
Each gallery is capped (CAPS): Grad-CAM is a forward and backward pass per image and backbone, run on
the driver's CPU, so a report stays a few dozen maps per backbone whatever the test split's size.
Nothing here stops the evaluation: an unreadable image is left out of its gallery, a model that can't
be loaded gets no maps; both are logged and the page says how many images it shows of how many.
"""
from __future__ import annotations

import io
import logging

import numpy as np

from ..errors import DecodeError, StorageError, UsageError
from ..io import storage
from ..io.images import decode_rgb
from ..rundir import RunDir
from . import report
from .metrics import ENSEMBLE

log = logging.getLogger("alle_dist.report")
CAPS = {"corrected": 48, "referred": 24, "misclassified": 24}


def select(y, ensemble_pred, member_preds: dict[str, np.ndarray]) -> dict[str, list[int]]:
    """Row indices per gallery, each image once per gallery: corrected (some member wrong, ensemble
    right), referred (ensemble -1), misclassified (ensemble gave a wrong label)."""
    y, ens = np.asarray(y), np.asarray(ensemble_pred)
    some_wrong = np.zeros(len(y), bool)
    for p in member_preds.values():
        some_wrong |= np.asarray(p) != y
    return {"corrected": np.flatnonzero(some_wrong & (ens == y)).tolist(),
            "referred": np.flatnonzero(ens < 0).tolist(),
            "misclassified": np.flatnonzero((ens >= 0) & (ens != y)).tolist()}


def thumbnail_png(rgb: np.ndarray, size: int = 144) -> bytes:
    """uint8 RGB image → PNG bytes, longest side at most `size` px."""
    buf = io.BytesIO()
    _thumb(rgb, size).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _thumb(rgb: np.ndarray, size: int):
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(rgb, np.uint8))
    im.thumbnail((size, size), Image.Resampling.LANCZOS)
    return im


def gallery_item(image: np.ndarray, path: str, true_label: str, members: dict[str, tuple[str, float]],
                 ensemble: tuple[str, float], reason: str | None = None,
                 cams: dict[str, np.ndarray] | None = None, size: int = 144) -> dict:
    """One gallery entry: thumbnail, each member's (label, confidence), the ensemble's (top class,
    confidence) with its referral reason ('+'-joined, None = labelled), a Grad-CAM overlay per member."""
    small = np.asarray(_thumb(image, size))     # the overlay is drawn at thumbnail size: small PNGs
    overlays = {}
    if cams:
        from ..models.gradcam import overlay

        overlays = {name: thumbnail_png(overlay(small, cam), size) for name, cam in cams.items()}
    return {"thumb": thumbnail_png(small, size), "path": str(path), "true": str(true_label),
            "members": [(n, str(lab), float(c)) for n, (lab, c) in members.items()],
            "ensemble": (str(ensemble[0]), float(ensemble[1])), "reason": reason, "cams": overlays,
            "flat_cams": [n for n, cam in (cams or {}).items() if float(np.max(cam)) <= 0.0]}


def gallery_items(indices, images, paths, y, classes, member_probs: dict[str, np.ndarray],
                  ensemble_probs: np.ndarray, reasons, cams: dict[str, np.ndarray] | None = None,
                  size: int = 144) -> list[dict]:
    """gallery_item for rows `indices` of a split; images and cams (backbone → K x S x S) are aligned
    with `indices`, the probabilities (temperature-scaled; the ensemble's weighted) with the split."""
    out = []
    for k, i in enumerate(indices):
        mem = {b: (classes[int(np.argmax(p[i]))], float(np.max(p[i]))) for b, p in member_probs.items()}
        top = int(np.argmax(ensemble_probs[i]))
        out.append(gallery_item(images[k], paths[i], classes[int(y[i])] if y[i] >= 0 else "unknown", mem,
                                (classes[top], float(ensemble_probs[i][top])), reasons[i],
                                {b: c[k] for b, c in (cams or {}).items()}, size))
    return out


# ---------------------------------------------------------------- the run's galleries

def chosen(data, outputs: dict, spec, caps: dict[str, int] = CAPS) -> dict[str, list[int]]:
    """Row indices per gallery (select), the first `caps[kind]` of each in split order."""
    sel = select(data.y, outputs[ENSEMBLE].pred, {b: outputs[b].pred for b in spec.backbones})
    return {kind: idx[: caps.get(kind, len(idx))] for kind, idx in sel.items()}


def _read(source: str, rel: str) -> bytes | None:
    """The image's bytes, once they have been seen to decode (each model's view decodes them its own way)."""
    from ..prepare.catalog import image_uri

    try:
        data = storage.read_bytes(image_uri(source, rel))
        decode_rgb(data)
        return data
    except (OSError, StorageError, DecodeError) as exc:
        log.warning("report gallery: %s left out (%s)", rel, exc)
        return None


def _preprocessing(run_dir: str, backbone: str):
    """The backbone's recorded preprocessing, or None when its meta.json can't say (logged)."""
    from ..models import persistence, preprocessing

    try:
        return preprocessing.read(persistence.read_meta(RunDir(run_dir).model(backbone).root))
    except (OSError, StorageError, ValueError, KeyError, TypeError) as exc:
        log.warning("report gallery: no recorded preprocessing for %s (%s); images shown as stored", backbone, exc)
        return None


def model_view(data: bytes, prep) -> np.ndarray:
    """The image as a model with preprocessing `prep` saw it (the read path every stage shares:
    segmented, resized); as stored without one."""
    from ..imaging.model_input import from_bytes

    return decode_rgb(data) if prep is None else from_bytes(data, prep.image_size, prep.segment, prep.working_size,
                                                            stain=prep.stain).image


def member_cams(run_dir: str, backbone: str, views: np.ndarray, targets) -> np.ndarray | None:
    """Grad-CAM maps of the trained model for its own views of the images, for the classes it gave
    (None, logged, when the model can't be loaded; the review page uses it too)."""
    from ..models import gradcam

    try:
        return gradcam.heatmaps_for_model_dir(RunDir(run_dir).model(backbone).root, views, targets)
    except (UsageError, OSError, KeyError, ValueError) as exc:
        log.warning("report gallery: no Grad-CAM for %s (%s)", backbone, exc)
        return None


def build(run_dir: str, data, outputs: dict, spec, caps: dict[str, int] = CAPS) -> dict[str, list[dict]]:
    """Every gallery's items: thumbnails of the first member's view, a Grad-CAM overlay per member."""
    source = report.source_root(run_dir)
    if source is None:
        return {}
    picked = chosen(data, outputs, spec, caps)
    rows = sorted({i for idx in picked.values() for i in idx})
    images = {i: im for i in rows if (im := _read(source, data.paths[i])) is not None}
    rows = [i for i in rows if i in images]
    preps = {b: _preprocessing(run_dir, b) for b in spec.backbones}
    views, cams = {}, {}
    for b in spec.backbones:
        # Each model's own view: the sizes (or the segmentation) of the members may differ.
        views[b] = [model_view(images[i], preps[b]) for i in rows]
        if rows and len({v.shape for v in views[b]}) == 1:
            maps = member_cams(run_dir, b, np.stack(views[b]), outputs[b].pred[rows])
            if maps is not None:
                cams[b] = dict(zip(rows, maps))
    first = dict(zip(rows, views[spec.backbones[0]]))
    ens = outputs[ENSEMBLE]
    out = {}
    for kind, idx in picked.items():
        idx = [i for i in idx if i in first]
        out[kind] = gallery_items(idx, [first[i] for i in idx], data.paths, data.y, data.classes,
                                       {b: outputs[b].probs for b in spec.backbones}, ens.probs, ens.reason,
                                       {b: np.stack([m[i] for i in idx]) for b, m in cams.items()} if idx else None)
    return out
