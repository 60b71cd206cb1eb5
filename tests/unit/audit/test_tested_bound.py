"""audit takes evaluate's γ row only from a report of the current ensemble.json (its recorded hash)."""
from __future__ import annotations

import json

from alle_dist.audit import stage
from alle_dist.ensemble.lineage import ensemble_sha256
from alle_dist.evaluate.metrics import GAMMA_ROW
from alle_dist.rundir import RunDir

ROW = {"name": GAMMA_ROW, "test_upper": 0.0977, "n": 170, "valid": False}


def _run(tmp_path, ensemble: dict) -> RunDir:
    run = RunDir(str(tmp_path))
    (tmp_path / RunDir.ENSEMBLE).write_text(json.dumps(ensemble))
    (tmp_path / RunDir.REPORT).mkdir(exist_ok=True)
    return run


def _report(run: RunDir, ensemble_hash: str) -> None:
    doc = {"lineage": {"ensemble": ensemble_hash}, "guarantees": [{"name": "image rule"}, ROW]}
    with open(run.report_file(RunDir.METRICS), "w") as f:
        json.dump(doc, f)


def test_the_row_of_a_report_of_this_ensemble_is_used(tmp_path):
    run = _run(tmp_path, {"gamma": 0.9})
    assert stage.tested_gamma(run) is None                       # no report yet
    _report(run, ensemble_sha256(run))
    assert stage.tested_gamma(run) == ROW


def test_a_report_of_an_earlier_tuning_is_not(tmp_path, caplog):
    run = _run(tmp_path, {"gamma": 0.9})
    _report(run, ensemble_sha256(run))
    (tmp_path / RunDir.ENSEMBLE).write_text(json.dumps({"gamma": 0.95}))   # tuned again, not evaluated
    assert stage.tested_gamma(run) is None
    assert "of another tuning" in caplog.text and "rerun alle-dist evaluate" in caplog.text
