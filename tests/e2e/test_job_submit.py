"""`ray job submit` end to end: a real `ray start --head` on 127.0.0.1, every stage as a Ray job.

prepare (from a moto S3 bucket, as a user's S3) → train two tiny backbones → tune → evaluate →
classify, each job SUCCEEDED with its outputs; fake AWS keys must appear in no log, runtime_env,
Parquet metadata or file the run wrote.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import FAKE_SECRET, ROOT, _free_port, upload_dir

pytestmark = [pytest.mark.slow, pytest.mark.ray]
VENV_BIN = Path(sys.executable).parent
EXCLUDES = json.dumps({"excludes": [".venv", "runs", ".git", ".devpack", "**/__pycache__", ".pytest_cache"]})
BACKBONES = ["test_resnet", "test_efficientnet"]


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """`ray start --head` on 127.0.0.1 with its own temp dir, ports and auth token; stopped by PID."""
    tmp = tmp_path_factory.mktemp("rayhead")
    token = tmp / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN_PATH": str(token), "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    env.pop("RAY_ADDRESS", None)
    dash = _free_port()
    temp_dir = Path("/tmp") / f"ad-{secrets.token_hex(3)}"   # short: Ray's socket paths are length-limited
    cmd = [str(VENV_BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={_free_port()}",
           "--num-cpus=4", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
           f"--dashboard-port={dash}", f"--dashboard-agent-listen-port={_free_port()}",
           f"--ray-client-server-port={_free_port()}", f"--temp-dir={temp_dir}",
           "--disable-usage-stats", "--block"]
    proc = subprocess.Popen(cmd, env=env, stdout=open(tmp / "head.log", "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    _wait_for_jobs_api(address, env, proc, tmp / "head.log")
    _assert_listens_on_loopback_only(dash)
    yield {"address": address, "env": env, "temp_dir": temp_dir}
    os.killpg(proc.pid, signal.SIGTERM)   # only our own cluster: never `ray stop` on a shared machine
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_for_jobs_api(address, env, proc, log, timeout=90):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited: {Path(log).read_text()[-2000:]}")
        r = subprocess.run([str(VENV_BIN / "ray"), "job", "list", "--address", address],
                           env=env, capture_output=True, text=True)
        if r.returncode == 0:
            return
        time.sleep(2)
    raise TimeoutError(f"jobs API at {address} not up: {Path(log).read_text()[-2000:]}")


def _assert_listens_on_loopback_only(port: int) -> None:
    """The dashboard / jobs API is bound to 127.0.0.1, not every interface."""
    binds = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, hexport = local.rsplit(":", 1)
            if state == "0A" and int(hexport, 16) == port:        # 0A = LISTEN
                binds.add(addr)
    assert binds == {"0100007F"}, f"dashboard port {port} listens on {binds} (want only 127.0.0.1)"


def submit(head, stage, *args, timeout=900):
    """`ray job submit --working-dir . -- python ray_jobs/<stage>.py ARGS`; returns the job's logs."""
    cmd = [str(VENV_BIN / "ray"), "job", "submit", "--address", head["address"], "--working-dir", ".",
           "--runtime-env-json", EXCLUDES, "--", "python", f"ray_jobs/{stage}.py", *map(str, args)]
    r = subprocess.run(cmd, cwd=ROOT, env=head["env"], capture_output=True, text=True, timeout=timeout)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "succeeded" in out.lower(), f"{stage} job failed:\n{out[-4000:]}"
    return out


# Six real jobs one after another: 430-570 s on 2 busy cores, so pytest's 600 s default is too tight
# (a timing limit here would be a speed test, which belongs in bench/).
@pytest.mark.timeout(1800)
def test_pipeline_as_ray_jobs(ray_head, s3_bucket, tmp_path):
    from deltalake import DeltaTable
    from alle_dist.prepare import manifest as catalog
    from alle_dist.testing import synthetic
    from ray.job_submission import JobSubmissionClient

    synth = synthetic.generate(tmp_path / "synth", n_per_class=24, seed=0, size=64)
    upload_dir(Path(synth), s3_bucket, "smears")
    src, run, dst = f"s3://{s3_bucket}/smears", tmp_path / "run", tmp_path / "out"

    logs = [submit(ray_head, "prepare", "--data", src, "--run-dir", run, "--seed", 1)]
    table, source, classes = catalog.read_manifest(str(run))
    assert table.num_rows == 96 and source == src and len(classes) == 4
    for b in BACKBONES:
        logs.append(submit(ray_head, "train", "--run-dir", run, "--backbone", b, "--epochs", 1,
                           "--batch-size", 16, "--image-size", 64, "--workers", 2, "--pretrained", "none"))
        assert (run / "models" / b / "model.safetensors").is_file()
        assert (run / "models" / b / "test_probs.parquet").is_file()
    # 96 images are too few for the default referral guarantee (1 % at 95 % needs 299): the plain quantile
    logs.append(submit(ray_head, "tune", "--run-dir", run, "--backbones", ",".join(BACKBONES),
                       "--num-samples", 4, "--referral-rate", "none"))
    spec = json.loads((run / "ensemble.json").read_text())
    assert spec["backbones"] == BACKBONES and spec["trials"]
    logs.append(submit(ray_head, "evaluate", "--run-dir", run))
    metrics = json.loads((run / "report" / "metrics.json").read_text())
    assert {"per_class", "overall", "coverage", "ece", "n"} <= set(metrics)
    logs.append(submit(ray_head, "classify", "--run-dir", run, "--input", src, "--output", dst))
    rows = DeltaTable(str(dst)).to_pyarrow_table(columns=["uri", "status"])   # the current version
    # one row per input, keyed by its absolute uri
    assert sorted(rows.column("uri").to_pylist()) == sorted(f"{src}/{p}" for p in table.column("path").to_pylist())
    assert set(rows.column("status").to_pylist()) == {"ok"}

    # No secret anywhere: job logs, runtime_envs, Ray's session logs, Parquet metadata, written files.
    client = JobSubmissionClient(ray_head["address"], headers=_auth_headers(ray_head))
    for job in client.list_jobs():
        assert FAKE_SECRET not in json.dumps(job.runtime_env or {})
        assert FAKE_SECRET not in client.get_job_logs(job.submission_id)
    assert not any(FAKE_SECRET in text for text in logs)
    assert not _files_containing(ray_head["temp_dir"], FAKE_SECRET)
    assert not _files_containing(run, FAKE_SECRET) and not _files_containing(dst, FAKE_SECRET)


def _auth_headers(head):
    token = Path(head["env"]["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    return {"Authorization": f"Bearer {token}"}


def _files_containing(root, needle: str) -> list[str]:
    """'file: ...context...' for every file under root that contains needle."""
    hits, raw = [], needle.encode()
    for p in Path(root).rglob("*"):
        try:
            data = p.read_bytes() if p.is_file() and not p.is_symlink() else b""
        except OSError:
            continue
        at = data.find(raw)
        if at >= 0:
            hits.append(f"{p}: {data[max(0, at - 300):at + 100]!r}")
    return hits
