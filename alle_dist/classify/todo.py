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
index), so planning holds the index (~100 bytes per stored row) plus one chunk, never a Python
object per input.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from .. import schema

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
EMPTY_FILE = "empty file (0 bytes)"     # the reason io.images.decode_rgb gives for b""
INDEX = ("uri", "bytes", "sha256", "status")
TRUST_INDEX = INDEX + ("mtime_ns", "etag")
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
    types = {"uri": pa.string(), "bytes": pa.int64(), "sha256": pa.string(), "status": pa.string(),
             "mtime_ns": pa.int64(), "etag": pa.string()}
    return pa.schema([(c, types[c]) for c in index_columns(trust_size)]).empty_table()


def plan_chunk(chunk: pa.Table, index: pa.Table, trust_size: bool) -> Planned:
    """Split one listing chunk into todo / direct / skipped against the stored rows in `index`."""
    j = _joined(chunk, index)
    size, prev_size = j.column("size"), j.column("prev_bytes")
    listed_error = pc.equal(j.column("status"), schema.ERROR)
    empty = pc.and_(pc.invert(listed_error), pc.fill_null(pc.equal(size, 0), False))
    same_size = pc.fill_null(pc.equal(size, prev_size), False)
    known_sha = pc.is_valid(j.column("prev_sha256"))
    unchanged_error = pc.and_(listed_error, _same_error_row(j))
    unchanged_empty = pc.and_(empty, pc.fill_null(pc.equal(j.column("prev_sha256"), EMPTY_SHA256), False))
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
    return pc.and_(pc.fill_null(pc.equal(j.column("prev_status"), schema.ERROR), False),
                   pc.and_(pc.is_null(j.column("prev_sha256")), pc.is_null(j.column("prev_bytes"))))


def _same_stamp(j: pa.Table) -> pa.Array:
    mtime = pc.fill_null(pc.equal(j.column("mtime_ns"), j.column("prev_mtime_ns")), False)
    etag = pc.fill_null(pc.equal(j.column("etag"), j.column("prev_etag")), False)
    return pc.or_(mtime, etag)


def _todo(j: pa.Table, confirm: pa.Array) -> pa.Table:
    done = pc.if_else(confirm, j.column("prev_sha256"), pa.scalar(None, pa.string()))
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
