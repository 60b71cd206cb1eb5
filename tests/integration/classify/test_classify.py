"""classify: the model core, and the whole job on real Ray: bad input, a crash before the manifest,
an idempotent rerun, a node killed mid-job, and a flat driver memory over 20 000 images."""
from __future__ import annotations

import shutil
import threading
import time
from collections import Counter

import numpy as np
import pytest
from alle_dist import errors
from alle_dist import schema
from alle_dist.rundir import RunDir
from alle_dist.classify import parts as cls_parts
from alle_dist.classify import pipeline as cls_pipeline
from alle_dist.classify import plan as cls_plan
from alle_dist.config import ClassifyConfig, JobConfig
from alle_dist.ensemble import rule as ens_rule
from alle_dist.errors import ConfigError
from alle_dist.io import storage
from alle_dist.io.images import decode_rgb
from alle_dist.models import field_stats
from alle_dist.models import files as model_files
from alle_dist.models import inference
from alle_dist.models.predictor import Predictor

from helpers_run import CLASSES, make_run_dir, write_bad_inputs, write_images

SMALL = JobConfig(classify=ClassifyConfig(batch_size=8, rows_per_file=10, cpu_workers=1))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return str(make_run_dir(tmp_path_factory.mktemp("classify") / "run"))


def _paths(dst) -> Counter:
    return Counter(cls_parts.read_results(str(dst), ["path"]).column("path").to_pylist())


# ---------------------------------------------------------------- core, no Ray

def test_classifier_rows_are_the_ensemble_of_both_predictors(run_dir, tmp_path):
    rels = write_images(tmp_path, 6)
    bad = write_bad_inputs(tmp_path)
    todo, _ = cls_parts.plan(storage.list_files(str(tmp_path), schema.IMAGE_SUFFIXES), {})
    models = cls_plan.resolve_models(run_dir)
    prep = cls_plan.prep_spec(models, str(tmp_path), JobConfig())
    batch = inference.prepare_batch(todo, prep)
    out = cls_pipeline.Classifier(models, "run-x")(batch)

    assert out.schema == schema.classify_schema(list(CLASSES), list(models.spec.backbones))
    rows = {r["path"]: r for r in out.to_pylist()}
    assert set(rows) == set(rels) | set(bad)
    for rel, err in bad.items():
        if err:
            assert rows[rel]["status"] == schema.ERROR and rows[rel]["label"] is None
            assert rows[rel]["p_Benign"] is None and rows[rel]["run_id"] == "run-x"
    # The ok rows equal Predictor + ood + ens_rule.apply run by hand on the same images.
    ok = [r for r in out.to_pylist() if r["status"] == schema.OK]
    images = inference.images_of(batch, prep.image_size)
    probs = {b: Predictor(RunDir(run_dir).model(b).root)(images)["probs"] for b in models.spec.backbones}
    mf = np.array([r["mask_fraction"] for r in ok])
    # image_score: imagestats of the original file, scored with the first backbone's statistics
    stats = model_files.load_ood(RunDir(run_dir).model(models.spec.backbones[0]).root)
    originals = [decode_rgb((tmp_path / r["path"]).read_bytes()) for r in ok]
    want = field_stats.score(np.stack([field_stats.features(x, prep.segment) for x in originals]), stats)
    np.testing.assert_allclose([r["image_score"] for r in ok], want, rtol=1e-5)
    d = ens_rule.apply(models.spec, probs, None, mf, want)
    np.testing.assert_allclose([r["p_Pre"] for r in ok], d.probs[:, CLASSES.index("Pre")], atol=1e-6)
    assert [r["label"] for r in ok] == [CLASSES[i] if i >= 0 else schema.REFER for i in d.label]
    assert all(r["model_sha256"] == models.model_sha256 and r["weights"] == [0.5, 0.5] for r in ok)
    assert all(r["test_resnet_ood_score"] is not None for r in ok)


def test_a_tampered_model_is_refused_before_any_work(run_dir, tmp_path):
    bad_run = tmp_path / "run"
    shutil.copytree(run_dir, bad_run)
    weights = bad_run / "models" / "test_resnet" / model_files.WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    write_images(tmp_path / "src", 2)
    with pytest.raises(errors.ModelIntegrityError, match="sha256"):
        cls_plan.plan_job(str(bad_run), str(tmp_path / "src"), str(tmp_path / "dst"), SMALL)
    assert not (tmp_path / "dst").exists()


# ---------------------------------------------------------------- the job on Ray

