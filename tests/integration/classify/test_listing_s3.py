"""Listing an S3 prefix (moto over HTTP): parallel listing of nested prefixes, pagination, errors."""
from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alle_dist.classify.input_list import read_input_list
from alle_dist.classify.listing import list_inputs
from alle_dist.errors import StorageError

# > 1000 keys in one "folder" (moto, like S3, pages at 1000) and a few levels of nesting.
FLAT = [f"arch/flat/{i:05d}.jpg" for i in range(1010)]
NESTED = ([f"arch/p{p}/d{d}/{i}.png" for p in range(3) for d in range(4) for i in range(5)]
          + [f"arch/p0/deep/a/b/c/{i}.tif" for i in range(3)] + ["arch/top.jpeg"])
LEFT_OUT = ["arch/.cache/x.jpg", "arch/p1/._y.jpg", "arch/p1/notes.txt", "arch/p2/d0/", "other/z.jpg"]


def _client():
    import boto3

    return boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])


@pytest.fixture(scope="module")
def archive(s3_server):
    """One bucket for the module (the upload is most of its time); tests only read under arch/."""
    import uuid

    s3_bucket = f"t-{uuid.uuid4().hex[:12]}"
    s3 = _client()
    s3.create_bucket(Bucket=s3_bucket)

    def put(i_key):
        i, key = i_key
        s3.put_object(Bucket=s3_bucket, Key=key, Body=b"x" * (i % 7))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, enumerate(FLAT + NESTED + LEFT_OUT)))
    return s3_bucket


def _truth(bucket: str) -> dict[str, int]:
    """Every listable image under arch/, by a plain serial boto3 listing (no delimiter)."""
    out = {}
    for page in _client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="arch/"):
        for o in page.get("Contents", ()):
            out[f"s3://{bucket}/{o['Key']}"] = o["Size"]
    return {u: s for u, s in out.items() if u.rsplit("/", 1)[1].endswith((".jpg", ".png", ".tif", ".jpeg"))
            and "/." not in u}


@pytest.mark.slow   # the module's upload of ~1100 objects to moto takes ~10 s
@pytest.mark.parametrize("workers", [1, 8])
def test_a_nested_prefix_lists_every_key_once_with_sizes(archive, workers):
    listing = list_inputs(f"s3://{archive}/arch", workers=workers, chunk_rows=400)
    tables = list(listing)
    assert all(t.num_rows <= 400 for t in tables)
    rows = [r for t in tables for r in t.to_pylist()]
    uris = [r["uri"] for r in rows]
    assert len(uris) == len(set(uris)) == len(FLAT) + len(NESTED)
    assert {r["uri"]: r["size"] for r in rows} == _truth(archive)
    assert all(r["status"] == "ok" and len(r["etag"]) == 32 and '"' not in r["etag"] for r in rows)
    assert listing.skipped == {".txt": 1}


@pytest.mark.slow
def test_parallel_listing_equals_serial_listing(archive):
    def listed(workers):
        return sorted((r["uri"], r["size"], r["etag"]) for t in list_inputs(f"s3://{archive}/arch/",
                                                                           workers=workers)
                      for r in t.to_pylist())
    assert listed(16) == listed(1)


def _one_line_error(src: str, message: str) -> None:
    with pytest.raises(StorageError, match=message) as exc:
        list_inputs(src)
    assert "\n" not in str(exc.value)


def test_missing_bucket_empty_bucket_empty_prefix_and_an_object_fail_in_one_line(s3_bucket):
    _one_line_error(f"s3://nope-{s3_bucket}/x", "no such bucket")
    _one_line_error(f"s3://{s3_bucket}", "no objects under this prefix")
    _client().put_object(Bucket=s3_bucket, Key="imgs/one.jpg", Body=b"x")
    _one_line_error(f"s3://{s3_bucket}/nothing-here", "no objects under this prefix")
    _one_line_error(f"s3://{s3_bucket}/imgs/one.jpg", "is an object, not a prefix.*--input-list")


def test_an_input_list_stored_in_s3(s3_bucket):
    archive = s3_bucket
    inventory = pa.table({"bucket": [archive] * 3, "key": ["arch/top.jpeg", "arch/flat/00001.jpg", "x.txt"],
                          "size": [0, 1, 2]})
    sink = io.BytesIO()
    pq.write_table(inventory, sink)
    _client().put_object(Bucket=archive, Key="lists/inv.parquet", Body=sink.getvalue())
    rows = [r for t in read_input_list(f"s3://{archive}/lists/inv.parquet") for r in t.to_pylist()]
    assert [(r["uri"], r["size"]) for r in rows] == [(f"s3://{archive}/arch/top.jpeg", 0),
                                                    (f"s3://{archive}/arch/flat/00001.jpg", 1)]


def test_keys_with_dot_dotdot_and_empty_segments_are_listed_and_read_literally(s3_bucket):
    """S3 keys are plain strings: `odd/./a.jpg` is its own object. pyarrow's S3 filesystem drops
    such segments (another object, or none) and refuses an empty one (ArrowInvalid)."""
    import boto3

    from alle_dist.errors import InputError
    from alle_dist.io import storage
    from alle_dist.models.inference import read_input

    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    keys = ["odd/./dot.jpg", "odd/x/../dotdot.jpg", "odd//double.jpg", "odd/ok.jpg", "odd/dot.jpg"]
    for k in keys:
        s3.put_object(Bucket=s3_bucket, Key=k, Body=k.encode())
    s3.put_object(Bucket=s3_bucket, Key="odd/.git/h.jpg", Body=b"hidden")
    listed = [r["uri"] for t in list_inputs(f"s3://{s3_bucket}/odd") for r in t.to_pylist()]
    assert sorted(listed) == sorted(f"s3://{s3_bucket}/{k}" for k in keys)
    for k in keys:
        assert storage.read_bytes(f"s3://{s3_bucket}/{k}") == k.encode()
    for k in ("odd//gone.jpg", "odd/./gone.jpg"):
        with pytest.raises(InputError, match=r"^not found \(no such file or object\)$"):
            read_input(f"s3://{s3_bucket}/{k}", listed=False)
        with pytest.raises(InputError, match="vanished between listing and reading"):
            read_input(f"s3://{s3_bucket}/{k}")
