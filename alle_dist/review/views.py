"""The pictures of a review item: the original field, the model input (the models' own recorded
preprocessing through imaging.model_input.preprocess: evaluate.gallery.model_view) and a Grad-CAM
map per member (evaluate.gallery.member_cams, models.gradcam), each as a data: URI for the page.

Every image is read by its URI and its sha256 checked against the classification row: a file whose
bytes changed since it was classified is left out of the batch (its row describes other bytes).
Images are processed in chunks, so a large batch of large fields never sits decoded in memory at once.
"""
from __future__ import annotations

import base64
import hashlib
import io
import logging

import numpy as np

from .. import schema
from ..errors import DecodeError, StorageError
from ..evaluate import gallery
from ..io import storage
from ..io.images import decode_rgb
from ..models import preprocessing

log = logging.getLogger("alle_dist.review")
CHUNK = 32            # items decoded at a time
MODEL_PX = 224        # longest side of the model input and Grad-CAM pictures
UNREADABLE, CHANGED = "unreadable", "changed since classified"


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def field_jpeg(rgb: np.ndarray, px: int) -> bytes:
    """The original field, longest side at most px, as JPEG (a field is a photograph: ~10x smaller than PNG)."""
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(rgb, np.uint8))
    im.thumbnail((px, px), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=88)
    return buf.getvalue()


def member_targets(rows: list[dict], backbone: str, classes) -> np.ndarray:
    """Each row's class index that this member gave (its argmax): the class its Grad-CAM explains."""
    probs = np.array([[r[schema.backbone_prob_column(backbone, c)] or 0.0 for c in classes] for r in rows])
    return probs.argmax(axis=1)


def read_field(row: dict) -> tuple[bytes, np.ndarray] | str:
    """The row's image (its bytes, and decoded), or why it is left out (UNREADABLE / CHANGED)."""
    try:
        data = storage.read_bytes(storage.from_uri(row["uri"]))
    except (OSError, StorageError) as exc:
        log.warning("review: %s left out (%s)", row["uri"], storage.first_line(exc))
        return UNREADABLE
    if hashlib.sha256(data).hexdigest() != row["sha256"]:
        return CHANGED
    try:
        return data, decode_rgb(data)
    except DecodeError:
        return UNREADABLE


def pictures(rows: list[dict], run_dir: str, metas: dict, classes, px: int) -> tuple[list[dict | None], dict]:
    """Per row {"field", "input", "cams": {backbone: data URI}} (None when left out), and the counts
    of rows left out by reason."""
    out: list[dict | None] = []
    left: dict[str, int] = {}
    for start in range(0, len(rows), CHUNK):
        out += _chunk(rows[start:start + CHUNK], run_dir, metas, classes, px, left)
    return out, left


def _chunk(rows: list[dict], run_dir: str, metas: dict, classes, px: int, left: dict) -> list[dict | None]:
    fields = [read_field(r) for r in rows]
    for f in fields:
        if isinstance(f, str):
            left[f] = left.get(f, 0) + 1
    keep = [i for i, f in enumerate(fields) if not isinstance(f, str)]
    kept_rows = [rows[i] for i in keep]
    views, maps = {}, {}
    for b, meta in metas.items():
        prep = preprocessing.read(meta)
        views[b] = [gallery.model_view(fields[i][0], prep) for i in keep]
        if keep:
            maps[b] = gallery.member_cams(run_dir, b, np.stack(views[b]), member_targets(kept_rows, b, classes))
    first = next(iter(metas))
    out: list[dict | None] = [None] * len(rows)
    for k, i in enumerate(keep):
        cams = {b: m[k] for b, m in maps.items() if m is not None}
        item = gallery.gallery_item(views[first][k], rows[i]["uri"], "", {}, ("", 0.0), None, cams, MODEL_PX)
        out[i] = {"field": data_uri(field_jpeg(fields[i][1], px), "image/jpeg"),
                  "input": data_uri(item["thumb"], "image/png"),
                  "cams": {b: data_uri(png, "image/png") for b, png in item["cams"].items()}}
    return out
