"""Attack round three on `alle-dist classify` with real reading (the session's local Ray): S3 keys with
`.`, `..` and empty path segments on the moto server, an input list with a duplicate and a path
that never existed, --trust-size on files whose mtime changed but whose bytes did not, and the
two JPEGs Pillow fills with grey."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alle_dist import cli
from alle_dist.tables import read_results
from alle_dist.classify.store import ResultStore
from alle_dist.io import storage
from helpers_run import jpeg, jpeg_dimensions_times_4, jpeg_truncated_with_end_marker, make_run_dir, write_images

pytestmark = pytest.mark.ray
SMALL = ["--batch-size", "4", "--cpu-workers", "1"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return str(make_run_dir(tmp_path_factory.mktemp("attacks3_ray") / "run", backbones=("test_resnet",)))


def classify(run_dir, dst, *args) -> int:
    return cli.main(["classify", "--run-dir", run_dir, "--output", str(dst), *SMALL, *map(str, args)])


def rows(dst) -> dict:
    t = read_results(str(dst), columns=["uri", "status", "error", "sha256", "label"])
    return {r["uri"]: r for r in t.to_pylist()}


def last_run(dst) -> dict:
    return ResultStore(str(dst)).runs()[-1]


def test_odd_s3_keys_are_listed_read_literally_and_planned_on_rerun(ray_local, s3_bucket, run_dir, tmp_path, capsys):
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    write_images(tmp_path / "img", 4, size=32)
    images = sorted((tmp_path / "img").rglob("*.jpg"))
    keys = ["odd/./dot.jpg", "odd/x/../dotdot.jpg", "odd//double.jpg", "odd/ok.jpg"]
    for key, img in zip(keys, images):                    # four different images: a key read as
        s3.put_object(Bucket=s3_bucket, Key=key, Body=img.read_bytes())   # another would show
    s3.put_object(Bucket=s3_bucket, Key="odd/.hidden/h.jpg", Body=images[0].read_bytes())
    dst = f"s3://{s3_bucket}/out"
    assert classify(run_dir, dst, "--input", f"s3://{s3_bucket}/odd") == 0
    assert "4 inputs: 4 classified, 0 error rows" in capsys.readouterr().out
    got = rows(dst)
    assert sorted(got) == sorted(f"s3://{s3_bucket}/{k}" for k in keys)          # the hidden one left out
    for key, img in zip(keys, images):
        row = got[f"s3://{s3_bucket}/{key}"]
        assert row["status"] == "ok" and row["sha256"] == hashlib.sha256(img.read_bytes()).hexdigest(), key
    assert classify(run_dir, dst, "--input", f"s3://{s3_bucket}/odd", "--trust-size") == 0   # a rerun plans them
    assert "4 unchanged (skipped)" in capsys.readouterr().out


def test_list_duplicates_missing_entries_and_trust_size_stamps(ray_local, run_dir, tmp_path, capsys):
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_images(src, 3, size=32)
    files = sorted(src.rglob("*.jpg"))
    lst = tmp_path / "list.parquet"
    listed = [str(files[0]), f"file://{files[0]}", f"file://{files[1].parent}/./{files[1].name}", str(files[2]),
              str(src / "never" / "was.jpg")]
    pq.write_table(pa.table({"uri": listed}), lst)
    capsys.readouterr()
    assert classify(run_dir, dst, "--input-list", lst) == 0
    out, err = capsys.readouterr()
    assert "4 inputs: 3 classified, 1 error rows" in out and "1 duplicate entries of the input list" in err
    assert rows(dst)[storage.path_to_uri(str(src / "never" / "was.jpg"))]["error"] == "not found (no such file or object)"
    rec = last_run(dst)
    assert (rec["inputs"], rec["read"], rec["classified"], rec["list_duplicates"]) == (4, 4, 3, 1)

    # Input lists record no mtime; a file is touched too. A --trust-size folder run reads the three
    # again (same sha256: no new row) and stores their mtime; the next one skips them unread.
    os.utime(files[1], ns=(files[1].stat().st_atime_ns, files[1].stat().st_mtime_ns + 10**9))
    assert classify(run_dir, dst, "--input", src, "--trust-size") == 0
    assert "3 unchanged (skipped; 3 with a new mtime/ETag recorded)" in capsys.readouterr().out
    assert (last_run(dst)["read"], last_run(dst)["refreshed"], last_run(dst)["committed"]) == (3, 3, 0)
    assert classify(run_dir, dst, "--input", src, "--trust-size") == 0
    assert (last_run(dst)["read"], last_run(dst)["skipped"]) == (0, 3)


def test_jpegs_that_pillow_fills_with_grey_are_error_rows(ray_local, run_dir, tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    (src / "ok.jpg").write_bytes(jpeg())
    (src / "x4.jpg").write_bytes(jpeg_dimensions_times_4(jpeg()))
    (src / "cut_end.jpg").write_bytes(jpeg_truncated_with_end_marker(jpeg()))
    assert classify(run_dir, tmp_path / "dst", "--input", src) == 0
    got = {Path(storage.uri_to_path(u)).name: r for u, r in rows(tmp_path / "dst").items()}
    assert got["ok.jpg"]["status"] == "ok"
    for name in ("x4.jpg", "cut_end.jpg"):
        assert got[name]["status"] == "error"
        assert got[name]["error"].startswith("corrupt or truncated image data (JPEG): Corrupt JPEG data"), got[name]
