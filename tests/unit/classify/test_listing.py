"""Listing the inputs of a classification: local folders and input lists (alle_dist.classify.listing)."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from alle_dist.classify.input_list import read_input_list
from alle_dist.classify.listing import INPUT_SCHEMA, LINK_SEEN, NO_EXT, list_inputs, path_to_uri, uri_to_path
from alle_dist.errors import StorageError

NOBODY = 65534


def _tree(root: Path, names: list[str], data: bytes = b"x") -> list[Path]:
    paths = []
    for name in names:
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        paths.append(p)
    return paths


def _rows(listing) -> list[dict]:
    return [r for t in listing for r in t.to_pylist()]


def _by_uri(rows: list[dict]) -> dict[str, dict]:
    out = {r["uri"]: r for r in rows}
    assert len(out) == len(rows), "a URI was listed twice"
    return out


FIVE = ["a/1.jpg", "a/2.png", "b/3.JPG", "b/c/4.tif", "5.jpeg"]


@pytest.mark.parametrize("link", ["loop", "b/loop", "b/c/loop"])
def test_a_symlink_loop_lists_each_file_once(tmp_path, link):
    src = tmp_path / "src"
    files = _tree(src, FIVE)
    _tree(tmp_path, ["beside_src.jpg"])   # reachable only through a link that leads above the root
    os.symlink("..", src / link)
    listing = list_inputs(str(src))
    rows = _by_uri(_rows(listing))
    assert set(rows) == {path_to_uri(str(p)) for p in files}
    assert all(r["status"] == "ok" and r["size"] == 1 and r["mtime_ns"] > 0 for r in rows.values())
    assert listing.skipped[LINK_SEEN] == 1


def test_a_folder_linked_from_outside_is_listed_once(tmp_path):
    src, outside = tmp_path / "src", tmp_path / "elsewhere"
    _tree(src, ["own.jpg"])
    _tree(outside, ["x.jpg", "y.png"])
    os.symlink(outside, src / "linked")
    os.symlink(outside, src / "linked_again")
    uris = set(_by_uri(_rows(list_inputs(str(src)))))
    names = {u.rsplit("/", 2)[-2] + "/" + u.rsplit("/", 1)[-1] for u in uris}
    assert len(uris) == 3 and "src/own.jpg" in names
    assert {n.split("/")[1] for n in names} == {"own.jpg", "x.jpg", "y.png"}


def test_odd_entries_are_error_rows_and_the_rest_still_list(tmp_path):
    good = _tree(tmp_path, ["ok/1.jpg", "ok/2.jpg"])
    os.symlink(tmp_path / "missing.jpg", tmp_path / "dangling.jpg")
    os.mkfifo(tmp_path / "pipe.jpg")
    bad_name = os.fsencode(str(tmp_path)) + b"/bad\xff.jpg"
    os.close(os.open(bad_name, os.O_CREAT | os.O_WRONLY, 0o644))
    rows = _by_uri(_rows(list_inputs(str(tmp_path))))
    assert len(rows) == 5
    for p in good:
        assert rows[path_to_uri(str(p))]["status"] == "ok"
    errors = {u.rsplit("/", 1)[1]: r["error"] for u, r in rows.items() if r["status"] == "error"}
    assert set(errors) == {"dangling.jpg", "pipe.jpg", "bad%FF.jpg"}
    assert "dangling symlink" in errors["dangling.jpg"]
    assert "FIFO" in errors["pipe.jpg"]
    assert "UTF-8" in errors["bad%FF.jpg"]
    # The escaped name still leads back to the file.
    bad_uri = next(u for u in rows if u.endswith("bad%FF.jpg"))
    assert os.fsencode(uri_to_path(bad_uri)) == bad_name and os.path.exists(bad_name)


def _list_unprivileged(root: str) -> list[dict]:
    """The rows as a user without special rights sees them. Root reads any file whatever its mode,
    so as root the listing runs in a forked child that has become `nobody`."""
    if os.geteuid() != 0:
        return _rows(list_inputs(root))
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:   # child: never returns into pytest
        code = 1
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            with os.fdopen(w, "w") as out:
                json.dump(_rows(list_inputs(root)), out)
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r) as inp:
        text = inp.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return json.loads(text)


def test_a_file_that_cannot_be_opened_is_an_error_row():
    root = Path(tempfile.mkdtemp(prefix="alle-listing-"))   # not under root's private tmp: nobody must enter
    try:
        root.chmod(0o755)
        locked, fine, _ = _tree(root, ["locked.jpg", "fine.jpg", "shut/inside.jpg"])
        for p in (locked, fine):
            p.chmod(0o644)
        locked.chmod(0o000)
        (root / "shut").chmod(0o000)
        rows = _by_uri(_list_unprivileged(str(root)))
        assert len(rows) == 3 and rows[path_to_uri(str(fine))]["status"] == "ok"
        bad = rows[path_to_uri(str(locked))]
        assert bad["status"] == "error" and "can't be opened (Permission denied)" in bad["error"]
        shut = rows[path_to_uri(str(root / "shut"))]   # its files are unknown: one row says so
        assert shut["status"] == "error" and "folder can't be listed (Permission denied)" in shut["error"]
    finally:
        (root / "shut").chmod(0o755)
        shutil.rmtree(root)


def test_hidden_names_are_left_out_and_other_suffixes_counted(tmp_path):
    _tree(tmp_path, ["1.jpg", ".DS_Store", "._1.jpg", ".cache/2.jpg", "sub/.hidden/3.jpg",
                     "w1.webp", "sub/w2.WEBP", "notes.txt", "README", "sub/4.bmp"])
    listing = list_inputs(str(tmp_path))
    names = sorted(u.rsplit("/", 1)[1] for u in _by_uri(_rows(listing)))
    assert names == ["1.jpg", "4.bmp"]
    assert listing.skipped == Counter({".webp": 2, ".txt": 1, NO_EXT: 1})
    assert listing.skipped_summary() == f"2 .webp, 1 {NO_EXT}, 1 .txt"


def test_chunks_hold_everything_once_and_iteration_can_repeat(tmp_path):
    files = _tree(tmp_path, [f"d{i % 4}/f{i}.png" for i in range(23)])
    listing = list_inputs(str(tmp_path), chunk_rows=5)
    for _ in range(2):
        tables = list(listing)
        assert all(t.schema == INPUT_SCHEMA and 0 < t.num_rows <= 5 for t in tables)
        assert sorted(u for t in tables for u in t.column("uri").to_pylist()) == \
            sorted(path_to_uri(str(p)) for p in files)


def test_an_empty_folder_gives_no_chunks(tmp_path):
    assert list(list_inputs(str(tmp_path))) == []


def test_a_file_or_a_missing_folder_is_one_line_without_aws_advice(tmp_path):
    (img,) = _tree(tmp_path, ["one.jpg"])
    with pytest.raises(StorageError, match="is a file, not a folder.*--input-list") as exc:
        list_inputs(str(img))
    assert "AWS" not in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(StorageError, match="no such folder") as exc:
        list_inputs(str(tmp_path / "nope"))
    assert "AWS" not in str(exc.value)


@pytest.mark.parametrize("name", ["plain.jpg", "a b#c?d%20e.jpg", "ünï ço∂e.png", b"raw\xfe\xff.jpg"])
def test_file_uris_round_trip(tmp_path, name):
    path = os.path.join(os.fsencode(str(tmp_path)), name) if isinstance(name, bytes) else str(tmp_path / name)
    path = os.fsdecode(path)
    uri = path_to_uri(path)
    assert uri.startswith("file:///") and " " not in uri and "#" not in uri and "?" not in uri
    uri.encode("utf-8")   # always valid UTF-8, whatever the name
    assert uri_to_path(uri) == path
    assert uri_to_path(uri.replace("file://", "file://localhost", 1)) == path


def test_list_inputs_accepts_a_file_uri(tmp_path):
    (img,) = _tree(tmp_path / "d d", ["x.jpg"])
    rows = _rows(list_inputs(path_to_uri(str(tmp_path / "d d"))))
    assert [r["uri"] for r in rows] == [path_to_uri(str(img))]


# ---- input lists --------------------------------------------------------------------------------

def _write(table: pa.Table, path: Path) -> str:
    if path.suffix == ".csv":
        pcsv.write_csv(table, path)
    else:
        pq.write_table(table, path, row_group_size=7)
    return str(path)


@pytest.mark.parametrize("ext", [".csv", ".parquet"])
def test_an_input_list_of_uris(tmp_path, ext):
    uris = [f"s3://bk/arch/{i:04d}.jpg" for i in range(20)] + ["file:///data/x%20y.png", "/data/a b.tif",
                                                              "s3://bk/arch/readme.txt"]
    table = pa.table({"uri": uris, "size": list(range(len(uris))), "other": ["z"] * len(uris)})
    listing = read_input_list(_write(table, tmp_path / f"inputs{ext}"), chunk_rows=6)
    tables = list(listing)
    assert all(t.schema == INPUT_SCHEMA and t.num_rows <= 6 for t in tables)
    rows = _by_uri(_rows(tables))
    assert set(rows) == set(uris[:21]) | {"file:///data/a%20b.tif"}
    assert rows["s3://bk/arch/0003.jpg"]["size"] == 3 and rows["s3://bk/arch/0003.jpg"]["status"] == "ok"
    assert listing.skipped == Counter({".txt": 1})


@pytest.mark.parametrize("ext", [".csv", ".parquet"])
def test_an_input_list_of_bucket_and_key(tmp_path, ext):
    # S3 Inventory style: capitalised names, keys that look like numbers, quoted ETags.
    table = pa.table({"Bucket": ["bk"] * 3, "Key": ["0123.jpg", "a/b c.png", "a/x.csv"],
                      "Size": [10, 20, 30], "e_tag": ['"abc"', '"def"', '"ghi"']})
    rows = _by_uri(_rows(read_input_list(_write(table, tmp_path / f"inv{ext}"))))
    assert rows == {
        "s3://bk/0123.jpg": {"uri": "s3://bk/0123.jpg", "size": 10, "mtime_ns": None, "etag": "abc",
                             "status": "ok", "error": None},
        "s3://bk/a/b c.png": {"uri": "s3://bk/a/b c.png", "size": 20, "mtime_ns": None, "etag": "def",
                              "status": "ok", "error": None},
    }


@pytest.mark.parametrize("bad", ["images/x.jpg", "gs://bk/x.jpg", "http://host/x.jpg"])
def test_an_input_list_with_a_relative_path_or_unknown_scheme_fails_in_one_line(tmp_path, bad):
    path = _write(pa.table({"uri": ["s3://bk/ok.jpg", bad]}), tmp_path / "in.csv")
    with pytest.raises(StorageError, match=r"row 2: .* relative path or has an unknown scheme") as exc:
        _rows(read_input_list(path))
    assert "\n" not in str(exc.value)


def test_an_input_list_without_usable_columns_fails_before_reading(tmp_path):
    path = _write(pa.table({"path": ["/x.jpg"], "bucket": ["b"]}), tmp_path / "in.parquet")
    with pytest.raises(StorageError, match="needs a `uri` column, or `bucket` and `key`.*found: path"):
        read_input_list(path)
    with pytest.raises(StorageError, match="must be a .parquet or .csv"):
        read_input_list(str(tmp_path / "in.json"))
    with pytest.raises(StorageError, match="can't be read as an input list"):
        read_input_list(str(tmp_path / "missing.csv"))
