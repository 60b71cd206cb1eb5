"""The tune stage: temperature fitting, objective and tie rules (no Ray), and the whole stage as real
Ray Tune trials on the local cluster finding the known best of a constructed case."""
from __future__ import annotations

import numpy as np
import pytest
from alle_dist.cli import get_args_parser, run_stage
from alle_dist.config import TuneConfig
from alle_dist.ensemble import split_probs
from alle_dist.ensemble import weighted
from alle_dist.tune import select
from alle_dist.errors import ConfigError
from alle_dist.io import storage

from helpers_probs import BACKBONES, tune_case, write_probs


def test_fit_temperature_recovers_known_temperature():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (4000, 4))
    true_t = 2.5
    p_true = np.exp(logits / true_t)
    p_true /= p_true.sum(1, keepdims=True)
    y = np.array([rng.choice(4, p=row) for row in p_true])
    p_model = np.exp(logits)
    p_model /= p_model.sum(1, keepdims=True)                  # overconfident by T = 2.5
    assert select.fit_temperature(p_model, y) == pytest.approx(true_t, rel=0.1)
    # every validation image right: the NLL falls as T → 0; the fit stops at the lower bound
    assert select.fit_temperature(p_model, p_model.argmax(1)) == pytest.approx(0.5, abs=1e-3)


def test_select_best_floor_then_objective_then_coverage():
    def t(acc, cov, name):
        return {"name": name, "metrics": {"coverage": cov, "accuracy_referral_as_error": acc}}
    trials = [t(0.99, 0.90, "below_floor"), t(0.95, 0.97, "a"), t(0.95, 0.99, "b"), t(0.95, 0.99, "c")]
    assert select.select_best(trials, "accuracy_referral_as_error", 0.95)["name"] == "b"   # tie → coverage, then first
    assert select.select_best(trials, "accuracy_referral_as_error", 0.0)["name"] == "below_floor"


def test_macro_f1_equals_sklearn():
    from sklearn.metrics import f1_score
    rng = np.random.default_rng(0)
    y, label = rng.integers(0, 4, 200), rng.integers(-1, 4, 200)
    label[:5] = 0
    assert select.macro_f1(y, label, 5) == pytest.approx(
        f1_score(y, label, labels=list(range(5)), average="macro", zero_division=0))


def test_decision_metrics_counts_referral_as_error():
    y = np.array([0, 1, 2, 3])
    m = select.decision_metrics(y, np.array([0, -1, 2, 1]), 4)
    assert m["coverage"] == 0.75 and m["accuracy_referral_as_error"] == 0.5
    assert m["accuracy_on_accepted"] == pytest.approx(2 / 3)
    nothing = select.decision_metrics(y, np.full(4, -1), 4)     # nothing accepted: no accuracy, ranked last
    assert nothing["coverage"] == 0.0 and nothing["accuracy_on_accepted"] is None
    assert select.objective_value(nothing, "accuracy_on_accepted", 0.0) < select.objective_value(m, "accuracy_on_accepted", 0.0)


def test_the_coverage_floor_counts_the_image_rule():
    """Trials see the image-statistics rule's referrals (it does not depend on weights or γ), so the
    floor tune.min_coverage holds for the whole rule, not for γ alone."""
    y = np.array([0, 1, 2, 3] * 5)
    p = np.full((20, 4), 0.02) + np.eye(4)[y] * 0.92
    image = np.r_[np.arange(18.0), 100.0, 200.0]              # the last two fields are odd
    data = split_probs.SplitProbs([f"f{i}" for i in range(20)], y, ("A", "B", "C", "D"), {"a": p, "b": p},
                               {}, np.full(20, 0.2), image, image_reference=np.arange(200.0) / 10)
    fixed = select.image_rule_refers(data, TuneConfig(image_quantile=0.99, referral_rate=None))
    assert fixed.tolist() == [False] * 18 + [True, True]
    m = select.evaluate_setting((0.5, 0.5), 0.7, data, (1.0, 1.0), fixed)
    assert m["coverage"] == 0.9 and m["accuracy_referral_as_error"] == 0.9
    assert select.evaluate_setting((0.5, 0.5), 0.7, data, (1.0, 1.0))["coverage"] == 1.0
    assert select.image_rule_refers(data, TuneConfig(referral_signals=("ood_score",))) is None
    assert select.image_rule_refers(data, TuneConfig(referral=False)) is None


def test_config_rejects_unknown_objective():
    with pytest.raises(ConfigError, match="objective"):
        TuneConfig(objective="auc")


