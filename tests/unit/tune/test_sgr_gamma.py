"""tune's Ray-free guarantee pieces: γ set by SGR and the "guarantees" record of ensemble.json."""
import numpy as np
import pytest

from alle_dist.config import TuneConfig
from alle_dist.ensemble import weighted
from alle_dist.tune import select
from alle_dist.tune import stage as tune_stage
from alle_dist.ensemble.split_probs import SplitProbs
from alle_dist.errors import ConfigError
from alle_dist.referral import bounds
from alle_dist.referral import signals
def validation(n=400, seed=0):
    """Confidence that ranks errors low: the lower the top score, the likelier the label is wrong."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 4
    top = rng.uniform(0.3, 1.0, n)
    wrong = rng.random(n) < 0.8 * (1 - top) ** 2
    label = np.where(wrong, (y + 1) % 4, y)
    p = np.tile(((1 - top) / 3)[:, None], (1, 4))
    p[np.arange(n), label] = top
    return SplitProbs([f"v{i}" for i in range(n)], y, ("A", "B", "C", "D"), {"a": p}, {"a": None},
                      np.full(n, 0.2), rng.chisquare(20, n), image_reference=rng.chisquare(20, 1600))


def test_gamma_by_sgr_is_sgrs_threshold_and_an_impossible_target_is_one_line():
    data = validation()
    cfg = TuneConfig(backbones=("a",), risk_target=0.1, gamma_by_sgr=True)
    best = select.sgr_gamma(data, (1.0,), {"weights": [1.0], "gamma": 0.3, "source": "paper_grid"}, cfg)
    p = data.probs["a"]
    fit = bounds.selective_risk_bound(p.max(1), p.argmax(1) == data.y, 0.1, 0.05)
    assert fit["feasible"] and fit["coverage"] > 0.5
    assert best["gamma"] == fit["threshold"] and best["source"] == "paper_grid+sgr"
    with pytest.raises(ConfigError, match="no γ certifies") as e:
        select.sgr_gamma(data, (1.0,), best, TuneConfig(backbones=("a",), risk_target=0.001))
    assert "\n" not in str(e.value)


def test_guarantees_record_the_calibration_sizes_and_the_bounds():
    data, cfg = validation(), TuneConfig(backbones=("a",))
    rule = signals.fit_referral({"a": data.probs["a"]}, None, None, image_score=data.image_score,
                                 image_reference=data.image_reference, referral_rate=cfg.referral_rate,
                                 confidence=cfg.confidence)
    spec = weighted.EnsembleSpec(("a",), data.classes, (1.0,), 0.5, (1.0,), rule)
    g = select.guarantees(data, spec, cfg)
    assert (g["alpha"], g["confidence"]) == (0.01, 0.95) and g["delta"] == pytest.approx(0.05)
    assert g["image_rule"]["n_val"] == 400 and g["image_rule"]["n_oof"] == 1600
    assert g["image_rule"]["method"] == "order_statistic_calibration_conditional"
    refer = weighted.apply(spec, data.probs, image_score=data.image_score).refer
    assert g["whole_rule_validation"]["referred"] == int(refer.sum())
    assert g["gamma_rule"]["set_by"] == "search" and g["gamma_rule"]["sgr"]["target_risk"] == 0.05
    assert "image rule refers ≤ 0.0" in tune_stage.guarantee_line(g)
