"""MLflow stays opt-in: off without --mlflow / MLFLOW_TRACKING_URI, one line naming the extra when the
package is missing, and one line (exit 2) before any work when the server does not answer."""
from __future__ import annotations

import socket
import sys
import time

import pytest

from alle_dist import cli, tracking
from helpers_probs import write_manifest


def test_off_by_default(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.open_tracker(None, "train", "run") is None


def test_a_missing_mlflow_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    with pytest.raises(tracking.ConfigError, match=r"mlflow package is not installed; pip install 'alle-dist\[mlflow\]'"):
        tracking.open_tracker("http://127.0.0.1:1", "train", "run")


def test_an_unreachable_server_stops_train_in_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    pytest.importorskip("mlflow")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]        # closed once the block ends: nothing listens there
    (tmp_path / "src" / "Pre").mkdir(parents=True)
    (tmp_path / "src" / "Pre" / "a.jpg").write_bytes(b"x")
    write_manifest(tmp_path / "run", tmp_path / "src", [{"path": "Pre/a.jpg", "label": "Pre", "split": "train"}])
    t0 = time.time()
    code = cli.main(["train", "--run-dir", str(tmp_path / "run"), "--backbone", "test_resnet", "--pretrained", "none",
                     "--mlflow", f"http://127.0.0.1:{port}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "MLflow server does not answer" in err[0], err
    assert time.time() - t0 < 30 and not (tmp_path / "run" / "models").exists()


def test_flatten_gives_dotted_keys():
    assert tracking.flatten({"train": {"lr": 1e-4, "hsv": [1, 2]}, "x": 1}) == {"train.lr": 1e-4, "train.hsv": [1, 2], "x": 1}


def test_evaluate_tracks_into_a_local_file_store(tmp_path, monkeypatch):
    """MLflow's own client finds evaluate's metrics, lineage tags and report artifacts in a local file store
    (MLflow 3 keeps its file store behind MLFLOW_ALLOW_FILE_STORE; without it: one line naming the fix)."""
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from alle_dist import config
    from alle_dist.evaluate import stage as eval_stage
    from helpers_probs import corrections_case

    run, _, _ = corrections_case(tmp_path)
    doc = eval_stage.evaluate_run(str(run), config.EvaluateConfig())
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(tracking.UsageError, match=r"can't open the experiment.*MLFLOW_ALLOW_FILE_STORE"):
        tracking.open_tracker(uri, "evaluate", str(run))
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "file-store")
    eval_stage.track(tracking.open_tracker(uri, "evaluate", str(run)), str(run), doc, config.EvaluateConfig())
    client = MlflowClient(uri)
    (r,) = client.search_runs([client.get_experiment_by_name("file-store").experiment_id])
    assert r.data.metrics["accuracy"] == pytest.approx(doc["overall"]["accuracy"])
    assert r.data.metrics["models.densenet201.accuracy"] == pytest.approx(doc["models"]["densenet201"]["overall"]["accuracy"])
    assert r.data.tags["alle_dist.lineage.ensemble"] == doc["lineage"]["ensemble"] and r.info.status == "FINISHED"
    names = {a.path for a in client.list_artifacts(r.info.run_id, "report")}
    assert {"report/model_card.md", "report/metrics.json", "report/report.html"} <= names
    assert "report/corrections" in names            # corrections.csv; the copied images stay out
    assert not any(a.path.endswith(".jpg") for a in client.list_artifacts(r.info.run_id, "report/corrections"))
