"""Catalogue labelled images: list SRC (<class>/<image>), read, hash and decode-check each file.

Pure (Ray-free): `list_labelled` (driver side), `check_file` / `check_batch` (what a Ray Data task
runs per file; never raises: a bad file is an error row).
"""
from __future__ import annotations

import hashlib
import logging

from .. import schema
from ..errors import DecodeError, StorageError, UsageError
from ..io import storage
from ..io.images import decode_rgb

log = logging.getLogger("alle_dist.prepare")

# The public dataset's root holds Original/<class>/ and Segmented/<class>/ (the same images twice).
ORIGINAL_DIR, SEGMENTED_DIR = "Original", "Segmented"


def image_uri(source: str, rel_path: str) -> str:
    """The full local path or s3:// URI of a manifest `path` under its source root."""
    return storage.join(source, rel_path)


def list_labelled(src: str) -> list[tuple[str, str]]:
    """(relative path, class) of every image under src; the class is the parent folder's name.

    Raises StorageError for a missing / unreachable / empty source and UsageError for one class.
    """
    files = [rel for rel, _ in storage.list_files(src, schema.IMAGE_SUFFIXES)]
    tops = {rel.split("/")[0] for rel in files if "/" in rel}
    if {ORIGINAL_DIR, SEGMENTED_DIR} <= tops:
        # The public dataset's root: catalogue the originals only, not every image twice.
        log.warning("%s has %s/ and %s/: cataloguing %s/ only", src, ORIGINAL_DIR, SEGMENTED_DIR, ORIGINAL_DIR)
        files = [rel for rel in files if rel.startswith(ORIGINAL_DIR + "/")]
    if not files:
        raise StorageError(
            f"{src}: no image files ({', '.join(schema.IMAGE_SUFFIXES)}) found; point --data at a folder "
            "or s3:// prefix that holds <class>/<image> files")
    items = [(rel, rel.split("/")[-2] if "/" in rel else "") for rel in files]
    classes = sorted({c for _, c in items if c})
    layout = "<class>/<image> or Original/<class>/<image>"
    if not classes:
        raise UsageError(f"{src}: the images are not inside class folders; lay them out as {layout}")
    if len(classes) < 2:
        raise UsageError(f"{src}: found 1 class folder(s) ({classes[0]}); need at least two, laid out as {layout}")
    return items


# ---------------------------------------------------------------- per-file check (pure)

def check_file(source: str, rel: str, label: str) -> dict:
    """One manifest row (without dup_group / split): read, sha256, decode check; never raises."""
    row = {"path": rel, "label": label, "sha256": None, "bytes": None, "status": schema.OK, "error": None}
    if not label:
        return {**row, "status": schema.ERROR, "error": "not inside a class folder (<class>/<image>)"}
    try:
        data = storage.read_bytes(image_uri(source, rel))
    except Exception as exc:  # noqa: BLE001 - an unreadable file is an error row, not a crash
        return {**row, "status": schema.ERROR, "error": f"unreadable: {storage.first_line(exc)}"}
    row.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    try:
        decode_rgb(data)
    except DecodeError as exc:
        row.update(status=schema.ERROR, error=str(exc))
    return row


def check_batch(batch: dict, source: str) -> dict:
    """Ray Data batch (columns path, label) → manifest columns; bad files become error rows."""
    rows = [check_file(source, str(p), str(c)) for p, c in zip(batch["path"], batch["label"])]
    return {k: [r[k] for r in rows] for k in ("path", "label", "sha256", "bytes", "status", "error")}
