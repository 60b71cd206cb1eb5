"""classify.input_list attacked with what hand-made lists hold: one file spelled several ways, entries
repeated far apart (across listing chunks), S3 keys that only look like paths."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from alle_dist.classify.input_list import SeenUris, canonical_file_uri, read_input_list
from alle_dist.io.storage import path_to_uri


def test_every_spelling_of_a_local_file_is_the_folder_listings_uri(tmp_path):
    want = path_to_uri(str(tmp_path / "a b" / "x.jpg"))
    d = str(tmp_path)
    for spelling in (f"{d}/a b/x.jpg", f"file://{d}/a b/x.jpg", f"file://{d}/a%20b/x.jpg", f"file://{d}//a b//x.jpg",
                     f"file://{d}/./a b/./x.jpg", f"file://{d}/a b/../a b/x.jpg", f"file:///{d}/a b/x.jpg",
                     f"file://{d}/a%20b/x%2Ejpg"):
        assert canonical_file_uri(spelling) == want, spelling


def test_duplicates_across_chunks_are_dropped_and_counted_and_s3_keys_stay_literal(tmp_path):
    d = str(tmp_path)
    uris = [f"s3://b/k{i}.jpg" for i in range(7)] + ["s3://b/k3.jpg", f"file://{d}//x.jpg", "s3://b/a//k3.jpg",
                                                     f"{d}/x.jpg", "s3://b/./k1.jpg", "s3://b/k0.jpg"]
    pq.write_table(pa.table({"uri": uris}), tmp_path / "list.parquet")
    listing = read_input_list(str(tmp_path / "list.parquet"), chunk_rows=3)
    got = [u for t in listing for u in t.column("uri").to_pylist()]
    assert got == [f"s3://b/k{i}.jpg" for i in range(7)] + [path_to_uri(f"{d}/x.jpg"), "s3://b/a//k3.jpg",
                                                            "s3://b/./k1.jpg"]
    assert listing.duplicates == 3
    assert [u for t in listing for u in t.column("uri").to_pylist()] == got and listing.duplicates == 3   # again


def test_seen_uris_holds_many_without_false_hits():
    seen, n = SeenUris(), 0
    for start in range(0, 50_000, 5_000):
        keep = seen.first(pa.array([f"s3://b/{i}" for i in range(start, start + 5_000)] + ["s3://b/0"]))
        n += int(keep.sum())
    assert n == 50_000 and len(seen._levels) <= 6
