"""classify.planning: a listing chunk planned against the table's index, in Arrow (no Ray, no store)."""
from __future__ import annotations

import hashlib

import pyarrow as pa

from alle_dist.classify import listing, planning


def chunk(rows) -> pa.Table:
    """rows: (uri, size, mtime_ns, etag, status, error)."""
    return pa.Table.from_pylist([dict(zip(listing.INPUT_SCHEMA.names, r)) for r in rows], schema=listing.INPUT_SCHEMA)


def index(rows, trust=False) -> pa.Table:
    """rows as the store holds them (planning.index_columns) → the planning index (planning.build_index)."""
    cols = planning.index_columns(trust)
    types = {"uri": pa.string(), "bytes": pa.int64(), "sha256": pa.string(), "status": pa.string(),
             "mtime_ns": pa.int64(), "etag": pa.string()}
    stored = pa.Table.from_pylist([dict(zip(cols, r)) for r in rows], schema=pa.schema([(c, types[c]) for c in cols]))
    return planning.build_index(stored.to_batches(max_chunksize=2), trust)


def sha(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


LISTED = chunk([
    ("file:///a.jpg", 10, 1, None, "ok", None),        # stored, same size: confirm by sha256
    ("file:///b.jpg", 20, 1, None, "ok", None),        # stored with another size: read again
    ("file:///c.jpg", 30, 1, None, "ok", None),        # new
    ("file:///d.jpg", None, None, None, "error", "dangling symlink: its target does not exist"),
    ("file:///e.jpg", 0, 1, None, "ok", None),         # zero bytes: an error row without reading
    ("file:///f.jpg", None, None, None, "error", "a FIFO (named pipe), not an image file"),
    ("s3://bkt/g.jpg", 40, None, "etag-g", "ok", None),
])
STORED = [("file:///a.jpg", 10, sha("a"), "ok", 1, None), ("file:///b.jpg", 21, sha("b"), "ok", 1, None),
          ("file:///f.jpg", None, None, "error", None, None), ("file:///e.jpg", 0, planning.EMPTY_SHA256, "error", 1, None),
          ("s3://bkt/g.jpg", 40, sha("g"), "ok", None, "etag-g"), ("file:///gone.jpg", 5, sha("x"), "ok", 1, None)]


def _by_uri(t: pa.Table, col: str) -> dict:
    return dict(zip(t.column("uri").to_pylist(), t.column(col).to_pylist()))


def test_default_rerun_reads_every_ok_input_and_confirms_matching_sizes_by_sha256():
    p = planning.plan_chunk(LISTED, index([r[:4] for r in STORED]), trust_size=False)
    assert _by_uri(p.todo, "done_sha256") == {"file:///a.jpg": sha("a"), "file:///b.jpg": None,
                                              "file:///c.jpg": None, "s3://bkt/g.jpg": sha("g")}
    # the dangling link is new: an error row; the FIFO's and the empty file's rows are unchanged: skipped
    assert _by_uri(p.direct, "error") == {"file:///d.jpg": "dangling symlink: its target does not exist"}
    assert p.skipped == 2


def test_trust_size_skips_on_size_plus_mtime_or_etag_without_reading():
    p = planning.plan_chunk(LISTED, index(STORED, trust=True), trust_size=True)
    assert sorted(p.todo.column("uri").to_pylist()) == ["file:///b.jpg", "file:///c.jpg"]
    assert p.skipped == 4          # a (size + mtime), g (size + ETag), the FIFO, the empty file


def test_a_first_run_reads_everything_and_makes_error_rows_of_what_needs_no_reading():
    p = planning.plan_chunk(LISTED, planning.empty_index(False), trust_size=False)
    assert p.todo.num_rows == 4 and p.skipped == 0 and p.todo.schema == planning.TODO_SCHEMA
    direct = {r["uri"]: r for r in p.direct.to_pylist()}
    assert set(direct) == {"file:///d.jpg", "file:///e.jpg", "file:///f.jpg"}
    assert direct["file:///e.jpg"]["error"] == planning.EMPTY_FILE and direct["file:///e.jpg"]["sha256"] == planning.EMPTY_SHA256
    assert all(r["status"] == "error" for r in direct.values())


def test_a_stored_sha256_that_is_not_one_means_read_again():
    """A hand-edited table (a truncated or non-hex sha256) never lets an input be skipped or confirmed."""
    stored = [("file:///a.jpg", 10, "sha-a", "ok", 1, None), ("file:///e.jpg", 0, planning.EMPTY_SHA256[:-2], "error", 1, None)]
    p = planning.plan_chunk(LISTED, index(stored, trust=True), trust_size=True)
    assert _by_uri(p.todo, "done_sha256")["file:///a.jpg"] is None     # read, hashed, committed afresh
    assert "file:///e.jpg" in p.direct.column("uri").to_pylist() and p.skipped == 0


def test_the_planning_index_is_condensed():
    built = index([r[:4] for r in STORED])
    assert built.schema.field("digest").type == pa.binary(32) and built.column("is_error").to_pylist()[2] is True
    assert built.column("digest").to_pylist()[0] == bytes.fromhex(sha("a"))
