"""Attack round three on the classification table, without Ray: a torn newest Delta commit, URIs
spelled several ways in an input list, duplicate list entries, a killed run's record, DST deleted
under a job, and --trust-size's stamps. Real deltalake tables on disk, `alle-dist classify` in
process on zero-byte inputs (error rows made in the driver: the whole CLI path, no model run)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alle_dist import cli
from alle_dist.classify import run as run_mod
from alle_dist.tables import read_results
from alle_dist.classify.store import ResultStore
from alle_dist.errors import StorageError
from alle_dist.io import storage
from helpers_probs import write_probs
from helpers_run import make_run_dir
from test_store import opened, rows

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return str(make_run_dir(tmp_path_factory.mktemp("attacks3") / "run", backbones=("test_resnet",)))


def classify(run_dir, dst, *args) -> int:
    return cli.main(["classify", "--run-dir", run_dir, "--output", str(dst), *map(str, args)])


def empty_files(root: Path, names) -> Path:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")
    return root


def uris(dst) -> list[str]:
    return sorted(read_results(str(dst), columns=["uri"]).column("uri").to_pylist())


# ---- 1. a torn newest commit -----------------------------------------------------------------

@pytest.mark.parametrize("torn", [b"", b'{"commitInfo": {"timestamp": 1'], ids=["0 bytes", "cut short"])
def test_a_torn_newest_commit_is_refused_before_any_work(run_dir, tmp_path, capsys, torn):
    src, dst = empty_files(tmp_path / "src", ["a.jpg", "b.jpg"]), tmp_path / "dst"
    assert classify(run_dir, dst, "--input", src) == 0
    (src / "b.jpg").unlink()
    empty_files(src, ["c.jpg"])
    assert classify(run_dir, dst, "--input", src) == 0               # version 2 adds c
    newest = sorted((dst / "_delta_log").glob("*.json"))[-1]
    newest.write_bytes(torn)                                          # the attack
    before = sorted(p.name for p in (dst / "_delta_log").iterdir())
    capsys.readouterr()
    assert classify(run_dir, dst, "--input", src) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"{newest}: the Delta table's newest commit is torn ({len(torn)} bytes" in err
    assert "Restore that file from a backup" in err and "delete that one file" in err
    assert sorted(p.name for p in (dst / "_delta_log").iterdir()) == before   # nothing was done
    newest.unlink()                                                   # the documented fix
    assert classify(run_dir, dst, "--input", src) == 0
    assert [u.rsplit("/", 1)[1] for u in uris(dst)] == ["a.jpg", "b.jpg", "c.jpg"]


# ---- 2. one file, one row, however the input list spells it ----------------------------------

def test_mixed_uri_spellings_give_one_row_per_file(run_dir, tmp_path, capsys):
    src = empty_files(tmp_path / "data", ["x.jpg", "sub/y.jpg", "a b.jpg"])
    d = str(src)
    spellings = [f"file://{d}//x.jpg", f"file://{d}/./x.jpg", f"{d}/sub/../x.jpg", f"file://{d}/sub/./y.jpg",
                 f"file://{d}/sub//y.jpg", f"file://{d}/a b.jpg", f"file://{d}/a%20b.jpg", f"file:///{d}/x.jpg"]
    lst = tmp_path / "list.parquet"
    pq.write_table(pa.table({"uri": spellings, "size": [0] * len(spellings)}), lst)
    assert classify(run_dir, tmp_path / "dst", "--input-list", lst) == 0
    out = capsys.readouterr()
    assert "3 inputs" in out.out and "5 duplicate entries of the input list counted once" in out.err
    assert classify(run_dir, tmp_path / "dst", "--input", src) == 0   # a folder run: the same three rows
    listed = sorted(storage.path_to_uri(p) for p in src.rglob("*.jpg"))
    assert uris(tmp_path / "dst") == listed
    record = ResultStore(str(tmp_path / "dst")).runs()[0]
    assert record["inputs"] == 3 and record["errors"] == 3 and record["list_duplicates"] == 5


# ---- 11. a killed run's record --------------------------------------------------------------

_RECORD_AND_HANG = """
import sys, time
sys.path.insert(0, {root!r})
from alle_dist import config
from alle_dist.classify.run import setup
job = setup({run_dir!r}, {src!r}, {dst!r}, config.job_config(None), run_id="killed-run")
job.store.record_run(job.run)          # what classify.run.execute records first
print("recorded", flush=True)
time.sleep(600)
"""


def test_a_killed_runs_record_is_reported_as_probably_dead(run_dir, tmp_path, capsys):
    dst, src = tmp_path / "dst", empty_files(tmp_path / "src", ["a.jpg"])
    assert classify(run_dir, dst, "--input", src) == 0
    code = _RECORD_AND_HANG.format(root=str(ROOT), run_dir=run_dir, src=str(src), dst=str(dst))
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert p.stdout.readline().strip() == "recorded"
    capsys.readouterr()
    assert classify(run_dir, dst, "--input", src) == 0
    assert "killed-run" not in capsys.readouterr().err                # alive: not reported
    os.killpg(p.pid, signal.SIGKILL)                                  # the attack: kill -9
    p.wait()
    assert classify(run_dir, dst, "--input", src) == 0
    err = capsys.readouterr().err
    assert ("warning: run killed-run" in err and f"is recorded as running but its process (pid {p.pid}) is gone: "
            "probably dead" in err)
    runs = {r["run_id"]: r for r in ResultStore(str(dst)).runs()}
    assert runs["killed-run"]["status"] == "running"                  # the record stays what it was


def test_a_run_without_heartbeat_elsewhere_is_probably_dead():
    rec = {"status": "running", "host": "another-host", "pid": 1, "at": "2026-01-01T00:00:00+00:00"}
    assert "its last heartbeat was" in run_mod.why_dead(rec)
    fresh = {**rec, "at": run_mod.utc_now()}
    assert run_mod.why_dead(fresh) is None and run_mod.why_dead({**rec, "status": "complete"}) is None


# ---- 8. DST deleted while a job writes -------------------------------------------------------

def test_a_deleted_dst_leaves_nothing_behind_that_would_refuse_the_rerun(tmp_path):
    dst = tmp_path / "dst"
    store = opened(dst)
    store.upsert(rows(["s3://b/a.jpg"]), {"run_id": "r1"})
    shutil.rmtree(dst)                                                # the attack
    with pytest.raises(StorageError):
        store.upsert(rows(["s3://b/a.jpg", "s3://b/b.jpg"], tag="v2"), {"run_id": "r1"})
    assert store.deleted()
    store.record_run({"run_id": "r1", "status": "failed"})            # must not create DST/_alle_dist
    store.drop_orphans()                                              # the MERGE's data files
    assert not dst.exists()
    again = opened(dst)                                               # the rerun: an empty DST
    again.upsert(rows(["s3://b/a.jpg"]), {"run_id": "r2"})
    assert uris(dst) == ["s3://b/a.jpg"]


# ---- 9. --trust-size stores the new stamp of an unchanged file --------------------------------

def test_refreshed_stamps_change_only_mtime_and_etag(tmp_path):
    store = opened(tmp_path / "dst")
    first = rows(["s3://b/a.jpg", "s3://b/b.jpg"])
    first = first.set_column(first.schema.get_field_index("etag"), "etag", pa.array(["e1", "e1"]))
    store.upsert(first, {"run_id": "r1"})
    stamps = pa.table({"uri": ["s3://b/a.jpg", "s3://b/b.jpg"], "sha256": ["v1-s3://b/a.jpg", "other bytes"],
                       "mtime_ns": pa.array([None, None], pa.int64()), "etag": ["e2", "e2"]})
    assert store.refresh_stamps(stamps, {"run_id": "r2"}) == 1        # b's stored sha256 differs: untouched
    now = read_results(str(tmp_path / "dst")).sort_by("uri")
    assert now.column("etag").to_pylist() == ["e2", "e1"]
    assert now.column("run_id").to_pylist() == ["v1", "v1"]           # the classification is the same row
    assert store.refresh_stamps(stamps, {"run_id": "r3"}) == 0        # nothing stale: no change


# ---- 7. ensemble.json that is not JSON --------------------------------------------------------

@pytest.mark.parametrize("text, words", [("{not json", "not valid JSON"), ("[1, 2]", "holds a JSON list"),
                                         ('{"backbones": ["test_resnet"]}', "missing key(s)")])
def test_a_broken_ensemble_json_is_one_line(tmp_path, capsys, text, words):
    run = Path(make_run_dir(tmp_path / "run", backbones=("test_resnet",)))
    write_probs(run, "test_resnet", "test", ["a.jpg", "b.jpg"], np.array([0, 1]), np.eye(4)[[0, 1]], meta=False)
    (run / "ensemble.json").write_text(text)
    src = empty_files(tmp_path / "src", ["a.jpg"])
    for argv in (["classify", "--run-dir", str(run), "--input", str(src), "--output", str(tmp_path / "dst")],
                 ["evaluate", "--run-dir", str(run)]):
        capsys.readouterr()
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"ensemble.json: {words}" in err and "alle-dist tune" in err, err

