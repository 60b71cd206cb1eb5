"""`alle-dist classify` attacked as a user's process: kill -9 mid-run then rerun, Ctrl-C, two jobs
into one table at once, a full disk, and the user errors caught before Ray starts.

Real subprocesses (`python -m alle_dist.cli classify ...`, each in its own process session so that a
kill reaches its whole group, Ray included). Assertions are on the table's current version, read
with standard readers (deltalake → pandas, polars.read_delta)."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alle_dist import cli
from alle_dist.classify.store import ResultStore
from alle_dist.io import storage
from helpers_run import make_run_dir, write_images

ROOT = Path(__file__).resolve().parents[3]
SMALL = ["--batch-size", "4", "--cpu-workers", "1", "--num-cpus", "2", "--commit-rows", "4"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return str(make_run_dir(tmp_path_factory.mktemp("classify_cli") / "run", backbones=("test_resnet",)))


def spawn(run_dir, dst, *args) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    cmd = [sys.executable, "-m", "alle_dist.cli", "classify", "--run-dir", run_dir, "--output", str(dst),
           *SMALL, *map(str, args)]
    return subprocess.Popen(cmd, env=env, cwd=ROOT, start_new_session=True, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(p: subprocess.Popen, timeout=600) -> tuple[int, str, str]:
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err


def commits(dst: Path) -> int:
    log = dst / "_delta_log"
    return max(0, len(list(log.glob("*.json"))) - 1) if log.is_dir() else 0


def wait_for_commits(p: subprocess.Popen, dst: Path, k: int, timeout=600) -> None:
    deadline = time.time() + timeout
    while commits(dst) < k:
        assert p.poll() is None, f"classify ended before {k} commits: {p.communicate()}"
        assert time.time() < deadline, "no commit in time"
        time.sleep(0.2)


def uris_pandas(dst) -> Counter:
    from deltalake import DeltaTable

    return Counter(DeltaTable(str(dst)).to_pandas(columns=["uri"])["uri"])


def uris_polars(dst) -> Counter:
    import polars as pl

    store = ResultStore(str(dst))   # on S3: the endpoint and region (never a key) as storage options
    return Counter(pl.read_delta(store.uri, storage_options=store.options, columns=["uri"])["uri"].to_list())


def runs(dst) -> dict:
    store = ResultStore(str(dst))
    return {r["run_id"]: r["status"] for r in store.runs()}


def all_uris(src: Path) -> set:
    return {storage.path_to_uri(p) for p in src.rglob("*.jpg")}


def running_after_two_commits(run_dir, tmp_path, n: int = 40):
    """(src, dst, the running classify process) once it has committed twice, of n images."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_images(src, n, size=32)
    p = spawn(run_dir, dst, "--input", src)
    wait_for_commits(p, dst, 2)
    return src, dst, p


@pytest.mark.slow
def test_kill_9_then_ctrl_c_then_rerun_gives_every_input_once(run_dir, tmp_path):
    src, dst, p = running_after_two_commits(run_dir, tmp_path)
    os.killpg(p.pid, signal.SIGKILL)                       # the driver and its local Ray, at once
    finish(p)
    kept = uris_pandas(dst)
    assert 0 < len(kept) < 40 and max(kept.values()) == 1

    p = spawn(run_dir, dst, "--input", src)                # Ctrl-C: the terminal sends SIGINT
    wait_for_commits(p, dst, commits(dst) + 1)
    p.send_signal(signal.SIGINT)
    code, _, err = finish(p)
    assert code == 130, err[-2000:]
    assert "interrupted" in err and "Traceback" not in err
    assert "interrupted" in runs(dst).values()

    code, out, err = finish(spawn(run_dir, dst, "--input", src))   # the same command: resumes
    assert code == 0, err[-2000:]
    assert uris_pandas(dst) == uris_polars(dst) == Counter(all_uris(src))
    assert list(runs(dst).values())[-1] == "complete" and "unchanged (skipped)" in out


def _input_list(path: Path, uris) -> str:
    pq.write_table(pa.table({"uri": sorted(uris)}), path)
    return str(path)


@pytest.mark.slow
@pytest.mark.parametrize("where", ["local", "s3"])
def test_two_jobs_into_one_table_at_once_lose_and_duplicate_nothing(where, run_dir, tmp_path, request):
    src = tmp_path / "src"
    dst = tmp_path / "dst" if where == "local" else f"s3://{request.getfixturevalue('s3_bucket')}/dst"
    write_images(src, 36, size=32)
    uris = sorted(all_uris(src))
    lists = [_input_list(tmp_path / "a.parquet", uris[:24]), _input_list(tmp_path / "b.parquet", uris[12:])]
    procs = [spawn(run_dir, dst, "--input-list", lst) for lst in lists]   # started together
    results = [finish(p) for p in procs]
    assert [code for code, _, _ in results] == [0, 0], [err[-2000:] for _, _, err in results]
    got = uris_polars(dst)
    assert set(got) == set(uris) and max(got.values()) == 1     # the overlap (12..23) once
    assert sorted(runs(dst).values()) == ["complete", "complete"]


@pytest.fixture
def tiny_disk(tmp_path):
    """A 2 MB tmpfs (needs root); skipped where it can't be mounted."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("can't mount a small tmpfs here")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=False)


def _fill(path: Path, leave: int) -> None:
    """Fill the disk, then give back `leave` bytes."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 65536):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    os.truncate(path, max(0, os.path.getsize(path) - leave))


