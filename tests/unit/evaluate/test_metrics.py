"""Evaluation metrics against scikit-learn and hand-computed values, and the evaluate stage's outputs."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from alle_dist.config import EvaluateConfig
from alle_dist.evaluate import metrics as eval_metrics
from alle_dist.evaluate import stage as eval_stage

from helpers_probs import CLASSES, corrections_case


def test_class_metrics_equal_sklearn_and_hand_specificity():
    from sklearn.metrics import f1_score, precision_score, recall_score

    # Fixture confusion matrix (rows true, cols predicted) over 3 classes, plus 2 referrals of class 0
    cm = np.array([[5, 1, 0], [2, 6, 1], [0, 0, 4]])
    y = np.concatenate([np.full(cm[i, j], i) for i in range(3) for j in range(3)] + [np.zeros(2, int)])
    pred = np.concatenate([np.full(cm[i, j], j) for i in range(3) for j in range(3)] + [np.full(2, -1)])
    m = eval_metrics.class_metrics(y, pred, ["A", "B", "C"])
    labels = [0, 1, 2]
    for k, fn in (("precision", precision_score), ("sensitivity", recall_score), ("f1", f1_score)):
        ref = fn(y, pred, labels=labels, average=None, zero_division=0)
        assert [m["per_class"][c][k] for c in "ABC"] == pytest.approx(ref.tolist())
        assert m["overall"][k] == pytest.approx(fn(y, pred, labels=labels, average="macro", zero_division=0))
    # Hand: N = 21. A: tp 5, fp 2, fn 1+2 referred, tn 11 → spec 11/13. B: tp 6, fp 1, fn 3, tn 11 → 11/12.
    # C: tp 4, fp 1, fn 0, tn 16 → 16/17.
    assert [m["per_class"][c]["specificity"] for c in "ABC"] == pytest.approx([11 / 13, 11 / 12, 16 / 17])
    assert m["per_class"]["A"]["accuracy"] == pytest.approx(16 / 21)
    assert m["overall"]["accuracy"] == pytest.approx(15 / 21)
    assert m["overall"]["specificity"] == pytest.approx(np.mean([11 / 13, 11 / 12, 16 / 17]))


def test_ece_and_coverage_risk_hand_computed():
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    y = np.array([0, 1, 0, 1])
    value, bins = eval_metrics.ece(probs, y, bins=10)
    # bins: conf 0.9 (acc 0.5) ×2, conf 0.6 (acc 1) ×2 → 0.5·0.4 + 0.5·0.4
    assert value == pytest.approx(0.4)
    cr = eval_metrics.coverage_risk(np.array([0.9, 0.8, 0.7, 0.6]), np.array([True, False, True, True]))
    assert cr["risk"] == pytest.approx([0, 0.5, 1 / 3, 0.25])


def test_evaluate_run_metrics_json(tmp_path):
    run, _, _ = corrections_case(tmp_path)
    doc = eval_stage.evaluate_run(str(run), EvaluateConfig())
    saved = json.loads((run / "report" / "metrics.json").read_text())
    for c in CLASSES:
        assert set(saved["per_class"][c]) >= {"precision", "sensitivity", "specificity", "f1", "accuracy"}
    assert set(saved["overall"]) >= {"precision", "sensitivity", "specificity", "f1", "accuracy"}
    assert saved["n"] == 7 and saved["coverage"] == pytest.approx(6 / 7)
    # ensemble: right on rows 0, 1, 2, 5; wrong on 3, 4; row 6 referred
    assert saved["overall"]["accuracy"] == pytest.approx(4 / 7)
    assert saved["accuracy_on_accepted"] == pytest.approx(4 / 6)
    assert set(doc["models"]) == {"densenet201", "resnet50", "ensemble"}
    assert doc["models"]["ensemble"]["confusion"]["counts"][2][4] == 1          # Pre referred once
    assert len(doc["table3"]) == 10
    md = (run / "report" / "comparison.md").read_text()
    assert "Table 3" in md and "| 0.7, 0.3 | 0.7 |" in md


def test_evaluate_run_on_s3(tmp_path, s3_bucket):
    """RUN on S3 (moto over HTTP): every report file lands under s3://bucket/run/report/, nowhere else."""
    import boto3

    from conftest import upload_dir

    run, _, _ = corrections_case(tmp_path)
    upload_dir(run, s3_bucket, "run")
    before = _keys(boto3, s3_bucket)
    doc = eval_stage.evaluate_run(f"s3://{s3_bucket}/run", EvaluateConfig())
    new = _keys(boto3, s3_bucket) - before
    assert all(k.startswith("run/report/") for k in new)
    assert {"run/report/metrics.json", "run/report/report.html", "run/report/corrections/fn_to_tp/evil.jpg",
            "run/report/corrections/corrections.csv"} <= new
    assert doc["corrections"]["copied"] == 7


def _keys(boto3, bucket) -> set[str]:
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    return {o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])}
