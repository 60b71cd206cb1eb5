"""The audit's numbers (pure) against direct computation: exact intervals equal scipy's Clopper-Pearson,
p-values scipy's binomial test, verdicts the test evaluate uses; errors among accepted counted by hand
(other cell / unusable as errors, shown apart); referred outcomes; per-run drift."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from alle_dist import schema
from alle_dist.audit import core
from alle_dist.classify import drift
from alle_dist.referral import bounds

CLASSES = ("Benign", "Early", "Pre", "Pro")


@pytest.mark.parametrize("k, n", [(0, 1), (0, 40), (3, 40), (20, 40), (40, 40), (7, 13)])
@pytest.mark.parametrize("confidence", [0.9, 0.95])
def test_interval_is_scipys_exact_clopper_pearson(k, n, confidence):
    got = core.interval(k, n, confidence)
    ci = binomtest(k, n).proportion_ci(confidence_level=confidence, method="exact")
    assert got["rate"] == k / n and got["n"] == n
    assert got["low"] == pytest.approx(ci.low, abs=1e-9) and got["high"] == pytest.approx(ci.high, abs=1e-9)
    assert core.interval(0, 0, confidence)["rate"] is None


def test_against_a_bound_p_value_and_verdict_agree():
    for k, n, b in ((3, 40, 0.05), (9, 40, 0.05), (0, 10, 0.01), (5, 20, 0.1)):
        got = core.against(k, n, b, 0.05)
        p = binomtest(k, n, b, alternative="greater").pvalue
        assert got["p_value"] == pytest.approx(p)
        assert got["verdict"] == (core.ABOVE if p < 0.05 else core.CONSISTENT)
        assert (got["verdict"] == core.ABOVE) == bounds.binomial_exceeds(k, n, b, 0.05)
    assert core.against(3, 0, 0.05, 0.05) is None and core.against(3, 10, None, 0.05) is None


def audit_rows(rng, n=200):
    given = rng.choice(CLASSES, n)
    truth = np.where(rng.random(n) < 0.85, given, rng.choice(list(CLASSES) + ["other_cell", "unusable"], n))
    return [{"kind": schema.AUDIT, "label": str(t), "model_label": str(g), "predicted_class": str(g),
             "refer_reason": None} for t, g in zip(truth, given)]


GUARANTEES = {"delta": 0.05, "image_rule": {"alpha_bound": 0.02, "delta": 0.05},
              "gamma_rule": {"set_by": "search", "validation": {"upper": 0.08}, "sgr": {"risk_bound": 0.06}}}


def test_accepted_errors_against_direct_computation():
    rows = audit_rows(np.random.default_rng(0))
    got = core.accepted_errors(rows, CLASSES, GUARANTEES, 0.95)
    wrong = [r for r in rows if r["label"] != r["model_label"]]
    assert (got["k"], got["n"]) == (len(wrong), len(rows))
    assert got[schema.OTHER_CELL] == sum(r["label"] == "other_cell" for r in wrong)
    assert got[schema.UNUSABLE] == sum(r["label"] == "unusable" for r in wrong)
    assert got["wrong_class"]["k"] == len(wrong) - got[schema.OTHER_CELL] - got[schema.UNUSABLE]
    for c in CLASSES:
        mine = [r for r in rows if r["model_label"] == c]
        assert (got["by_class"][c]["k"], got["by_class"][c]["n"]) == (sum(r["label"] != c for r in mine), len(mine))
    assert got["stated"]["bound"] == 0.08 and got["basis"].startswith("validation")
    p = binomtest(len(wrong), len(rows), 0.08, alternative="greater").pvalue
    assert got["stated"]["p_value"] == pytest.approx(p) and got["stated"]["verdict"] == core.ABOVE   # ~15 % > 8 %
    sgr = {**GUARANTEES, "gamma_rule": {**GUARANTEES["gamma_rule"], "set_by": "sgr"}}
    assert core.gamma_bound(sgr) == (0.06, "SGR") and core.gamma_bound(None) == (None, "validation Clopper-Pearson (optimistic)")


def test_the_audit_holds_against_the_bound_the_report_leads_with():
    """evaluate's test-split bound (valid) wins over tune's optimistic validation figure; SGR's
    certified bound wins over both; a validation split too small for a bound and no report: none."""
    tested = {"name": "γ rule", "test_upper": 0.0977, "n": 170, "valid": False}
    bound, basis = core.gamma_bound(GUARANTEES, tested)
    assert bound == 0.0977 and basis == "evaluate's test-split Clopper-Pearson, n=170"
    sgr = {**GUARANTEES, "gamma_rule": {**GUARANTEES["gamma_rule"], "set_by": "sgr"}}
    assert core.gamma_bound(sgr, tested) == (0.06, "SGR")
    small = {**GUARANTEES, "gamma_rule": {"set_by": "search", "validation": {
        "upper": 0.144, "accepted": 31, "n_required": 59, "enough": False}}}
    bound, basis = core.gamma_bound(small)
    assert bound is None and "not enough validation images (n=31, need ≥ 59)" in basis
    rows = audit_rows(np.random.default_rng(0))
    got = core.accepted_errors(rows, CLASSES, small, 0.95)
    assert got["stated"] is None and got["basis"] == basis
    assert core.accepted_errors(rows, CLASSES, small, 0.95, tested)["stated"]["bound"] == 0.0977


def test_the_interval_covers_the_true_rate_at_its_level():
    """Audit samples drawn from a population with a known error rate: the 95 % interval covers it in
    at least ~95 % of draws (Clopper-Pearson is conservative)."""
    rng = np.random.default_rng(1)
    covered = 0
    for _ in range(400):
        errors = rng.random(60) < 0.12
        r = core.interval(int(errors.sum()), 60, 0.95)
        covered += r["low"] <= 0.12 <= r["high"]
    assert covered / 400 >= 0.94


def test_referred_outcomes_by_class_argmax_and_reason():
    rows = [{"kind": schema.REFERRED, "label": lab, "predicted_class": pred, "refer_reason": why, "model_label": "refer"}
            for lab, pred, why in (("Pre", "Pre", "low_confidence"), ("Pre", "Pro", "low_confidence+odd_image"),
                                   ("other_cell", "Pro", "odd_image"), ("unusable", "Early", "empty_field"),
                                   ("Benign", "Benign", "odd_image"))]
    got = core.referred_outcomes(rows, CLASSES)
    assert got["n"] == 5 and got["argmax_right"] == 2
    assert got["classes"]["Pre"] == {"n": 2, "argmax_right": 1} and got["classes"]["Benign"] == {"n": 1, "argmax_right": 1}
    assert got[schema.OTHER_CELL] == 1 and got[schema.UNUSABLE] == 1
    assert got["by_reason"]["odd_image"] == {"argmax_wrong": 1, "other_cell": 1, "argmax_right": 1}
    assert got["by_reason"]["empty_field"] == {"unusable": 1}


def test_run_rates_flag_drift_with_the_rules_own_test():
    runs = [{"run_id": "a", "referred": 2, "n": 500}, {"run_id": "b", "referred": 60, "n": 500},
            {"run_id": "c", "referred": 0, "n": 0}]
    got = core.run_rates(runs, GUARANTEES["image_rule"], 0.95)
    assert [r["drift"] for r in got] == [False, True, None]
    assert got[1]["p_value"] == pytest.approx(binomtest(60, 500, 0.02, alternative="greater").pvalue)
    assert got[1]["low"] < 0.12 < got[1]["high"]
    assert core.run_rates(runs[:1], {"method": "quantile"}, 0.95)[0]["drift"] is None   # no stated bound


def test_drift_counts_odd_image_referrals_among_one_runs_ok_rows_and_warns():
    import pyarrow as pa

    batch = pa.record_batch({"run_id": ["r", "r", "r", "s", "r"], "status": ["ok", "ok", "error", "ok", "ok"],
                             "refer_reason": ["odd_image", "low_confidence+odd_image", None, "odd_image", None]})
    assert drift.count([batch], "r") == (2, 3) and drift.count([batch]) == (3, 4)
    d = drift.assess(30, 200, {"alpha_bound": 0.011, "delta": 0.05})
    assert d["drift"] and "another stain, microscope or lab" in drift.warning(d) and "review build" in drift.warning(d)
    assert drift.warning(drift.assess(2, 200, {"alpha_bound": 0.011, "delta": 0.05})) is None