@pytest.mark.ray
def test_bad_input_crash_before_manifest_and_rerun_are_exactly_once(ray_local, run_dir, tmp_path, monkeypatch):
    src, dst = tmp_path / "src", tmp_path / "dst"
    good = write_images(src, 20)
    bad = write_bad_inputs(src)
    plan = cls_plan.plan_job(run_dir, str(src), str(dst), SMALL)
    (src / good[0]).unlink()                                   # vanishes between listing and reading
    assert cls_pipeline.execute(plan) == []
    rows = {r["path"]: r for r in cls_parts.read_results(str(dst)).to_pylist()}
    assert _paths(dst) == Counter(plan.listed)                 # every listed input exactly once
    assert "vanished" in rows[good[0]]["error"]
    for rel, err in bad.items():
        assert (rows[rel]["status"] == schema.OK) if err is None else (err in rows[rel]["error"].lower())
    assert ray_local.data.DataContext.get_current().max_errored_blocks == 0
    before = (dst / cls_parts.MANIFEST_NAME).read_bytes()

    # New inputs arrive; the job dies after writing a part but before listing it.
    new = write_images(src / "new", 5, seed=7)
    def crash(*_):
        raise KeyboardInterrupt("simulated crash before the manifest")
    monkeypatch.setattr(cls_parts, "write_manifest", crash)
    with pytest.raises(KeyboardInterrupt):
        cls_pipeline.run_job(run_dir, str(src), str(dst), SMALL)
    monkeypatch.undo()
    assert (dst / cls_parts.MANIFEST_NAME).read_bytes() == before          # nothing published
    assert _paths(dst) == Counter(plan.listed)                               # previous output intact
    assert len(list(dst.glob("part-*.parquet"))) > len(cls_parts.load_manifest(str(dst))["files"])

    # The same command again: only the new inputs are classified; nothing is written twice.
    again = cls_pipeline.run_job(run_dir, str(src), str(dst), SMALL)
    assert again.run["rows_written"] == 5 and again.run["skipped"] == len(again.listed) - 5
    assert _paths(dst) == Counter(plan.listed | {f"new/{p}" for p in new})

    # Another model into the same output is refused.
    other = make_run_dir(tmp_path / "other", backbones=("test_resnet",), seed=3)
    with pytest.raises(ConfigError, match="another model"):
        cls_plan.plan_job(str(other), str(src), str(dst), SMALL)


def _busiest_worker_node(nodes):
    """The killable node that hosts a model actor (where the most CPU is in use)."""
    import ray

    avail = ray._private.state.available_resources_per_node()
    return min(nodes, key=lambda n: avail.get(n.node_id, {}).get("CPU", 0.0))


@pytest.mark.ray
@pytest.mark.slow
def test_a_node_killed_mid_job_still_gives_every_input_exactly_once(run_dir, tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    from alle_dist.runtime import configure_data_context

    src, dst = tmp_path / "src", tmp_path / "dst"
    write_images(src, 160)
    ray.shutdown()  # the session's Ray; the ray_local fixture starts it again when next asked
    # Fast failure detection: a hard-killed node is declared dead in ~2 s instead of ~30 s.
    fast = {"health_check_period_ms": 500, "health_check_failure_threshold": 4}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False,
                                                           "_system_config": fast})
    workers = [cluster.add_node(num_cpus=2) for _ in range(2)]
    cluster.wait_for_nodes()
    killed = []
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        configure_data_context()
        job = JobConfig(classify=ClassifyConfig(batch_size=8, rows_per_file=16, cpu_workers=2))
        plan = cls_plan.plan_job(run_dir, str(src), str(dst), job)

        def kill_when_half_published():
            deadline = time.time() + 300
            while time.time() < deadline:
                if storage.exists(cls_parts.manifest_uri(str(dst))):
                    victim = _busiest_worker_node(workers)
                    cluster.remove_node(victim, allow_graceful=False)
                    killed.append(victim)
                    return
                time.sleep(0.2)

        t = threading.Thread(target=kill_when_half_published, daemon=True)
        t.start()
        problems = cls_pipeline.execute(plan)
        t.join()
    finally:
        ray.shutdown()
        cluster.shutdown()
    print(plan.run)
    assert killed, "the node was never killed: the job ended before its first part was published"
    assert problems == []
    got = _paths(dst)
    assert set(got) == plan.listed and max(got.values()) == 1


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


@pytest.mark.ray
@pytest.mark.slow
def test_driver_memory_stays_flat_over_20000_images(ray_local, tmp_path):
    n = 20_000
    # the cheapest model, without image statistics (as models trained before them): none computed
    run = make_run_dir(tmp_path / "run", backbones=("test_resnet",), image_size=32, image_stats=False)
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_images(src, n, size=32)                  # 32x32 JPEGs; collected as images: ~60 MB more
    job = JobConfig(classify=ClassifyConfig(batch_size=500, rows_per_file=2000, cpu_workers=1))
    samples = []
    stop = threading.Event()

    def sample():
        while not stop.wait(0.25):
            published = cls_parts.load_manifest(str(dst))["files"] if storage.exists(
                cls_parts.manifest_uri(str(dst))) else []
            samples.append((sum(f["rows"] for f in published), _rss_mb()))

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        plan = cls_pipeline.run_job(str(run), str(src), str(dst), job)
    finally:
        stop.set()
        t.join()
    assert plan.run["rows_written"] == n and sum(_paths(dst).values()) == n
    assert not plan.prep.image_stats and cls_parts.read_results(str(dst), ["image_score"]).column(0).null_count == n
    after_first = [rss for rows, rss in samples if rows >= 2000]
    assert len(after_first) >= 5, "too few samples while streaming"
    growth = max(after_first) - after_first[0]
    print(f"driver RSS after the first part {after_first[0]:.0f} MB, peak {max(after_first):.0f} MB")
    assert growth < 40, f"driver RSS grew {growth:.0f} MB while streaming {n} images"
