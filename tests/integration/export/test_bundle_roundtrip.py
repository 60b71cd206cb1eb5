"""Issue 21 end to end, on one demo-sized run of real images (../shared/data/leukemia) tracked in a real
MLflow server on 127.0.0.1: `alle-dist demo` (prepare → train → tune → evaluate → classify → export)
with MLFLOW_TRACKING_URI set; MLflow's own client finds every epoch, every Tune trial as a child run,
the report and the model card; the card renders with its sections and the run's numbers; ONNX matches
torch on real images; and a folder classified from the bundle alone — the run directory deleted
first — gives rows identical to classifying it from the run."""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from alle_dist import cli

# ~4-5 min on 2 cores (an MLflow server, two trainings, tune, evaluate, two classify runs): the slow tier.
pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(1200)]
CLASSES = ("Benign", "Early", "Pre", "Pro")
PER_CLASS, EPOCHS = 12, 2
ROW_KEYS = ("run_id", "classified_at")   # per classify run by design; every other column must match


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` on 127.0.0.1 with a SQLite backend and a local artifact root, as a user runs it."""
    pytest.importorskip("mlflow")
    root, port = tmp_path_factory.mktemp("mlflow"), _port()
    log = open(root / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{root}/mlflow.db", "--workers", "1",
                             "--default-artifact-root", str(root / "artifacts")], stdout=log, stderr=log,
                            # its own process group (uvicorn is a child); no job runner (7 huey consumers)
                            start_new_session=True, env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300   # minutes on a loaded 2-core machine (uvicorn + the app import)
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2).read()
            break
        except OSError:
            assert proc.poll() is None, (root / "server.log").read_text()[-3000:]
            time.sleep(1)
    else:
        pytest.fail("mlflow server did not start in 300 s: " + (root / "server.log").read_text()[-3000:])
    yield url
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def demo(tmp_path_factory, leukemia_dir, mlflow_server):
    """The demo on 8 real images per class, tracked in MLflow; what later tests need is read here, since
    the last test deletes the run directory."""
    from alle_dist.runtime import init_ray

    tmp = tmp_path_factory.mktemp("demo")
    data = tmp / "data"
    for c in CLASSES:
        (data / c).mkdir(parents=True)
        for f in sorted((leukemia_dir / "Original" / c).glob("*.jpg"))[:PER_CLASS]:
            shutil.copy(f, data / c / f.name)
    experiment = f"bundle-test-{uuid.uuid4().hex[:8]}"
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME")}
    os.environ.update(MLFLOW_TRACKING_URI=mlflow_server, MLFLOW_EXPERIMENT_NAME=experiment)
    init_ray(num_cpus=4)
    run = tmp / "run"
    # 48 images: a quarter of the training split for validation (the default 10 % leaves none), and too
    # few calibration images for the default 1 %-at-95 % image-rule guarantee (n >= 299): the uncalibrated
    # quantile instead. Through the demo's --config, like any stage setting.
    job = tmp / "job.yaml"
    job.write_text("prepare:\n  val_fraction: 0.25\ntune:\n  referral_rate: null\n")
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            code = cli.main(["demo", "--data", str(data), "--run-dir", str(run), "--epochs", str(EPOCHS),
                             "--image-size", "64", "--config", str(job)])
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    assert code == 0, printed.getvalue()[-3000:]
    return {"printed": printed.getvalue(), "tmp": tmp, "data": data, "run": run, "experiment": experiment, "url": mlflow_server,
            "metrics": json.loads((run / "report" / "metrics.json").read_text()),
            "ensemble_sha256": __import__("hashlib").sha256((run / "ensemble.json").read_bytes()).hexdigest()}


def test_mlflow_has_every_epoch_every_trial_and_the_report(demo):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(demo["url"])
    exp = client.get_experiment_by_name(demo["experiment"])
    runs = client.search_runs([exp.experiment_id], max_results=500)
    by_stage = {}
    for r in runs:
        by_stage.setdefault(r.data.tags.get("alle_dist.stage"), []).append(r)
    train = {r.data.tags["alle_dist.backbone"]: r for r in by_stage["train"]}
    assert set(train) == {"test_resnet", "test_efficientnet"}
    for r in train.values():
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "val_loss")]
        assert steps == list(range(1, EPOCHS + 1)) and r.data.params["train.epochs"] == str(EPOCHS)
        assert r.data.tags["alle_dist.model_id"] and r.info.status == "FINISHED"
    (parent,) = [r for r in by_stage["tune"] if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 10 + 10   # the paper's 5 weight sets × 2 γ, and the demo's 10 random samples
    assert all("accuracy_referral_as_error" in c.data.metrics for c in children)
    assert parent.data.tags["alle_dist.lineage.ensemble"] == demo["ensemble_sha256"]
    (ev,) = by_stage["evaluate"]
    assert ev.data.metrics["accuracy"] == pytest.approx(demo["metrics"]["overall"]["accuracy"])
    assert ev.data.tags["alle_dist.lineage.ensemble"] == demo["ensemble_sha256"]
    names = {a.path for a in client.list_artifacts(ev.info.run_id, "report")}
    assert {"report/model_card.md", "report/report.html", "report/metrics.json"} <= names


def test_the_model_card_renders_with_every_section_and_the_run_numbers(demo):
    import yaml

    from alle_dist.evaluate.card import SECTIONS

    card_line = re.search(r"^  model card +(\S+)$", demo["printed"], re.M)
    assert card_line and Path(card_line.group(1)) == demo["run"] / "bundle" / "model_card.md", demo["printed"][-2000:]
    text = (demo["run"] / "bundle" / "model_card.md").read_text()
    _, front, body = text.split("---\n", 2)
    meta = yaml.safe_load(front)
    m = demo["metrics"]
    values = {x["name"]: x["value"] for x in meta["model-index"][0]["results"][0]["metrics"]}
    assert values["Accuracy (a referral counts as an error)"] == pytest.approx(m["overall"]["accuracy"], abs=1e-6)
    assert meta["license"] == "apache-2.0" and "not-a-medical-device" in meta["tags"]
    assert re.findall(r"^## (.+)$", body, re.M) == list(SECTIONS)
    correct = sum(v["tp"] for v in m["per_class"].values())
    assert f"{correct}/{m['n']})" in body                          # accuracy with its exact interval
    assert f"{m['ece']:.4f}" in body and demo["ensemble_sha256"] in body
    assert "_Not available: no shortcut control was trained" in body


def test_onnx_matches_torch_on_real_images(demo, capsys):
    pytest.importorskip("onnxruntime")
    out = demo["tmp"] / "onnx-bundle"
    code = cli.main(["export", "--run-dir", str(demo["run"]), "--output", str(out), "--onnx",
                     "--parity-images", "6"])     # the run's test split: real images, trained members
    printed = capsys.readouterr().out
    assert code == 0, printed
    diffs = [float(x) for x in re.findall(r"max \|p_onnx - p_torch\| = (\S+) over 6 images", printed)]
    assert len(diffs) == 2 and max(diffs) < 1e-5, printed
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["onnx"]["opset"] == 17 and (out / "onnx" / "test_resnet.onnx").is_file()


def test_classify_from_the_bundle_alone_gives_the_rows_of_the_run(demo, capsys):
    from deltalake import DeltaTable

    def rows(dst: Path) -> dict:
        table = DeltaTable(str(dst)).to_pyarrow_table()
        return {r["uri"]: {k: v for k, v in r.items() if k not in ROW_KEYS} for r in table.to_pylist()}

    before = rows(demo["run"] / "classified")                  # the demo classified the folder from RUN
    bundle = demo["tmp"] / "bundle"
    shutil.move(demo["run"] / "bundle", bundle)
    shutil.rmtree(demo["run"])                                # only the bundle is left
    code = cli.main(["classify", "--model", str(bundle), "--input", str(demo["data"]), "--output",
                     str(demo["tmp"] / "from-bundle")])
    assert code == 0, capsys.readouterr().err
    after = rows(demo["tmp"] / "from-bundle")
    assert len(after) == len(CLASSES) * PER_CLASS and after == before
