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
