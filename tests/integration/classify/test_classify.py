"""classify: the model core, and the whole job on real Ray into the Delta table: bad input, reruns
(unchanged skipped, changed bytes replaced, one row per uri), another model refused, a node killed
mid-job, and a flat driver memory over 20 000 images. The subprocess attacks (kill -9, Ctrl-C, two
jobs at once, a full disk) are in test_classify_cli.py."""
from __future__ import annotations

import shutil
import threading
import time
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest
from alle_dist import errors
from alle_dist import schema
from alle_dist.rundir import RunDir
from alle_dist.classify import pipeline as cls_pipeline
from alle_dist.classify import resolve
from alle_dist.classify import run as cls_run
from alle_dist.classify import planning
from alle_dist.classify.listing import list_inputs
from alle_dist.classify.store import ResultStore
from alle_dist.config import ClassifyConfig, JobConfig
from alle_dist.ensemble import weighted
from alle_dist.errors import ConfigError
from alle_dist.io import storage
from alle_dist.io.images import decode_rgb
from alle_dist.models import field_stats
from alle_dist.models import persistence
from alle_dist.models import inference
from alle_dist.models.predictor import Predictor

from helpers_run import CLASSES, make_run_dir, write_bad_inputs, write_images

SMALL = JobConfig(classify=ClassifyConfig(batch_size=8, commit_rows=10, cpu_workers=1))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return str(make_run_dir(tmp_path_factory.mktemp("classify") / "run"))


def current(dst, columns=None):
    """The current version's rows, read with deltalake (a standard reader, not alle_dist's)."""
    from deltalake import DeltaTable

    return DeltaTable(str(dst)).to_pyarrow_table(columns=columns)


def _uris(dst) -> Counter:
    return Counter(current(dst, ["uri"]).column("uri").to_pylist())


def _uri(root, rel) -> str:
    return storage.path_to_uri(root / rel)


def classify(run_dir, src, dst, job=SMALL):
    job_ = cls_run.setup(run_dir, str(src), str(dst), job)
    return job_, cls_run.execute(job_)


# ---------------------------------------------------------------- core, no Ray

def test_classifier_rows_are_the_ensemble_of_both_predictors(run_dir, tmp_path):
    rels = write_images(tmp_path, 6)
    bad = write_bad_inputs(tmp_path)
    listed = pa.concat_tables(list(list_inputs(str(tmp_path))))
    todo = planning.plan_chunk(listed, planning.empty_index(False), False).todo
    models = resolve.resolve_models(run_dir)
    prep = resolve.read_spec(models, JobConfig())
    batch = inference.read_batch(todo, prep)
    out = cls_pipeline.Classifier(models, "run-x")(batch)

    assert out.schema == schema.classify_schema(list(CLASSES), list(models.spec.backbones))
    rows = {r["path"]: r for r in out.to_pylist()}
    assert set(rows) == {str(tmp_path / r) for r in set(rels) | set(bad) if not r.endswith("zero_bytes.jpg")}
    for rel, err in bad.items():
        if err and "zero" not in rel:
            rel = str(tmp_path / rel)
            assert rows[rel]["status"] == schema.ERROR and rows[rel]["label"] is None
            assert rows[rel]["p_Benign"] is None and rows[rel]["run_id"] == "run-x"
    # The ok rows equal Predictor + ood + weighted.apply run by hand on the same images.
    ok = [r for r in out.to_pylist() if r["status"] == schema.OK]
    images = inference.images_of(batch, prep.image_size)
    probs = {b: Predictor(RunDir(run_dir).model(b).root)(images)["probs"] for b in models.spec.backbones}
    mf = np.array([r["mask_fraction"] for r in ok])
    # image_score: imagestats of the original file, scored with the first backbone's statistics
    stats = persistence.load_ood(RunDir(run_dir).model(models.spec.backbones[0]).root)
    originals = [decode_rgb(open(r["path"], "rb").read()) for r in ok]
    want = field_stats.score(np.stack([field_stats.features(x, prep.segment) for x in originals]), stats)
    np.testing.assert_allclose([r["image_score"] for r in ok], want, rtol=1e-5)
    d = weighted.apply(models.spec, probs, None, mf, want)
    np.testing.assert_allclose([r["p_Pre"] for r in ok], d.probs[:, CLASSES.index("Pre")], atol=1e-6)
    assert [r["label"] for r in ok] == [CLASSES[i] if i >= 0 else schema.REFER for i in d.label]
    assert [r["predicted_class"] for r in ok] == [CLASSES[i] for i in np.argmax(d.probs, axis=1)]
    assert all(r["model_sha256"] == models.model_sha256 for r in ok)
    assert all(dict(r["weights"]) == {"test_resnet": 0.5, "test_efficientnet": 0.5} for r in out.to_pylist())
    assert all(r["uri"] == storage.path_to_uri(r["path"]) for r in out.to_pylist())
    assert all(r["test_resnet_ood_score"] is not None for r in ok)


def test_a_tampered_model_is_refused_before_any_work(run_dir, tmp_path):
    bad_run = tmp_path / "run"
    shutil.copytree(run_dir, bad_run)
    weights = bad_run / "models" / "test_resnet" / persistence.WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    write_images(tmp_path / "src", 2)
    with pytest.raises(errors.ModelIntegrityError, match="sha256"):
        cls_run.setup(str(bad_run), str(tmp_path / "src"), str(tmp_path / "dst"), SMALL)
    assert not (tmp_path / "dst" / "_delta_log").exists()


