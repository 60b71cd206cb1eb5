"""Evaluate's guarantee rows and shortcut-control reading (evaluate.metrics), counted by hand on a
constructed test split, and rendered by the report page with the keys it expects."""
import numpy as np
import pytest

from alle_dist.ensemble import weighted
from alle_dist.ensemble.split_probs import SplitProbs
from alle_dist.evaluate import metrics as EV
from alle_dist.evaluate import page
from alle_dist.referral import bounds

CLASSES = ("A", "B", "C", "D")


def case(n: int = 400, odd: int = 8, unsure: int = 20, wrong: int = 10):
    """n test images: the first `odd` score above the image threshold 10; `unsure` have a top score
    0.4 < γ; `wrong` confident images are labelled wrong."""
    y = np.arange(n) % 4
    p = np.full((n, 4), 0.02) + 0.94 * np.eye(4)[y]
    p[odd:odd + unsure] = [0.4, 0.3, 0.2, 0.1]
    bad = np.arange(odd + unsure, odd + unsure + wrong)
    p[bad] = 0.02 + 0.94 * np.eye(4)[(y[bad] + 1) % 4]
    image = np.r_[np.full(odd, 50.0), np.ones(n - odd)]
    data = SplitProbs([f"t{i}" for i in range(n)], y, CLASSES, {"a": p}, {"a": None}, np.full(n, 0.2), image)
    spec = weighted.EnsembleSpec(("a",), CLASSES, (1.0,), 0.7, (1.0,), {"image_score": 10.0})
    return data, spec


def guarantees(alpha_bound=0.0094, val_upper=0.06, set_by="search", sgr_bound=0.04, val_risk_upper=0.03,
               n_val=400):
    need_whole, need_risk = bounds.required_n(0.01, 0.05), bounds.required_n(0.05, 0.05)     # 299, 59
    return {"alpha": 0.01, "confidence": 0.95, "delta": 0.05,
            "image_rule": {"alpha": 0.01, "alpha_bound": alpha_bound, "n_val": 180, "n_oof": 1620},
            "whole_rule_validation": {"upper": val_upper, "n": n_val, "target": 0.01, "n_required": need_whole,
                                      "enough": n_val >= need_whole},
            "gamma_rule": {"set_by": set_by, "sgr": {"target_risk": 0.05, "risk_bound": sgr_bound},
                           "validation": {"upper": val_risk_upper, "accepted": n_val - 20, "target": 0.05,
                                          "n_required": need_risk, "enough": n_val - 20 >= need_risk}}}


def test_rows_count_each_rule_on_the_test_split():
    data, spec = case()
    rows = EV.guarantee_rows(data, spec, guarantees())
    assert [r["name"].split(":")[0] for r in rows] == ["image rule", "whole rule", "γ rule"]
    img, whole, gamma = rows
    assert (img["n"], img["observed"], img["bound"], img["alpha"]) == (400, 8 / 400, 0.0094, 0.01)
    assert img["violated"] == bounds.binomial_exceeds(8, 400, 0.0094, 0.05)
    assert whole["observed"] == 28 / 400 and whole["bound"] == 0.06 and whole["alpha"] is None
    # γ accepts 380 (the odd images too: their top score is confident); 10 of them are wrong
    assert (gamma["n"], gamma["observed"], gamma["alpha"], gamma["bound"]) == (380, 10 / 380, 0.05, 0.03)
    assert "optimistic" in gamma["basis"]
    assert set(img) == {"name", "headline", "alpha", "delta", "bound", "valid", "observed", "test_upper", "n",
                        "violated", "basis"}
    # the headline is always a valid number: the conformal bound, else the test split's own
    assert (img["headline"], img["valid"]) == (0.0094, True)
    assert whole["headline"] == whole["test_upper"] and not whole["valid"] and whole["violated"] is None
    # the test split's own bound: valid for the tuned rule, and above what was observed
    assert whole["test_upper"] == pytest.approx(bounds.binomial_upper(28, 400, 0.05)) and whole["test_upper"] > 28 / 400
    assert gamma["test_upper"] == pytest.approx(bounds.binomial_upper(10, 380, 0.05))


def test_violation_is_the_binomial_test_not_a_raw_comparison():
    data, spec = case(odd=5)                              # observed 1.25 % against a bound of 0.94 %
    img = EV.guarantee_rows(data, spec, guarantees())[0]
    assert img["observed"] > img["bound"] and img["violated"] is False
    data, spec = case(odd=20)                             # 5 %: far above what 0.94 % allows
    assert EV.guarantee_rows(data, spec, guarantees())[0]["violated"] is True
    gamma = EV.guarantee_rows(data, spec, guarantees(set_by="sgr", sgr_bound=0.001))[2]
    assert gamma["basis"] == "SGR" and gamma["bound"] == 0.001 and gamma["violated"] is True


def test_a_validation_split_too_small_states_no_bound_and_nothing_reads_violated():
    """The demo's case: 31 validation images can't bound a 1 % referral rate (that needs 299 even with
    none referred); the whole rule's row says so, headlines the test split's bound, and is never
    "violated" however far the test split lands from the optimistic validation figure."""
    data, spec = case(odd=60)                              # 15 % of the test split referred
    rows = EV.guarantee_rows(data, spec, guarantees(n_val=31, val_upper=0.09, val_risk_upper=0.01))
    whole, gamma = rows[1], rows[2]
    assert whole["bound"] is None and "not enough validation images: n=31, need ≥ 299" in whole["basis"]
    assert gamma["bound"] is None and "need ≥ 59" in gamma["basis"]
    assert all(r["violated"] is None for r in (whole, gamma))
    assert whole["headline"] == pytest.approx(bounds.binomial_upper(int(whole["observed"] * 400), 400, 0.05))
    from alle_dist.evaluate import stage as eval_stage
    lines = eval_stage._guarantee_lines({"guarantees": rows})
    assert not any("VIOLATED" in line for line in lines[1:]) and "not enough validation images" in lines[1]


def test_no_guarantees_recorded_means_no_rows_and_the_page_renders_ours():
    data, spec = case()
    assert EV.guarantee_rows(data, spec, None) == []
    html = page._guarantees({"guarantees": EV.guarantee_rows(data, spec, guarantees())})
    assert "α (error rate allowed)" in html and "δ (risk the bound fails)" in html and "observed rate" in html
    assert "0.0200" in html and "image rule" in html


@pytest.mark.parametrize("right,real,word", [(110, 0.95, "near chance"), (380, 0.95, "far above chance"),
                                             (160, 0.95, "above chance: the background carries")])
def test_control_reading(right, real, word):
    y = np.arange(400) % 4                                  # chance = 0.25
    pred = np.where(np.arange(400) < right, y, (y + 1) % 4)
    c = EV.control_summary("resnet10t", y, pred, real)
    assert c["chance"] == 0.25 and c["accuracy"] == right / 400 and c["reading"].startswith(word)
    assert list(c) == ["backbone", "accuracy", "chance", "real_accuracy", "reading"]
    assert "reading near chance" in page._control({"control": EV.control_summary("r", y, y * 0, real)})


def test_coverage_risk_reports_augrc_beside_aurc():
    rng = np.random.default_rng(0)
    conf, correct = rng.random(300), rng.random(300) < 0.9
    cr = EV.coverage_risk(conf, correct)
    assert cr["augrc"] == bounds.augrc(conf, correct) and cr["augrc"] < cr["aurc"]
