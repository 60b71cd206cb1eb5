"""Bulk classification, the Ray-free half: what to classify, reading and preparing one image, the
exactly-once writer, the manifest, the readers and the final reconciliation (docs/classify.md).

Exactly once rests on three rules:
- only the driver writes, and only files named by the run id and a sequence number
  (`part-<run_id>-<seq>.parquet`): a retried write overwrites its own file, never adds one;
- a part is listed in `DST/_manifest.json` (rewritten atomically) only after it is complete, and
  readers (`read_results`) trust only listed parts: a crash leaves at worst an unlisted orphan;
- a rerun skips every input whose (path, sha256) is already in a listed part.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from . import imagestats, schema, storage
from .config import SegmentConfig
from .imageio import DecodeError, decode_rgb
from .segment import preprocess

MANIFEST_NAME = "_manifest.json"
MANIFEST_FORMAT = 1
# Internal status of an input already classified in DST: it flows to the driver (so the run can be
# reconciled) but is never written.
SKIP = "skip"
# Columns of the prepared rows that travel from the read tasks to the model actors.
PREPARED_COLUMNS = ("path", "sha256", "bytes", "status", "error", "mask_fraction", "image_stats", "image")


def new_run_id() -> str:
    """Sortable and unique: UTC time + random suffix (also the part files' name stem)."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------- manifest and readers

def manifest_uri(dst: str) -> str:
    return storage.join(dst, MANIFEST_NAME)


def load_manifest(dst: str) -> dict:
    """DST's manifest, or an empty one when DST has none yet."""
    uri = manifest_uri(dst)
    try:
        if not storage.exists(uri):
            return {"format": MANIFEST_FORMAT, "files": [], "runs": []}
        doc = storage.read_json(uri)
    except OSError as exc:
        raise storage.StorageError(f"{uri}: can't be read ({storage.first_line(exc)}); check the output path, "
                                   "the network and the AWS credentials") from None
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
        raise storage.StorageError(f"{uri}: not an alle_dist classify manifest (format "
                                   f"{MANIFEST_FORMAT}); choose another --output")
    return doc


def write_manifest(dst: str, doc: dict) -> None:
    """Atomic (temporary file + rename locally; one PUT on S3): readers see the old or the new one."""
    storage.write_json(manifest_uri(dst), doc)


def read_results(dst: str, columns: list[str] | None = None) -> pa.Table:
    """Every published row under DST: the parts listed in the manifest, nothing else."""
    doc = load_manifest(dst)
    tables = [storage.read_parquet(storage.join(dst, f["name"])) for f in doc["files"]]
    if not tables:
        base = schema.classify_schema(doc.get("classes", []), doc.get("backbones", []))
        empty = base.empty_table()
        return empty.select(columns) if columns else empty
    if columns:
        tables = [t.select(columns) for t in tables]
    return pa.concat_tables(tables, promote_options="default")


def done_index(dst: str) -> dict[str, tuple[int, str]]:
    """path → (bytes, sha256) of every published row: what a rerun may skip."""
    t = read_results(dst, ["path", "bytes", "sha256"])
    return {p: (n, s) for p, n, s in zip(*(t.column(c).to_pylist() for c in ("path", "bytes", "sha256")))}


# ---------------------------------------------------------------- planning

def plan(listing: list[tuple[str, int]], done: dict[str, tuple[int, str]],
         verify_sha256: bool = True) -> tuple[pa.Table, list[str]]:
    """(inputs to read, inputs skipped without reading).

    An input whose path and size match a published row is already done. With `verify_sha256` it
    is still read and hashed (its row carries the published sha256; the read task drops it when
    the hashes agree, so a file replaced in place with a same-size one is classified again);
    without, it is skipped on path + size alone and never read.
    """
    paths, sizes, expect, skipped = [], [], [], []
    for path, size in listing:
        prev = done.get(path)
        match = prev is not None and prev[0] == size and prev[1] is not None
        if match and not verify_sha256:
            skipped.append(path)
            continue
        paths.append(path)
        sizes.append(size)
        expect.append(prev[1] if match else None)
    todo = pa.table({"path": pa.array(paths, pa.string()), "bytes": pa.array(sizes, pa.int64()),
                     "done_sha256": pa.array(expect, pa.string())})
    return todo, skipped


# ---------------------------------------------------------------- reading and preparing

class InputError(Exception):
    """One input that can't be used; str(e) goes to the row's error column."""


@dataclass(frozen=True)
class PrepSpec:
    """How the read tasks turn a path into model input (the model's own preprocessing)."""
    src: str
    image_size: int
    segment: SegmentConfig | None = SegmentConfig()   # None: the models were trained unsegmented
    max_pixels: int = 50_000_000
    image_stats: bool = True      # compute imagestats.features (False: the models have no image statistics)


def read_input(uri: str) -> bytes:
    """The bytes of one listed input; InputError when this file alone is the problem.

    A file gone or unreadable since listing is that file's problem. An S3 403 is not: it means the
    credentials or the bucket policy are wrong for every file, so it fails the job (StorageError).
    """
    try:
        return storage.read_bytes(uri)
    except FileNotFoundError:
        raise InputError("vanished between listing and reading (not found)") from None
    except OSError as exc:
        text = str(exc)
        if storage.is_s3(uri) and any(k in text for k in ("ACCESS_DENIED", "AccessDenied", "HTTP status 403")):
            raise storage.StorageError(f"{uri}: access denied (HTTP 403); check the AWS credentials "
                                       "and the bucket policy (s3:GetObject)") from None
        if storage.is_s3(uri) and "NoSuchKey" not in text and "does not exist" not in text:
            raise  # throttling or network after all retries: fail the job; a rerun resumes
        raise InputError(f"can't be read: {storage.first_line(exc)}") from None


def prepare_one(spec: PrepSpec, path: str, size: int, done_sha256: str | None) -> dict:
    """One prepared row (see PREPARED_COLUMNS); `image` is the raw HxWx3 uint8 bytes, b'' unless ok;
    `image_stats` the original field's imagestats.features as float32 bytes (None unless ok)."""
    row = {"path": path, "sha256": None, "bytes": size, "status": schema.OK, "error": None,
           "mask_fraction": None, "image_stats": None, "image": b""}
    try:
        data = read_input(storage.join(spec.src, path))
        row["bytes"], row["sha256"] = len(data), hashlib.sha256(data).hexdigest()
        if done_sha256 is not None and row["sha256"] == done_sha256:
            row["status"] = SKIP
            return row
        rgb = decode_rgb(data, spec.max_pixels)
        del data
        if spec.image_stats:   # of the original field, as training computes them
            row["image_stats"] = imagestats.features(rgb, spec.segment).tobytes()
        image, row["mask_fraction"] = preprocess(rgb, spec.image_size, spec.segment)
        row["image"] = image.tobytes()
    except (InputError, DecodeError) as exc:
        row["status"], row["error"] = schema.ERROR, str(exc)
    return row


def prepare_batch(batch: pa.Table, spec: PrepSpec) -> pa.Table:
    """The read task: rows (path, bytes, done_sha256) → prepared rows; never raises for one bad file."""
    cols = [batch.column(c).to_pylist() for c in ("path", "bytes", "done_sha256")]
    rows = [prepare_one(spec, p, n, d) for p, n, d in zip(*cols)]
    return pa.table({
        "path": pa.array([r["path"] for r in rows], pa.string()),
        "sha256": pa.array([r["sha256"] for r in rows], pa.string()),
        "bytes": pa.array([r["bytes"] for r in rows], pa.int64()),
        "status": pa.array([r["status"] for r in rows], pa.string()),
        "error": pa.array([r["error"] for r in rows], pa.string()),
        "mask_fraction": pa.array([r["mask_fraction"] for r in rows], pa.float32()),
        "image_stats": pa.array([r["image_stats"] for r in rows], pa.binary()),
        "image": pa.array([r["image"] for r in rows], pa.binary()),
    })


def images_of(batch: pa.Table, image_size: int) -> np.ndarray:
    """The ok rows' images as one N x S x S x 3 uint8 array (one copy out of Arrow)."""
    ok = [v for v, s in zip(batch.column("image").to_pylist(), batch.column("status").to_pylist())
          if s == schema.OK]
    out = np.empty((len(ok), image_size, image_size, 3), np.uint8)
    for i, v in enumerate(ok):
        out[i] = np.frombuffer(v, np.uint8).reshape(image_size, image_size, 3)
    return out


def ok_mask(batch: pa.Table) -> np.ndarray:
    return np.asarray(batch.column("status").to_pylist(), dtype=object) == schema.OK


def pack_rows(ok: np.ndarray, matrix: np.ndarray) -> pa.Array:
    """One float32 row of `matrix` per ok row, as bytes (null elsewhere): compact in the object store."""
    rows = iter(np.ascontiguousarray(matrix, np.float32))
    return pa.array([next(rows).tobytes() if k else None for k in ok], pa.binary())


def unpack_rows(column, ok: np.ndarray) -> np.ndarray:
    """The ok rows of a pack_rows column as one float32 matrix."""
    vals = [v for v, k in zip(column.to_pylist(), ok) if k]
    return np.frombuffer(b"".join(vals), np.float32).reshape(len(vals), -1)


def scatter(ok: np.ndarray, values: np.ndarray) -> list:
    """Values of the ok rows spread over all rows; None elsewhere."""
    out = [None] * len(ok)
    for i, v in zip(np.flatnonzero(ok), np.asarray(values).tolist()):
        out[i] = v
    return out


def as_array(values, type_: pa.DataType, n: int) -> pa.Array:
    if values is None:
        return pa.nulls(n, type_)
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values.cast(type_)
    return pa.array(values, type_)


# ---------------------------------------------------------------- the exactly-once writer

class PartWriter:
    """Buffers result rows on the driver and publishes them as complete, listed part files.

    Memory is bounded by `rows_per_file` result rows (no images). Each part is written atomically
    under a name fixed by the run id and a sequence number, then listed in the manifest.
    """

    def __init__(self, dst: str, manifest: dict, run: dict, schema_: pa.Schema, rows_per_file: int):
        self.dst, self.manifest, self.run, self.schema = dst, manifest, run, schema_
        self.rows_per_file = rows_per_file
        self._buf: list[pa.Table] = []
        self._buffered = 0
        self._seq = 0

    def add(self, table: pa.Table) -> None:
        if table.num_rows:
            self._buf.append(table.cast(self.schema))
            self._buffered += table.num_rows
        if self._buffered >= self.rows_per_file:
            self.flush()

    def flush(self) -> None:
        if not self._buffered:
            return
        table = pa.concat_tables(self._buf)
        self._buf, self._buffered = [], 0
        name = f"part-{self.run['run_id']}-{self._seq:05d}.parquet"
        self._seq += 1
        storage.write_parquet(table, storage.join(self.dst, name))
        self.manifest["files"].append({"name": name, "rows": table.num_rows, "run_id": self.run["run_id"]})
        self.run["rows_written"] = self.run.get("rows_written", 0) + table.num_rows
        self.publish()

    def publish(self) -> None:
        """Rewrite the manifest: always after the parts it lists are complete."""
        write_manifest(self.dst, self.manifest)


# ---------------------------------------------------------------- reconciliation

def reconcile(listed: set[str], seen: set[str], published: pa.Table) -> list[str]:
    """Problems that break 'every listed input exactly once'; [] when the run is whole.

    `seen`: inputs this run accounted for (written or skipped as done); `published`: the path and
    sha256 columns of every published row.
    """
    problems = []
    pub_paths = published.column("path").to_pylist()
    keys = list(zip(pub_paths, published.column("sha256").to_pylist()))
    for what, diff in (("listed but never came back from the pipeline", listed - seen),
                       ("came back but were not listed", seen - listed),
                       ("listed but have no published row", listed - set(pub_paths))):
        if diff:
            problems.append(f"{len(diff)} input(s) {what}: {_some(diff)}")
    dups = {k for k, n in Counter(keys).items() if n > 1}
    if dups:
        problems.append(f"{len(dups)} input(s) published more than once: {_some(p for p, _ in dups)}")
    return problems


def _some(paths, k: int = 10) -> str:
    paths = sorted(paths)
    return ", ".join(paths[:k]) + (f" ... (+{len(paths) - k})" if len(paths) > k else "")
