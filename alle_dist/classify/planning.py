"""What a classify run reads (Ray-free): each listing chunk joined against DST's index in Arrow.

For every listed input (listing.INPUT_SCHEMA) the plan decides, from the current row of its uri
(store.index: bytes, sha256, status, and mtime_ns / etag under --trust-size), one of:
- `skip`: unchanged, never read. An input whose stored row has the same size and the same mtime_ns
  (local) or ETag (S3) under --trust-size; a listing error (dangling link, FIFO, ...) or a zero-byte
  file whose stored row already says exactly that.
- `direct`: an error row made without reading: a listing error row, or a file listed with 0 bytes
  ("empty file (0 bytes)", the row reading it would give). No model runs for them.
- `todo`: read in a Ray task. When the stored row has the same size and a sha256, that sha256 goes
  along (`done_sha256`): the read task hashes the bytes and drops the input when they agree (default
  rerun: size + sha256, so a file rewritten in place with other bytes of the same size is caught).

Only the index rows whose uri is in the chunk are joined (`pc.is_in` hashes the chunk, not the
index), so planning holds the index plus one chunk, never a Python object per input. The index is
condensed as it is read (build_index): sha256 as 32 raw bytes instead of 64 hex characters, status
as one bool. ~85 bytes per stored row with a typical 55-character uri.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable

import pyarrow as pa
import pyarrow.compute as pc

from .. import schema
from ..constants import EMPTY_FILE

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_EMPTY_DIGEST = pa.scalar(bytes.fromhex(EMPTY_SHA256), pa.binary(32))
INDEX = ("uri", "bytes", "sha256", "status")       # what the index reads from the store
TRUST_INDEX = INDEX + ("mtime_ns", "etag")
_COMPACT_TYPES = {"uri": pa.string(), "bytes": pa.int64(), "digest": pa.binary(32), "is_error": pa.bool_(),
                  "mtime_ns": pa.int64(), "etag": pa.string()}
TODO_SCHEMA = pa.schema([pa.field("uri", pa.string(), nullable=False), pa.field("bytes", pa.int64()),
                         pa.field("done_sha256", pa.string()), pa.field("mtime_ns", pa.int64()),
                         pa.field("etag", pa.string())])


@dataclass
class Planned:
    todo: pa.Table      # TODO_SCHEMA: to read
    direct: pa.Table    # uri, sha256, bytes, mtime_ns, etag, status, error: error rows to commit as they are
    skipped: int        # unchanged inputs, not read


def index_columns(trust_size: bool) -> tuple[str, ...]:
    return TRUST_INDEX if trust_size else INDEX


def empty_index(trust_size: bool) -> pa.Table:
    """The planning index of an empty table (build_index's schema)."""
    return _compact_schema(trust_size).empty_table()


def build_index(batches: Iterable[pa.RecordBatch], trust_size: bool) -> pa.Table:
    """The store's index rows (`index_columns`: uri, bytes, sha256 hex, status, ...) condensed batch
    by batch for planning: uri, bytes, digest (sha256 as 32 bytes), is_error, [mtime_ns, etag]."""
    parts = [_compact(b, trust_size) for b in batches]
    pa.default_memory_pool().release_unused()   # the read batches' buffers: ~30 MB per million rows held
    return pa.Table.from_batches(parts, schema=_compact_schema(trust_size)) if parts else empty_index(trust_size)


def _compact_schema(trust_size: bool) -> pa.Schema:
    names = ["uri", "bytes", "digest", "is_error"] + (["mtime_ns", "etag"] if trust_size else [])
    return pa.schema([(c, _COMPACT_TYPES[c]) for c in names])


def _compact(batch: pa.RecordBatch, trust_size: bool) -> pa.RecordBatch:
    cols = {"uri": batch.column("uri").cast(pa.string()), "bytes": batch.column("bytes"),
            "digest": _digest(batch.column("sha256")),
            "is_error": pc.fill_null(pc.equal(batch.column("status"), schema.ERROR), False)}
    if trust_size:
        cols.update(mtime_ns=batch.column("mtime_ns"), etag=batch.column("etag").cast(pa.string()))
    return pa.RecordBatch.from_pydict(cols, schema=_compact_schema(trust_size))


def _digest(hexes: pa.Array) -> pa.Array:
    """sha256 hex → 32 bytes. A value that is not one (a hand-edited table) becomes null: that
    input is read again, never skipped on a digest nobody computed."""
    def one(h):
        try:
            b = bytes.fromhex(h)
        except (TypeError, ValueError):
            return None
        return b if len(b) == 32 else None
    return pa.array([one(h) for h in hexes.to_pylist()], pa.binary(32))


def _hex(digests: pa.Array) -> pa.Array:
    return pa.array([None if d is None else d.hex() for d in digests.to_pylist()], pa.string())


def plan_chunk(chunk: pa.Table, index: pa.Table, trust_size: bool) -> Planned:
    """Split one listing chunk into todo / direct / skipped against the stored rows in `index`."""
    j = _joined(chunk, index)
    size, prev_size = j.column("size"), j.column("prev_bytes")
    listed_error = pc.equal(j.column("status"), schema.ERROR)
    empty = pc.and_(pc.invert(listed_error), pc.fill_null(pc.equal(size, 0), False))
    same_size = pc.fill_null(pc.equal(size, prev_size), False)
    known_sha = pc.is_valid(j.column("prev_digest"))
    unchanged_error = pc.and_(listed_error, _same_error_row(j))
    unchanged_empty = pc.and_(empty, pc.fill_null(pc.equal(j.column("prev_digest"), _EMPTY_DIGEST), False))
    skip = pc.or_(unchanged_error, unchanged_empty)
    if trust_size:
        skip = pc.or_(skip, pc.and_(pc.and_(same_size, known_sha), _same_stamp(j)))
    direct = pc.and_(pc.or_(listed_error, empty), pc.invert(skip))
    read = pc.invert(pc.or_(pc.or_(listed_error, empty), skip))
    return Planned(_todo(j.filter(read), pc.and_(same_size, known_sha).filter(read)),
                   _direct(j.filter(direct)), int(pc.sum(skip).as_py() or 0))


def _joined(chunk: pa.Table, index: pa.Table) -> pa.Table:
    known = index.filter(pc.is_in(index.column("uri"), value_set=chunk.column("uri")))
    known = known.rename_columns(["uri"] + [f"prev_{c}" for c in known.column_names[1:]])
    for c in ("prev_mtime_ns", "prev_etag"):
        if c not in known.column_names:
            known = known.append_column(c, pa.nulls(known.num_rows, pa.int64() if "mtime" in c else pa.string()))
    return chunk.join(known, "uri", join_type="left outer", use_threads=False)


def _same_error_row(j: pa.Table) -> pa.Array:
    """A listing error whose stored row is one too (no sha256, no size): the MERGE would change nothing."""
    return pc.and_(pc.fill_null(j.column("prev_is_error"), False),
                   pc.and_(pc.is_null(j.column("prev_digest")), pc.is_null(j.column("prev_bytes"))))


def _same_stamp(j: pa.Table) -> pa.Array:
    mtime = pc.fill_null(pc.equal(j.column("mtime_ns"), j.column("prev_mtime_ns")), False)
    etag = pc.fill_null(pc.equal(j.column("etag"), j.column("prev_etag")), False)
    return pc.or_(mtime, etag)


def _todo(j: pa.Table, confirm: pa.Array) -> pa.Table:
    done = _hex(pc.if_else(confirm, j.column("prev_digest"), pa.scalar(None, pa.binary(32))))
    return pa.Table.from_arrays([j.column("uri"), j.column("size"), done, j.column("mtime_ns"), j.column("etag")],
                                schema=TODO_SCHEMA)


def _direct(j: pa.Table) -> pa.Table:
    """Error rows without reading: the listing's own, and zero-byte files (what reading would give)."""
    empty = pc.not_equal(j.column("status"), schema.ERROR)
    n = j.num_rows
    sha = pc.if_else(empty, pa.scalar(EMPTY_SHA256), pa.scalar(None, pa.string()))
    error = pc.if_else(empty, pa.scalar(EMPTY_FILE), j.column("error"))
    return pa.table({"uri": j.column("uri"), "sha256": sha, "bytes": j.column("size"),
                     "mtime_ns": j.column("mtime_ns"), "etag": j.column("etag"),
                     "status": pa.repeat(pa.scalar(schema.ERROR), n), "error": error})
