"""The guarantees as tune fits and evaluate checks them: the image rule's threshold through
signals.signals.fit_image_rule (validation pooled with out-of-fold scores), simulated over many
calibration draws, and evaluate's violation test (signals.bounds.binomial_exceeds)."""
import numpy as np
import pytest
from scipy import stats

from alle_dist.errors import ConfigError
from alle_dist.referral import bounds
from alle_dist.referral import signals
SPLITS = 1000


def allowance(splits: int, delta: float) -> int:
    return int(stats.binom.ppf(0.999, splits, delta))


def test_fit_image_rule_is_the_conformal_threshold_with_its_provenance():
    rng = np.random.default_rng(0)
    val, oof = rng.chisquare(20, 180), rng.chisquare(20, 1620)
    r = signals.fit_image_rule(val, oof, referral_rate=0.01, confidence=0.95)
    fit = bounds.conformal_threshold(np.r_[val, oof], 0.01, 0.05)
    assert r["image_score"] == fit["threshold"] and r["image_reference_n"] == 1800
    prov = r["image_rule"]
    assert prov["n_val"] == 180 and prov["n_oof"] == 1620 and prov["k"] == 1790 == fit["k"]
    assert prov["alpha"] == 0.01 and prov["delta"] == pytest.approx(0.05) and prov["alpha_bound"] <= 0.01
    rule = signals.fit_referral({"a": np.full((180, 2), 0.5)}, None, None, image_score=val, image_reference=oof,
                                 referral_rate=0.01, confidence=0.95)
    assert rule.image_score == fit["threshold"] and rule.fit["image_rule"]["n_oof"] == 1620  # kept as provenance
    legacy = signals.fit_image_rule(val, oof, image_quantile=0.995)           # referral_rate None: the old rule
    assert legacy["image_score"] == np.quantile(np.r_[val, oof], 0.995, method="higher")
    assert legacy["image_rule"]["method"] == "quantile"


def test_too_small_a_calibration_set_is_one_line_naming_n_required():
    with pytest.raises(ConfigError) as e:
        signals.fit_image_rule(np.arange(180.0), 180 + np.arange(50.0), referral_rate=0.01, confidence=0.95)
    msg = str(e.value)
    assert "n_required=299" in msg and "230 " in msg and "\n" not in msg
    smallest = float(msg.split("--referral-rate ")[1].split(" ")[0])             # the fix it names works
    assert signals.fit_image_rule(np.arange(180.0), 180 + np.arange(50.0), referral_rate=smallest)["image_score"] == 229


def test_the_wired_rule_holds_at_delta_and_the_old_quantile_on_validation_does_not():
    """Many draws of 180 validation + 1 620 out-of-fold chi² scores: the true share referred is above
    α = 1 % in at most δ = 5 % of the draws. The naive rule, the 99 % quantile of the 180 validation
    scores, breaks the same promise in about half of them."""
    rng = np.random.default_rng(14)
    bad = naive_bad = 0
    for _ in range(SPLITS):
        val, oof = rng.chisquare(20, 180), rng.chisquare(20, 1620)
        t = signals.fit_image_rule(val, oof, referral_rate=0.01, confidence=0.95)["image_score"]
        bad += stats.chi2.sf(t, 20) > 0.01
        naive = signals.fit_image_rule(val, None, image_quantile=0.99)["image_score"]
        naive_bad += stats.chi2.sf(naive, 20) > 0.01
    assert bad <= allowance(SPLITS, 0.05)
    assert naive_bad > 5 * allowance(SPLITS, 0.05)


def test_the_violation_test_flags_at_delta_where_a_raw_comparison_flags_half():
    """A rule whose true rate is exactly its bound: the binomial test flags ≤ δ of the test splits;
    comparing the observed rate with the bound flags about half. A rule at twice its bound is caught."""
    rng = np.random.default_rng(1)
    n, bound, delta = 971, 0.0094, 0.05
    k = rng.binomial(n, bound, SPLITS)
    flagged = sum(bounds.binomial_exceeds(int(x), n, bound, delta) for x in k)
    assert flagged <= allowance(SPLITS, delta)
    assert np.mean(k / n > bound) > 0.35
    caught = sum(bounds.binomial_exceeds(int(x), n, bound, delta) for x in rng.binomial(n, 2 * bound, 200))
    assert caught > 0.5 * 200
    assert not bounds.binomial_exceeds(0, 10, 0.0, 0.05) and bounds.binomial_exceeds(1, 10, 0.0, 0.05)
    with pytest.raises(ValueError, match="k ≤ n"):
        bounds.binomial_exceeds(11, 10, 0.1, 0.05)
