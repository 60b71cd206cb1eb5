"""RUN/manifest.parquet: built from catalogue rows (`manifest_table`) and read back (`read_manifest`).

The table follows schema.MANIFEST_SCHEMA; its Parquet metadata records the source root the paths are
relative to, the class list (JSON, sorted, index order) and the seed. Rows of reviewed images
(`prepare --reviews`) carry their URI as `path` and fill schema.MANIFEST_REVIEW_COLUMNS; a manifest
written before those columns existed reads with them null and keeps its identity.
"""
from __future__ import annotations

import hashlib
import json

import pyarrow as pa

from .. import schema
from ..config import PrepareConfig
from ..errors import StaleArtifactError, StorageError
from ..io import storage
from ..rundir import RunDir
from . import neardup
from .split import assign_splits, dup_groups


def read_manifest(run: RunDir | str) -> tuple[pa.Table, str, list[str]]:
    """(manifest table, source root, class names in index order) of a prepared run; its identity is
    checked (a manifest edited after prepare is refused)."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    if not storage.exists(run.manifest):
        raise StorageError(f"{run.manifest}: no manifest; run `alle-dist prepare --data SRC --run-dir {run.root}` first")
    table = storage.read_parquet(run.manifest)
    meta = table.schema.metadata or {}
    if meta.get(schema.META_MANIFEST_ID, b"").decode() != manifest_id(table):   # recorded_id_of, unchecked yet
        raise StaleArtifactError(f"{run.manifest}: its contents don't match its recorded identity (edited after "
                                 "`alle-dist prepare`, or written by an older alle_dist); prepare a new --run-dir")
    source = meta[schema.META_SOURCE].decode()
    classes = json.loads(meta[schema.META_CLASSES])
    return with_review_columns(table), source, classes


def with_review_columns(table: pa.Table) -> pa.Table:
    """The table with schema.MANIFEST_REVIEW_COLUMNS, null where an older manifest lacks them."""
    for name in schema.MANIFEST_REVIEW_COLUMNS:
        if name not in table.column_names:
            table = table.append_column(schema.MANIFEST_SCHEMA.field(name), pa.nulls(table.num_rows, pa.string()))
    return table


def manifest_table(rows: list[dict], source: str, seed: int, cfg: PrepareConfig) -> pa.Table:
    """Rows (from catalog.check_file) → the manifest: conflicting labels refused, exact and
    near-duplicate groups as split units, the split, schema, metadata and the manifest's identity."""
    rows = mark_conflicting_labels(sorted(rows, key=lambda r: r["path"]))
    exact = dup_groups(rows)
    hashes = [neardup.from_int64(r.get("phash")) if r["status"] == schema.OK else None for r in rows]
    near = neardup.near_groups(hashes, cfg.near_radius) if cfg.near_radius >= 0 else [-1] * len(rows)
    unit, reason = neardup.combine_groups(exact, near)
    splits = assign_splits(rows, unit, seed, cfg.test_fraction, cfg.val_fraction)
    cols = {k: [r.get(k) for r in rows] for k in ("path", "label", "sha256", "bytes", "phash", "status", "error",
                                                   *schema.MANIFEST_REVIEW_COLUMNS)}
    cols.update(dup_group=exact, split_group=unit, group_reason=reason, split=splits)
    classes = sorted({r["label"] for r in rows if r["label"]})
    meta = {schema.META_SOURCE: str(source).encode(), schema.META_CLASSES: json.dumps(classes).encode(),
            schema.META_SEED: str(seed).encode(), schema.META_NEAR_RADIUS: str(cfg.near_radius).encode()}
    table = pa.Table.from_pydict(cols, schema=schema.MANIFEST_SCHEMA.with_metadata(meta))
    return table.replace_schema_metadata({**meta, schema.META_MANIFEST_ID: manifest_id(table).encode()})


def mark_conflicting_labels(rows: list[dict]) -> list[dict]:
    """Identical bytes under two or more class folders: every copy becomes an error row (kept out of
    every split), since no one can say which label is right."""
    labels: dict[str, set] = {}
    for r in rows:
        if r["status"] == schema.OK:
            labels.setdefault(r["sha256"], set()).add(r["label"])
    out = []
    for r in rows:
        seen = labels.get(r["sha256"], set()) if r["status"] == schema.OK else set()
        if len(seen) > 1:
            r = {**r, "status": schema.ERROR,
                 "error": f"conflicting labels: identical bytes under {', '.join(sorted(seen))}"}
        out.append(r)
    return out


def manifest_id(table: pa.Table) -> str:
    """sha256 of what a manifest says (every row's path, label, bytes' hash, groups, split, status, a
    reviewed image's source, reviewer and batch, and the source, classes, seed and radius),
    independent of how Parquet encoded it. A row's review columns enter only when it has them, so a
    manifest from before they existed keeps the identity its models recorded."""
    h = hashlib.sha256()
    meta = table.schema.metadata or {}
    for key in (schema.META_SOURCE, schema.META_CLASSES, schema.META_SEED, schema.META_NEAR_RADIUS):
        h.update(key + b"=" + meta.get(key, b"") + b"\n")
    table = with_review_columns(table)
    review = list(schema.MANIFEST_REVIEW_COLUMNS)
    names = [f.name for f in schema.MANIFEST_SCHEMA if f.name not in review] + review
    base = len(names) - len(review)
    for batch in table.select(names).to_batches(max_chunksize=65536):
        for row in zip(*(batch.column(n).to_pylist() for n in names)):
            row = row if any(v is not None for v in row[base:]) else row[:base]
            h.update(json.dumps(row, separators=(",", ":")).encode() + b"\n")
    return h.hexdigest()


def recorded_id(run: RunDir) -> str:
    """The identity of RUN/manifest.parquet (checked against its contents by read_manifest)."""
    return recorded_id_of(read_manifest(run)[0])


def recorded_id_of(table: pa.Table) -> str:
    """The identity a manifest table records (read_manifest has checked it against the contents)."""
    return table.schema.metadata[schema.META_MANIFEST_ID].decode()