def _write_case(run_dir):
    """Validation files of the constructed case; returns (labels, image scores)."""
    y, pa_, pb = tune_case()
    paths = [f"{['Benign', 'Early', 'Pre', 'Pro'][c]}/v{i}.jpg" for i, c in enumerate(y)]
    rng = np.random.default_rng(1)
    image = rng.chisquare(20, len(y))       # one image score per field, the same in both backbones' files
    for b, p in zip(BACKBONES, (pa_, pb)):
        # reversed row order in the second backbone: rows must be joined on path, not position
        order = slice(None) if b == BACKBONES[0] else slice(None, None, -1)
        write_probs(run_dir, b, "val", np.array(paths)[order], y[order], p[order],
                    ood=rng.chisquare(8, len(y))[order], mask=rng.normal(0.2, 0.02, len(y))[order],
                    image=image[order])
        # the test split must never be read: an unreadable file would fail the stage if it were
        storage.write_bytes(str(run_dir / "models" / b / "test_probs.parquet"), b"not parquet")
    return y, image


@pytest.mark.ray
def test_tune_stage_finds_known_best_with_real_trials(ray_local, tmp_path):
    y, image = _write_case(tmp_path)
    (tmp_path / "cfg.yaml").write_text("tune:\n  temperature_scaling: false\n  gamma_range: [0.7, 0.75]\n"
                                       "  min_coverage: 0.0\n  referral_rate: null\n")
    args = get_args_parser("tune").parse_args(["--run-dir", str(tmp_path), "--num-samples", "3",
                                               "--config", str(tmp_path / "cfg.yaml")])
    assert run_stage("tune", args) == 0
    doc = storage.read_json(str(tmp_path / "ensemble.json"))
    assert [t["source"] for t in doc["trials"]] == ["paper_grid"] * 10 + ["random_search"] * 3
    grid = {(tuple(t["weights"]), t["gamma"]) for t in doc["trials"][:10]}
    assert grid == {(w, g) for w in weighted.PAPER_WEIGHTS for g in weighted.PAPER_GAMMAS}
    # The known best: (0.7, 0.3) at γ = 0.7, 55 of 59 right, γ rule alone
    assert doc["selected"]["weights"] == [0.7, 0.3] and doc["selected"]["gamma"] == 0.7
    assert doc["selected"]["metrics"]["accuracy_referral_as_error"] == pytest.approx(55 / 59)
    assert max(t["metrics"]["accuracy_referral_as_error"] for t in doc["trials"]) == pytest.approx(55 / 59)
    spec = weighted.load_spec(str(tmp_path))
    assert spec.weights == (0.7, 0.3) and spec.gamma == 0.7 and spec.temperatures == (1.0, 1.0)
    # referral fitted on validation (the default rule: image statistics; no out-of-fold reference
    # here, so validation alone); the whole rule still covers ≥ referral_coverage of what γ kept
    assert spec.referral.to_dict()["signals"] == ["image_score"] and spec.referral.to_dict()["image_reference_n"] == len(y)
    assert spec.referral.to_dict()["image_score"] == pytest.approx(np.quantile(image, 0.995, method="higher"), rel=1e-6)
    assert doc["metrics"]["validation"]["coverage"] >= doc["selected"]["metrics"]["coverage"] - 0.02
    assert (tmp_path / "tune_config.yaml").exists()


@pytest.mark.ray
@pytest.mark.slow
def test_tune_training_runs_the_train_stage_inside_tune(ray_local, tmp_path, leukemia_dir):
    from test_train import make_run

    run = make_run(tmp_path / "run", leukemia_dir, per_class=4)
    (tmp_path / "cfg.yaml").write_text("train:\n  backbone: test_resnet\n  pretrained: none\n  image_size: 32\n"
                                       "  epochs: 1\n  workers: 1\n")
    args = get_args_parser("tune").parse_args(["--run-dir", run, "--tune-training", "--training-samples", "2",
                                               "--config", str(tmp_path / "cfg.yaml")])
    assert run_stage("tune", args) == 0
    doc = storage.read_json(storage.join(run, "tune_training.json"))
    assert len(doc["trials"]) == 2 and doc["best"] == doc["trials"][0]
    assert doc["trials"][0]["val_loss"] <= doc["trials"][1]["val_loss"]
    assert len({t["lr"] for t in doc["trials"]}) == 2                 # two different sampled settings
    for t in doc["trials"]:                                           # each trial trained a real model
        assert storage.exists(storage.join(t["run_dir"], "models", "test_resnet", "test_probs.parquet"))
