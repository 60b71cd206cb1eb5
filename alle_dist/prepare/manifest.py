"""RUN/manifest.parquet: built from catalogue rows (`manifest_table`) and read back (`read_manifest`).

The table follows schema.MANIFEST_SCHEMA; its Parquet metadata records the source root the paths are
relative to, the class list (JSON, sorted, index order) and the seed.
"""
from __future__ import annotations

import json

import pyarrow as pa

from .. import schema
from ..config import PrepareConfig
from ..errors import StorageError
from ..io import storage
from ..rundir import RunDir
from .split import assign_splits, dup_groups


def read_manifest(run: RunDir | str) -> tuple[pa.Table, str, list[str]]:
    """(manifest table, source root, class names in index order) of a prepared run."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    if not storage.exists(run.manifest):
        raise StorageError(f"{run.manifest}: no manifest; run `alle-dist prepare --data SRC --run-dir {run.root}` first")
    table = storage.read_parquet(run.manifest)
    meta = table.schema.metadata or {}
    source = meta[schema.META_SOURCE].decode()
    classes = json.loads(meta[schema.META_CLASSES])
    return table, source, classes


def manifest_table(rows: list[dict], source: str, seed: int, cfg: PrepareConfig) -> pa.Table:
    """Rows (from check_file) → the manifest: dup groups, splits, schema and metadata."""
    rows = sorted(rows, key=lambda r: r["path"])
    groups = dup_groups(rows)
    splits = assign_splits(rows, groups, seed, cfg.test_fraction, cfg.val_fraction)
    cols = {k: [r[k] for r in rows] for k in ("path", "label", "sha256", "bytes")}
    cols.update(dup_group=groups, split=splits, status=[r["status"] for r in rows],
                error=[r["error"] for r in rows])
    classes = sorted({r["label"] for r in rows if r["label"]})
    meta = {schema.META_SOURCE: str(source).encode(), schema.META_CLASSES: json.dumps(classes).encode(),
            schema.META_SEED: str(seed).encode()}
    return pa.Table.from_pydict(cols, schema=schema.MANIFEST_SCHEMA.with_metadata(meta))
