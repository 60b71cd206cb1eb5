"""Prepare a run: catalogue the labelled images, hash and decode-check them, split without leakage.

Core (Ray-free): `check_file`, `dup_groups`, `assign_splits`, `manifest_table`.
Ray shell: `build_manifest` reads, hashes and decode-checks the files as Ray Data tasks.
Writes `RUN/manifest.parquet` (schema.MANIFEST_SCHEMA; source, classes and seed in its metadata)
and `RUN/prepare_config.yaml`.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import zlib
from collections import Counter, defaultdict

import numpy as np
import pyarrow as pa

from . import schema, storage
from .config import PrepareConfig
from .imageio import DecodeError, decode_rgb

log = logging.getLogger("alle_dist.catalog")

MANIFEST_FILE = "manifest.parquet"
# The public dataset's root holds Original/<class>/ and Segmented/<class>/ (the same images twice).
ORIGINAL_DIR, SEGMENTED_DIR = "Original", "Segmented"


def image_uri(source: str, rel_path: str) -> str:
    """The full local path or s3:// URI of a manifest `path` under its source root."""
    return storage.join(source, rel_path)


def read_manifest(run_dir: str) -> tuple[pa.Table, str, list[str]]:
    """(manifest table, source root, class names in index order) of a prepared run."""
    uri = storage.join(run_dir, MANIFEST_FILE)
    if not storage.exists(uri):
        raise storage.StorageError(f"{uri}: no manifest; run `alle-dist prepare --data SRC --run-dir {run_dir}` first")
    table = storage.read_parquet(uri)
    meta = table.schema.metadata or {}
    source = meta[schema.META_SOURCE].decode()
    classes = json.loads(meta[schema.META_CLASSES])
    return table, source, classes


# ---------------------------------------------------------------- listing (driver side)

