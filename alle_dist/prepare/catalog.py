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
from . import neardup

log = logging.getLogger("alle_dist.prepare")

# The public dataset's root holds Original/<class>/ and Segmented/<class>/ (the same images twice).
ORIGINAL_DIR, SEGMENTED_DIR = "Original", "Segmented"


def image_uri(source: str, rel_path: str) -> str:
    """Where a manifest `path` is: the local path or s3:// URI of a path under the source root; a
    reviewed image's path is its absolute URI already (file:// or s3://) and passes through (as
    the local path of a file:// URI). Every reader of a manifest image asks this function."""
    if storage.is_s3(rel_path) or str(rel_path).startswith("file://"):
        return storage.from_uri(rel_path)
    return storage.join(source, rel_path)


def list_labelled(src: str) -> list[tuple[str, str]]:
    """(relative path, class) of every image under src. The class is the FIRST folder below the root
    (below Original/ for the public dataset's layout): images in nested subfolders of a class folder
    belong to that class (Pre/sub/deeper/x.jpg is a Pre image), never to a class named after a subfolder.

    Raises StorageError for a missing / unreachable / empty source and UsageError for one class; warns
    about class folders that hold no image.
    """
    files = storage.list_images(src)
    tops = {rel.split("/")[0] for rel in files if "/" in rel}
    prefix = ""
    if ORIGINAL_DIR in tops and tops <= {ORIGINAL_DIR, SEGMENTED_DIR}:
        # The public dataset's layout: the classes are below Original/; catalogue the originals only,
        # not every image twice when Segmented/ is there too.
        if SEGMENTED_DIR in tops:
            log.warning("%s has %s/ and %s/: cataloguing %s/ only", src, ORIGINAL_DIR, SEGMENTED_DIR, ORIGINAL_DIR)
        prefix = ORIGINAL_DIR + "/"
        files = [rel for rel in files if rel.startswith(prefix)]
    if not files:
        raise StorageError(
            f"{src}: no image files ({', '.join(schema.IMAGE_SUFFIXES)}) found; point --data at a folder "
            "or s3:// prefix that holds <class>/<image> files")
    items = [(rel, _class_of(rel[len(prefix):])) for rel in files]
    classes = sorted({c for _, c in items if c})
    layout = "<class>/<image> or Original/<class>/<image>"
    if not classes:
        raise UsageError(f"{src}: the images are not inside class folders; lay them out as {layout}")
    if len(classes) < 2:
        raise UsageError(f"{src}: found 1 class folder(s) ({classes[0]}); need at least two, laid out as {layout}")
    for folder in sorted(set(_class_folders(src, prefix)) - set(classes)):
        log.warning("%s: class folder %r holds no images (%s); it is not a class of this run",
                    src, folder, ", ".join(schema.IMAGE_SUFFIXES))
    return items


def _class_of(rel: str) -> str:
    """The first folder of a path relative to the class root; '' for a file at the root itself."""
    return rel.split("/")[0] if "/" in rel else ""


def _class_folders(src: str, prefix: str) -> list[str]:
    """The folder names right below the class root (the candidates for classes)."""
    import pyarrow.fs as pafs

    fs, base = storage.resolve(storage.join(src, prefix) if prefix else src)
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=False))
    return [i.base_name for i in infos if i.type == pafs.FileType.Directory and not i.base_name.startswith(".")]


# ---------------------------------------------------------------- per-file check (pure)

def check_file(source: str, rel: str, label: str, reviewed_sha256: str | None = None) -> dict:
    """One manifest row (without groups / split): read, sha256, decode check, perceptual hash (of the
    decoded pixels, for near-duplicate groups); never raises. A reviewed image (`reviewed_sha256`:
    the bytes the reviewer saw) whose bytes changed since is an error row: the label is not theirs."""
    row = {"path": rel, "label": label, "sha256": None, "bytes": None, "phash": None, "status": schema.OK,
           "error": None}
    if not label:
        return {**row, "status": schema.ERROR, "error": "not inside a class folder (<class>/<image>)"}
    try:
        data = storage.read_bytes(image_uri(source, rel))
    except Exception as exc:  # noqa: BLE001 - an unreadable file is an error row, not a crash
        return {**row, "status": schema.ERROR, "error": f"unreadable: {storage.first_line(exc)}"}
    row.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    if reviewed_sha256 is not None and row["sha256"] != reviewed_sha256:
        return {**row, "status": schema.ERROR, "error": "changed since it was reviewed (sha256 differs)"}
    try:
        row["phash"] = neardup.to_int64(neardup.dct_hash(decode_rgb(data)))
    except DecodeError as exc:
        row.update(status=schema.ERROR, error=str(exc))
    return row


REVIEWED = "reviewed_sha256"    # the catalogue item key of a reviewed image's sha256 (review_items)


def check_batch(batch: dict, source: str) -> dict:
    """Ray Data batch (columns path, label; reviewed images also reviewed_sha256 and the review
    columns) → manifest columns; bad files become error rows."""
    n = len(batch["path"])
    col = lambda k: list(batch[k]) if k in batch else [None] * n  # noqa: E731
    rows = [check_file(source, str(p), str(c), s) for p, c, s in zip(batch["path"], batch["label"], col(REVIEWED))]
    out = {k: [r[k] for r in rows] for k in ("path", "label", "sha256", "bytes", "phash", "status", "error")}
    out.update({k: col(k) for k in schema.MANIFEST_REVIEW_COLUMNS})
    return out


def review_items(reviews, classes: list[str]) -> tuple[list[dict], dict[str, int]]:
    """Catalogue items of the reviewed images (the reviews table's current rows, Arrow): per uri its
    latest decision; those decided into one of `classes` become items (path = the URI), the rest
    are counted by label (other_cell, unusable, a class SRC lacks)."""
    latest: dict[str, dict] = {}
    for r in sorted(reviews.to_pylist(), key=lambda r: (r["uri"], r["decided_at"])):
        latest[r["uri"]] = r
    items, left_out = [], {}
    for uri, r in sorted(latest.items()):
        if r["label"] not in classes:
            left_out[r["label"]] = left_out.get(r["label"], 0) + 1
            continue
        items.append({"path": uri, "label": r["label"], REVIEWED: r["sha256"], "source": schema.REVIEW,
                      "reviewer": r["reviewer"], "batch_id": r["batch_id"]})
    return items, left_out
