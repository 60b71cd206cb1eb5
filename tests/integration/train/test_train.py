"""Train stage: the recipe's pieces without Ray, then real Ray Train runs on a subset of the real images.

The Ray runs use test_resnet at 64 px on 16 images per class (9 train / 1 val / 6 test each).
Ray Train's local mode (num_workers=0) keeps no checkpoints, so the end-to-end runs use real workers.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from alle_dist import config
from alle_dist import errors
from alle_dist import schema
from alle_dist.rundir import RunDir
from alle_dist.config import SegmentConfig
from alle_dist.io import storage
from alle_dist.io.images import decode_rgb
from alle_dist.models import field_stats
from alle_dist.models import persistence
from alle_dist.models import registry
from alle_dist.prepare import catalog
from alle_dist.prepare import manifest as prep_manifest
from alle_dist.train import augment
from alle_dist.train import stage as train_job
from alle_dist.train import loop as train_loop_mod
from helpers_run import make_run  # noqa: F401  (test_control imports it from here too)


ROOT = Path(__file__).resolve().parents[3]
ARGS = ["--backbone", "test_resnet", "--pretrained", "none", "--image-size", "64", "--batch-size", "8"]


def job(**train_overrides):
    return config.job_config(None, train={"backbone": "test_resnet", "pretrained": "none", "image_size": 64,
                                          "batch_size": 8, **train_overrides})


def epochs_of(meta) -> list[int]:
    return [e["epoch"] for e in meta["epochs"]]


# ---------------------------------------------------------------- Ray-free core

def test_split_rows_limit_is_a_stable_subset(tmp_path, leukemia_dir):
    table, _, _ = prep_manifest.read_manifest(make_run(tmp_path, leukemia_dir, per_class=8))
    full = train_job.split_rows(table, schema.TRAIN, None, 0)
    assert set(full.column("split").to_pylist()) == {schema.TRAIN}
    a, b = train_job.split_rows(table, schema.TRAIN, 5, 0), train_job.split_rows(table, schema.TRAIN, 5, 0)
    assert a.num_rows == 5 and a.column("path").to_pylist() == b.column("path").to_pylist()
    assert set(a.column("path").to_pylist()) <= set(full.column("path").to_pylist())
    assert train_job.run_name("/x/run", "resnet50") == train_job.run_name("/x/run/", "resnet50") != train_job.run_name("/y", "resnet50")


def test_loss_decreases_on_real_images(leukemia_dir):
    """The recipe's step (uint8 → normalise → Adam, CE) fits a few real segmented images."""
    from alle_dist.config import SegmentConfig

    by: dict[str, list[str]] = {}
    for rel, c in catalog.list_labelled(str(leukemia_dir)):
        by.setdefault(c, []).append(rel)
    picked = [(rel, i) for i, c in enumerate(sorted(by)) for rel in by[c][:4]]
    imgs = np.stack([augment.load_image(storage.read_bytes(str(leukemia_dir / r)), 64, SegmentConfig())[0]
                     for r, _ in picked])
    batch = {"image": torch.from_numpy(imgs), "label": torch.tensor([i for _, i in picked])}
    torch.manual_seed(0)
    model = registry.create("test_resnet", 4, "none")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    mean, std = (torch.tensor(v) for v in registry.default_normalisation("test_resnet"))
    losses = [train_loop_mod.train_epoch(model, opt, [batch], 64, mean, std, amp=False)[0] / len(picked) for _ in range(8)]
    assert losses[-1] < 0.7 * losses[0], losses
    loss, correct, n = train_loop_mod.evaluate(model, [batch], 64, mean, std, amp=False)
    assert n == len(picked) and 0 <= correct <= n and np.isfinite(loss)


def test_checkpoint_round_trip_and_damage(tmp_path):
    """Model + Adam state survive a checkpoint exactly (next step identical); damage is refused."""
    torch.manual_seed(0)
    model = registry.create("test_resnet", 4, "none")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randint(0, 256, (4, 64, 64, 3), dtype=torch.uint8), torch.tensor([0, 1, 2, 3])
    mean, std = torch.full((3,), 0.5), torch.full((3,), 0.5)
    train_loop_mod.train_step(model, opt, x, y, 64, mean, std, False)
    meta = {"architecture": "test_resnet", "classes": list("abcd"), "image_size": 64, "mean": [0.5] * 3,
            "std": [0.5] * 3, "epochs": [{"epoch": 1}]}
    persistence.write_checkpoint(str(tmp_path), model, opt, meta)
    state, opt_tensors, got = persistence.read_checkpoint(str(tmp_path))
    model2 = registry.create("test_resnet", 4, "none")
    model2.load_state_dict(state)
    opt2 = torch.optim.Adam(model2.parameters(), lr=1e-3)
    persistence.restore_optimizer(opt2, opt_tensors, got["optimizer"]["param_groups"])
    for m, o in ((model, opt), (model2, opt2)):
        torch.manual_seed(1)
        train_loop_mod.train_step(m, o, x, y, 64, mean, std, False)
    assert train_loop_mod.replica_digest(model) == train_loop_mod.replica_digest(model2)
    weights = tmp_path / persistence.OPTIMIZER_FILE
    weights.write_bytes(weights.read_bytes()[:-4] + b"\xff\xff\xff\xff")
    with pytest.raises(errors.ModelIntegrityError, match="sha256"):
        persistence.read_checkpoint(str(tmp_path))