def _zero_byte_inputs(root: Path, n: int) -> Path:
    """n zero-byte .jpg files: error rows made in the driver, no Ray needed (a fast real run)."""
    for i in range(n):
        (root / f"d{i // 1000}").mkdir(parents=True, exist_ok=True)
        (root / f"d{i // 1000}" / f"empty_{i:05d}.jpg").write_bytes(b"")
    return root


def test_a_full_disk_is_one_line_and_commits_nothing_half(run_dir, tmp_path, tiny_disk, capsys):
    dst = tiny_disk / "dst"
    src = _zero_byte_inputs(tmp_path / "few", 3)
    assert cli.main(["classify", "--run-dir", run_dir, "--input", str(src), "--output", str(dst)]) == 0
    before = uris_pandas(dst)
    _fill(tiny_disk / "filler", leave=96 << 10)            # room for the config and run record, not the rows
    src = _zero_byte_inputs(tmp_path / "many", 20000)
    capsys.readouterr()
    code = cli.main(["classify", "--run-dir", run_dir, "--input", str(src), "--output", str(dst)])
    err = capsys.readouterr().err
    assert code == 2 and f"no space left on the device holding {dst}" in err and "nothing of this batch was committed" in err
    assert [line for line in err.splitlines() if "error:" in line] and "Traceback" not in err
    assert uris_pandas(dst) == before                      # the current version: the old rows, whole
    (tiny_disk / "filler").unlink()
    src2 = _zero_byte_inputs(tmp_path / "some", 300)
    assert cli.main(["classify", "--run-dir", run_dir, "--input", str(src2), "--output", str(dst)]) == 0
    assert len(uris_pandas(dst)) == 303


def test_user_errors_are_one_line_before_any_work(run_dir, tmp_path, capsys):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "notes.txt").write_text("x")
    (tmp_path / "src" / "a.webp").write_bytes(b"x")
    (tmp_path / "a_file").write_text("x")
    cases = [
        (["--input", str(tmp_path / "src"), "--output", str(tmp_path / "dst")],
         f"no images found under {tmp_path / 'src'} (skipped: 1 .txt, 1 .webp)"),
        (["--input", str(tmp_path / "src"), "--output", str(tmp_path / "a_file")], "is a file, not a folder"),
        (["--input-list", str(tmp_path / "a_file"), "--output", str(tmp_path / "dst")], "must be a .parquet or .csv"),
    ]
    for args, message in cases:
        assert cli.main(["classify", "--run-dir", run_dir, *args]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "dst" / "_delta_log").exists()


def test_skipped_extensions_are_counted_beside_images(run_dir, tmp_path, capsys):
    src = _zero_byte_inputs(tmp_path / "src", 2)
    for name in ("a.webp", "b.webp", "c.txt"):
        (src / name).write_bytes(b"x")
    assert cli.main(["classify", "--run-dir", run_dir, "--input", str(src), "--output", str(tmp_path / "dst")]) == 0
    out, err = capsys.readouterr()
    assert "warning: not image files, left out: 2 .webp, 1 .txt" in err and "2 inputs" in out


@pytest.mark.slow
def test_dst_deleted_while_the_job_runs_is_one_line_and_the_rerun_works(run_dir, tmp_path):
    src, dst, p = running_after_two_commits(run_dir, tmp_path)
    os.rename(dst, tmp_path / "deleted")                   # the attack: DST is gone (rm -r, atomically)
    shutil.rmtree(tmp_path / "deleted")
    code, _, err = finish(p)
    assert code == 2 and "Traceback" not in err, err[-2000:]
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].endswith(f"{dst}: DST was deleted while the job ran; nothing more was "
                                                   "committed; run the same command again to start over")
    assert not dst.exists()                                # no _alle_dist, no orphan data file
    code, out, err = finish(spawn(run_dir, dst, "--input", src))   # the same command starts over
    assert code == 0, err[-2000:]
    assert uris_pandas(dst) == Counter(all_uris(src)) and "40 inputs: 40 classified" in out


_RAY_CANT_START = """
import sys
sys.path.insert(0, {root!r})
import ray._private.services as services

def node_never_registers(*args, **kwargs):   # what a raylet too slow to register looks like to ray.init
    raise RuntimeError("node info not found")

services.get_node = node_never_registers
from alle_dist import cli
sys.exit(cli.main(["classify", "--run-dir", {run_dir!r}, "--input", {src!r}, "--output", {dst!r}]))
"""


@pytest.mark.slow
def test_ray_start_up_timing_out_is_one_line_with_the_hint(run_dir, tmp_path):
    write_images(tmp_path / "src", 2, size=32)
    code = _RAY_CANT_START.format(root=str(ROOT), run_dir=run_dir, src=str(tmp_path / "src"), dst=str(tmp_path / "dst"))
    env = {**os.environ, "ALLE_DIST_RAY_START_ATTEMPTS": "1", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    p = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=ROOT, start_new_session=True, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        rc, _, err = finish(p, timeout=300)                # Ray's own wait for the raylet is 30 s
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)               # whatever the failed start left running
    errors = [line for line in err.splitlines() if "error:" in line]
    assert rc == 2 and "Traceback" not in err, err[-2000:]
    assert len(errors) == 1 and "a local Ray did not start in time after 1 attempt(s) (The current node timed out" in errors[0]
    assert "run the same command again when the machine is less busy, or allow more attempts with " \
           "ALLE_DIST_RAY_START_ATTEMPTS=N" in errors[0]