def list_labelled(src: str) -> list[tuple[str, str]]:
    """(relative path, class) of every image under src; the class is the parent folder's name.

    Raises StorageError for a missing / unreachable / empty source and UsageError for one class.
    """
    from .cli import UsageError

    files = [rel for rel, _ in storage.list_files(src, schema.IMAGE_SUFFIXES)]
    tops = {rel.split("/")[0] for rel in files if "/" in rel}
    if {ORIGINAL_DIR, SEGMENTED_DIR} <= tops:
        # The public dataset's root: catalogue the originals only, not every image twice.
        log.warning("%s has %s/ and %s/: cataloguing %s/ only", src, ORIGINAL_DIR, SEGMENTED_DIR, ORIGINAL_DIR)
        files = [rel for rel in files if rel.startswith(ORIGINAL_DIR + "/")]
    if not files:
        raise storage.StorageError(
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


# ---------------------------------------------------------------- dedup + split (pure)

def dup_groups(rows: list[dict]) -> list[int]:
    """Per row: the id of its duplicate group (ok rows with equal sha256), -1 when unique."""
    by_hash: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        if r["status"] == schema.OK:
            by_hash[r["sha256"]].append(i)
    groups = [-1] * len(rows)
    # Numbered in path order of each group's first file, so ids are stable across runs.
    multi = sorted((idx for idx in by_hash.values() if len(idx) > 1), key=lambda idx: rows[idx[0]]["path"])
    for gid, idx in enumerate(multi):
        for i in idx:
            groups[i] = gid
    return groups


def _take_units(units: list[list[int]], target: int) -> tuple[list[int], list[list[int]]]:
    """Greedily take whole units (in the given order) while that brings the count closer to target."""
    taken: list[int] = []
    rest: list[list[int]] = []
    for u in units:
        if abs(len(taken) + len(u) - target) < abs(len(taken) - target):
            taken += u
        else:
            rest.append(u)
    return taken, rest


def assign_splits(rows: list[dict], groups: list[int], seed: int,
                  test_fraction: float, val_fraction: float) -> list[str | None]:
    """Stratified train / val / test per row (None for error rows).

    A duplicate group is one unit: all its files land in the same split (the class of its first
    file decides its stratum). Deterministic for a given seed and set of files.
    """
    units_by_class: dict[str, list[list[int]]] = defaultdict(list)
    seen: dict[int, list[int]] = {}
    for r in sorted(range(len(rows)), key=lambda j: rows[j]["path"]):
        if rows[r]["status"] != schema.OK:
            continue
        g = groups[r]
        if g >= 0 and g in seen:
            seen[g].append(r)
            continue
        unit = [r]
        if g >= 0:
            seen[g] = unit
        units_by_class[rows[r]["label"]].append(unit)
    split: list[str | None] = [None] * len(rows)
    for cls in sorted(units_by_class):
        # One generator per class: adding or removing a class doesn't reshuffle the others.
        rng = np.random.default_rng([seed, zlib.crc32(cls.encode())])
        units = units_by_class[cls]
        units = [units[k] for k in rng.permutation(len(units))]
        n = sum(len(u) for u in units)
        test, rest = _take_units(units, round(n * test_fraction))
        n_train = n - len(test)
        val, rest = _take_units(rest, round(n_train * val_fraction))
        for name, idx in ((schema.TEST, test), (schema.VAL, val), (schema.TRAIN, [i for u in rest for i in u])):
            for i in idx:
                split[i] = name
    return split


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


# ---------------------------------------------------------------- Ray shell

def build_manifest(src: str, seed: int, cfg: PrepareConfig,
                   items: list[tuple[str, str]] | None = None) -> pa.Table:
    """List src (unless `items` from list_labelled are given), read + hash + decode-check every
    image as Ray Data tasks, and split. Needs Ray up."""
    import ray

    from .runtime import cluster_cpus

    items = items if items is not None else list_labelled(src)
    n_tasks = cfg.hash_workers or cluster_cpus()
    # A few blocks per task so a slow S3 object doesn't hold up the rest.
    ds = ray.data.from_items([{"path": p, "label": c} for p, c in items],
                             override_num_blocks=max(1, min(len(items), n_tasks * 4)))
    out = ds.map_batches(check_batch, fn_kwargs={"source": src}, batch_size=64).take_all()
    return manifest_table(out, src, seed, cfg)


def summary(table: pa.Table) -> str:
    """A per-class / per-split count table and the error count, for the terminal."""
    rows = table.select(["label", "split", "status"]).to_pylist()
    counts = Counter((r["label"], r["split"] or r["status"]) for r in rows)
    classes = sorted({r["label"] for r in rows})
    cols = [*schema.SPLITS, schema.ERROR]
    lines = [f"{'class':<12}" + "".join(f"{c:>8}" for c in cols) + f"{'total':>8}"]
    for cls in classes:
        vals = [counts[(cls, c)] for c in cols]
        lines.append(f"{cls or '(none)':<12}" + "".join(f"{v:>8}" for v in vals) + f"{sum(vals):>8}")
    n_dup = len({g for g in table.column("dup_group").to_pylist() if g >= 0})
    n_err = sum(v for (_, k), v in counts.items() if k == schema.ERROR)
    lines.append(f"{len(rows)} files, {n_err} errors, {n_dup} duplicate groups")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, metavar="SRC", help="folder or s3://bucket/prefix of <class>/<image> files")
    p.add_argument("--run-dir", required=True, metavar="RUN", help="run directory (local or s3://) for manifest.parquet")
    p.add_argument("--seed", type=int, default=None, help="split seed (default: prepare.seed, 0)")
    p.add_argument("--hash-workers", type=int, default=None, help="Ray Data tasks for read + hash (default: cluster CPUs)")


def main(args: argparse.Namespace) -> int:
    from . import config
    from .runtime import init_ray

    cfg = config.job_config(args.config, prepare={"seed": args.seed, "hash_workers": args.hash_workers})
    src = storage.absolute(args.data)   # the manifest records where the images are, for every later stage
    items = list_labelled(src)  # before Ray starts: a bad source fails in a second
    init_ray(args.num_cpus)
    table = build_manifest(src, cfg.prepare.seed, cfg.prepare, items)
    storage.write_parquet(table, storage.join(args.run_dir, MANIFEST_FILE))
    config.save_resolved(storage.join(args.run_dir, "prepare_config.yaml"), cfg, data=args.data, run_dir=args.run_dir)
    print(summary(table))
    print(f"manifest: {storage.join(args.run_dir, MANIFEST_FILE)}")
    return 0