# ---------------------------------------------------------------- the job on Ray

@pytest.mark.ray
def test_bad_input_reruns_and_changed_bytes_give_one_row_per_uri(ray_local, run_dir, tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    good = write_images(src, 20)
    bad = write_bad_inputs(src)
    job = cls_run.setup(run_dir, str(src), str(dst), SMALL)
    (src / good[0]).unlink()                                   # vanishes between listing and reading
    assert cls_run.execute(job) == []
    rows = {r["uri"]: r for r in current(dst).to_pylist()}
    everything = {_uri(src, r) for r in good + list(bad)}
    assert _uris(dst) == Counter(everything)                   # every listed input, one row each
    assert "vanished" in rows[_uri(src, good[0])]["error"]
    for rel, err in bad.items():
        row = rows[_uri(src, rel)]
        assert (row["status"] == schema.OK) if err is None else (err in row["error"].lower())
    assert all(r["run_id"] == job.run["run_id"] and r["model_sha256"] == job.models.model_sha256
               and r["version"] and r["classified_at"] for r in rows.values())
    assert ray_local.data.DataContext.get_current().max_errored_blocks == 0
    assert ResultStore(str(dst)).uri and job.store.runs()[-1]["status"] == "complete"

    # New inputs arrive, one file is rewritten in place with other bytes of the same size, the
    # vanished one comes back: only those are classified; each keeps one current row.
    new = write_images(src / "new", 3, seed=7)
    target = src / good[1]
    other = (src / good[2]).read_bytes()
    target.write_bytes(other[: target.stat().st_size].ljust(target.stat().st_size, b"\0"))
    write_images(tmp_path / "again", 1)
    (tmp_path / "again" / good[0]).rename(src / good[0])
    again, problems = classify(run_dir, src, dst)
    assert problems == [] and again.counts["skipped"] == len(everything) - 2
    assert again.counts["committed"] == 3 + 2
    assert _uris(dst) == Counter(everything | {_uri(src / "new", p) for p in new})
    now = {r["uri"]: r for r in current(dst).to_pylist()}
    assert now[_uri(src, good[1])]["sha256"] != rows[_uri(src, good[1])]["sha256"]
    assert now[_uri(src, good[0])]["status"] == schema.OK

    # Another model into the same table is refused before any work.
    other_run = make_run_dir(tmp_path / "other", backbones=("test_resnet",), seed=3)
    with pytest.raises(ConfigError, match="another model"):
        cls_run.setup(str(other_run), str(src), str(dst), SMALL)


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
        cfg = JobConfig(classify=ClassifyConfig(batch_size=8, commit_rows=16, cpu_workers=2))
        job = cls_run.setup(run_dir, str(src), str(dst), cfg)

        def kill_when_half_published():
            deadline = time.time() + 300
            while time.time() < deadline:
                if _commits(dst) >= 1:
                    victim = _busiest_worker_node(workers)
                    cluster.remove_node(victim, allow_graceful=False)
                    killed.append(victim)
                    return
                time.sleep(0.2)

        t = threading.Thread(target=kill_when_half_published, daemon=True)
        t.start()
        problems = cls_run.execute(job)
        t.join()
    finally:
        ray.shutdown()
        cluster.shutdown()
    print(job.run)
    assert killed, "the node was never killed: the job ended before its first commit"
    assert problems == []
    got = _uris(dst)       # the current version: one row per uri, every input
    assert set(got) == {storage.path_to_uri(p) for p in src.rglob("*.jpg")} and max(got.values()) == 1


def _commits(dst) -> int:
    """Data commits so far (version 0 creates the table)."""
    return max(0, len(list((dst / "_delta_log").glob("*.json"))) - 1) if (dst / "_delta_log").is_dir() else 0


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
    cfg = JobConfig(classify=ClassifyConfig(batch_size=500, commit_rows=2000, cpu_workers=1))
    samples = []
    stop = threading.Event()

    def sample():
        while not stop.wait(0.25):
            samples.append((_commits(dst), _rss_mb()))

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        job, problems = classify(str(run), src, dst, cfg)
    finally:
        stop.set()
        t.join()
    assert problems == [] and job.counts["committed"] == n and sum(_uris(dst).values()) == n
    assert not job.prep.image_stats and current(dst, ["image_score"]).column(0).null_count == n
    after_first = [(commits, rss) for commits, rss in samples if commits >= 1]
    assert len(after_first) >= 5, "too few samples while streaming"
    # A leak is a trend: RSS rising with every commit. The least-squares line through (commit, RSS)
    # measures it without being moved by one allocator spike or a dip at the first sample (the raw
    # peak minus first sample read 39 and 44 MB on two runs on a loaded 2-core machine).
    commits, rss = np.array(after_first, float).T
    trend = np.polyfit(commits, rss, 1)[0] * (commits.max() - commits.min()) if np.ptp(commits) else 0.0
    print(f"driver RSS after the first commit {rss[0]:.0f} MB, peak {rss.max():.0f} MB, "
          f"trend {trend:+.0f} MB over {np.ptp(commits):.0f} commits")
    assert trend < 40, f"driver RSS rose {trend:.0f} MB (fitted) while streaming {n} images"