# ---------------------------------------------------------------- real Ray Train runs

def _run_until_first_checkpoint_then_kill(run: str, ckpt_root: Path) -> None:
    """`alle-dist train` (ray_jobs/train.py) in its own process session, SIGKILLed after epoch 1."""
    cmd = [sys.executable, str(ROOT / "ray_jobs" / "train.py"), "--run-dir", run, *ARGS,
           "--epochs", "3", "--workers", "2", "--num-cpus", "3"]
    # Workers pause 60 s after each epoch: the kill lands after epoch 1's commit, before epoch 2.
    env = {**os.environ, train_job.PAUSE_ENV: "60"}
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)

    def committed() -> bool:
        """Ray Train's snapshot has a latest checkpoint (uploaded files, or a pending one, don't count)."""
        for snap in ckpt_root.glob("*/checkpoint_manager_snapshot.json"):
            try:
                return json.loads(snap.read_text()).get("latest_checkpoint_result") is not None
            except ValueError:   # caught mid-write
                return False
        return False

    try:
        deadline = time.time() + 300
        while time.time() < deadline and not committed():
            if proc.poll() is not None:
                pytest.fail(f"training ended before it could be killed: {proc.stderr.read()[-2000:]!r}")
            time.sleep(0.5)
        assert committed(), "no checkpoint within 300 s"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)   # the driver and the local Ray it started (its session)
        proc.wait()


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(1200)   # three training jobs in a row: ~350 s on 2 idle cores
def test_killed_driver_resumes_survives_a_worker_failure_and_finishes(tmp_path, leukemia_dir, ray_local,
                                                                       monkeypatch):
    run = make_run(tmp_path / "run", leukemia_dir, per_class=10)
    out = Path(RunDir(run).model("test_resnet").root)
    _run_until_first_checkpoint_then_kill(run, out / "checkpoints")
    # The same command again (in-process, on the test's Ray) resumes; a worker dies at the start of
    # epoch 3 and the group restarts from the epoch-2 checkpoint.
    monkeypatch.setenv(train_job.FAIL_ENV, "3")
    monkeypatch.setenv(train_job.PAUSE_ENV, "3")   # epoch 2's checkpoint is committed before epoch 3 fails
    meta = train_job.train_backbone(run, job(epochs=3, workers=2, max_failures=1))
    assert epochs_of(meta) == [1, 2, 3]                                  # no epoch trained twice
    # Resumed at epoch 2 after the killed driver, then at 3 after the injected worker failure.
    assert meta["resumed_at"] == [2, 3]
    assert list(out.glob("checkpoints/*/injected_failure_3")), "the injected worker failure did not happen"
    for e in meta["epochs"]:
        assert e["world_size"] == 2 and len(set(e["replica_digests"])) == 1   # gradients synchronised
    # The published model is the best checkpoint, bit-exact, and loads back.
    model, loaded = persistence.load_model(str(out))
    assert loaded["sha256"] == meta["sha256"]
    best = next(e for e in meta["epochs"] if e["epoch"] == meta["best_epoch"])
    assert train_loop_mod.replica_digest(model) == best["replica_digests"][0]
    assert (out / "last" / "meta.json").exists() and json.loads((out / "oversampling.json").read_text())
    assert (out / "train_config.yaml").exists()
    table, _, classes = prep_manifest.read_manifest(run)
    for split in (schema.VAL, schema.TEST):
        probs = storage.read_parquet(str(out / f"{split}_probs.parquet"))
        assert probs.schema.equals(schema.probs_schema(classes))
        expected = sorted(p for p, s in zip(table.column("path").to_pylist(), table.column("split").to_pylist())
                          if s == split)
        assert probs.column("path").to_pylist() == expected                  # one row per image
        p = np.stack([probs.column(schema.prob_column(c)).to_numpy() for c in classes], 1)
        np.testing.assert_allclose(p.sum(1), 1, atol=1e-4)
        # The image-statistics distance of each original field, as bulk classification computes it.
        stats = persistence.load_ood(str(out))
        first = storage.read_bytes(str(leukemia_dir / expected[0]))
        want = field_stats.score(field_stats.features(decode_rgb(first), SegmentConfig())[None], stats)
        assert probs.column("image_score").to_numpy()[0] == pytest.approx(float(want[0]), rel=1e-5)
    assert set(persistence.load_ood(str(out))) >= {"means", "precision", "image_means", "image_precision"}
    # The same command once more: finished, not retrained.
    monkeypatch.delenv(train_job.FAIL_ENV)
    t0 = time.perf_counter()
    assert train_job.train_backbone(run, job(epochs=3, workers=2)) == persistence.read_meta(str(out))
    assert time.perf_counter() - t0 < 5
    # A damaged latest checkpoint stops a resume with a clear error before any worker starts.
    (out / "test_probs.parquet").unlink()
    ckpts = sorted(p for p in (out / "checkpoints").glob("*/checkpoint_*") if p.is_dir())  # by time stamp
    w = ckpts[-1] / persistence.WEIGHTS_FILE
    data = w.read_bytes()
    w.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(errors.ModelIntegrityError, match="sha256"):
        train_job.train_backbone(run, job(epochs=3, workers=2))
