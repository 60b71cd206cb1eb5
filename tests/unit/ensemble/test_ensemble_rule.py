"""The weighted threshold ensemble and the referral rule, on hand-computed cases (no Ray)."""
from __future__ import annotations

import numpy as np
import pytest
from alle_dist.ensemble import weighted
from alle_dist.errors import ConfigError
from alle_dist.referral import signals
A = np.array([[0.6, 0.4], [0.5, 0.5], [0.2, 0.8], [0.9, 0.1]])
B = np.array([[0.2, 0.8], [0.5, 0.5], [0.1, 0.9], [0.7, 0.3]])


def spec(weights=(0.5, 0.5), gamma=0.7, temperatures=(), referral=None):
    return weighted.EnsembleSpec(("a", "b"), ("X", "Y"), weights, gamma, temperatures, referral or {})


def test_combine_hand_computed():
    # 0.7·A + 0.3·B
    got = weighted.combine([A, B], [0.7, 0.3])
    np.testing.assert_allclose(got, [[0.48, 0.52], [0.5, 0.5], [0.17, 0.83], [0.84, 0.16]])


def test_ties_go_to_lowest_class_and_gamma_boundary_is_confident():
    d = weighted.apply(spec((0.5, 0.5), gamma=0.5), {"a": A, "b": B})
    # row 1 is a 0.5 / 0.5 tie: class 0, and 0.5 ≥ γ = 0.5 is confident (not referred)
    assert d.label.tolist() == [1, 0, 1, 0]
    assert d.refer.tolist() == [False, False, False, False]
    np.testing.assert_allclose(d.confidence, [0.6, 0.5, 0.85, 0.8])
    # γ exactly 0.8 at row 3 (0.5·0.9 + 0.5·0.7 = 0.8): accepted; 0.6, 0.5 below: referred
    d = weighted.apply(spec((0.5, 0.5), gamma=0.8), {"a": A, "b": B})
    assert d.refer.tolist() == [True, True, False, False]
    assert d.label.tolist() == [-1, -1, 1, 0]
    assert d.reason == ["low_confidence", "low_confidence", None, None]
    # 0.3·0.4 + 0.7·0.8 = 0.68 (0.6799999999999999 in floats) at γ = 0.68: still confident
    d = weighted.apply(spec((0.3, 0.7), gamma=0.68), {"a": A[:1, ::-1], "b": B[:1, ::-1]})
    assert d.refer.tolist() == [False] and d.label.tolist() == [0]


@pytest.mark.parametrize("w", [(0.6, 0.6), (1.2, -0.2), (0.5,), (float("nan"), 1.0), (0.3, 0.3)])
def test_weights_off_the_simplex_are_rejected(w):
    with pytest.raises(ConfigError, match="weight"):
        weighted.combine([A, B], w)
    with pytest.raises(ConfigError, match="weight"):
        spec(w)


def test_bad_gamma_and_temperature_rejected():
    with pytest.raises(ConfigError, match="gamma"):
        spec(gamma=1.5)
    with pytest.raises(ConfigError, match="temperatures"):
        spec(temperatures=(1.0, 0.0))


def test_temperature_scaling_on_probabilities():
    p = np.array([[0.8, 0.2]])
    # softmax(log p / 2) = sqrt(p) normalised
    np.testing.assert_allclose(weighted.scale(p, 2.0), [[2 / 3, 1 / 3]])
    np.testing.assert_allclose(weighted.scale(p, 0.5), [[0.64 / 0.68, 0.04 / 0.68]])
    d = weighted.apply(spec((1.0, 0.0), gamma=0.7, temperatures=(2.0, 1.0)), {"a": p, "b": p})
    assert d.refer.tolist() == [True]  # 0.8 → 0.667 after T = 2


def test_spec_round_trip(tmp_path):
    s = spec((0.7, 0.3), 0.7, (1.5, 0.8), {"ood_score": {"a": 3.0}})
    weighted.save_spec(str(tmp_path), s, objective="x", trials=[{"gamma": 0.7}])
    assert weighted.load_spec(str(tmp_path)) == s
    with pytest.raises(Exception, match="tune"):
        weighted.load_spec(str(tmp_path / "missing"))


def test_referral_rules_and_reasons():
    probs = {"a": np.array([[0.9, 0.1]] * 5), "b": np.array([[0.9, 0.1]] * 4 + [[0.1, 0.9]])}
    ood = {"a": np.array([1.0, 9.0, 1.0, 1.0, 1.0]), "b": np.array([1.0, 1.0, 1.0, np.nan, 1.0])}
    mask = np.array([0.2, 0.2, 0.001, 0.2, 0.2])
    referral = {"ood_score": {"a": 5.0, "b": 5.0}, "mask_fraction": {"low": 0.01, "high": 0.9},
                "disagreement": 0.5}
    d = weighted.apply(spec((0.5, 0.5), 0.6, referral=referral), probs, ood, mask)
    assert d.reason == [None, "unfamiliar", "empty_field", "unfamiliar", "disagreement+low_confidence"]
    assert d.label.tolist() == [0, -1, -1, -1, -1]
    # the image-statistics rule: above the threshold or NaN is odd; no scores given, it stays off
    img = np.array([1.0, 1.0, 1.0, 1.0, 7.0])
    d = weighted.apply(spec((0.5, 0.5), 0.0, referral={"image_score": 5.0}), probs, None, None, img)
    assert d.reason == [None] * 4 + ["odd_image"]
    d = weighted.apply(spec((0.5, 0.5), 0.0, referral={"image_score": 5.0}), probs, None, None, np.r_[img[:4], np.nan])
    assert d.reason[-1] == "odd_image"
    assert not weighted.apply(spec((0.5, 0.5), 0.0, referral={"image_score": 5.0}), probs).refer.any()


def test_fit_referral_keeps_target_coverage_and_refers_constructed_ood():
    """Constructed OOD case: in-distribution signals ~ N(0,1) features, mask ~ 0.2; OOD images are far
    in one signal each (distance, blank field, disagreement). Fitted on ID only; ID coverage ≥ target."""
    rng = np.random.default_rng(0)
    n = 400
    p = rng.dirichlet([8, 1], n)
    id_probs = {"a": p, "b": np.clip(p + rng.normal(0, 0.02, p.shape), 1e-3, 1)}
    id_probs["b"] /= id_probs["b"].sum(1, keepdims=True)
    id_ood = {"a": rng.chisquare(8, n), "b": rng.chisquare(8, n)}
    id_mask = rng.normal(0.2, 0.03, n).clip(0.05, 0.5)
    r = signals.fit_referral(id_probs, id_ood, id_mask, target_coverage=0.98, signals=signals.SIGNALS)
    s = spec((0.5, 0.5), 0.0, referral=r)
    d_id = weighted.apply(s, id_probs, id_ood, id_mask)
    assert 0.98 <= 1 - d_id.refer.mean() < 0.995            # target met, and not trivially everything
    m = 30
    q = rng.dirichlet([8, 1], m)
    ood_probs = {"a": q, "b": q[:, ::-1].copy()}            # the two networks disagree...
    ood_probs["b"][:10] = q[:10]                            # ...except on the first 10
    ood_ood = {"a": np.r_[rng.chisquare(8, 10) + 60, rng.chisquare(8, 20)], "b": rng.chisquare(8, m)}
    ood_mask = np.r_[np.full(10, 0.2), np.full(10, 0.0), np.full(10, 0.2)]
    d = weighted.apply(s, ood_probs, ood_ood, ood_mask)
    assert d.refer.all()
    assert all("unfamiliar" in x for x in d.reason[:10]) and all("empty_field" in x for x in d.reason[10:20])


def test_default_rule_is_the_image_statistics_at_a_pooled_quantile():
    rng = np.random.default_rng(1)
    p = rng.dirichlet([8, 1], 200)
    img, reference = rng.chisquare(20, 200), rng.chisquare(20, 1800)
    r = signals.fit_referral({"a": p, "b": p[:, ::-1]}, {"a": rng.chisquare(8, 200)}, rng.uniform(0.1, 0.3, 200), 0.99,
                              image_score=img, image_reference=reference).to_dict()
    assert r["signals"] == ["image_score"] and r["quantile"] is None
    assert r["ood_score"] == {} and "mask_fraction_low" not in r and "disagreement" not in r
    # the threshold: the 99.5 % quantile of validation pooled with the training fields' out-of-fold scores
    assert r["image_score"] == np.quantile(np.r_[img, reference], 0.995, method="higher")
    assert r["image_reference_n"] == 2000 and r["val_coverage"] == pytest.approx(1 - (img > r["image_score"]).mean())
    # without a reference, validation alone; a rule without any image scores refers nothing
    assert signals.fit_referral({"a": p}, None, None, image_score=img, image_quantile=1.0).to_dict()["image_score"] == img.max()
    assert signals.fit_referral({"a": p}, None, None).to_dict()["val_coverage"] == 1.0


def test_union_rule_shares_the_budget_left_after_gamma_and_the_image_rule():
    rng = np.random.default_rng(2)
    p = rng.dirichlet([8, 1], 200)
    img = rng.chisquare(20, 200)
    sig = ("ood_score", "mask_low", "image_score")
    r = signals.fit_referral({"a": p}, {"a": rng.chisquare(8, 200)}, rng.uniform(0.1, 0.3, 200), 0.97,
                              signals=sig, image_score=img, image_quantile=0.99).to_dict()
    assert "mask_fraction_high" not in r and r["mask_fraction_low"] > 0.1
    assert r["ood_score"]["a"] > 0 and 0.5 < r["quantile"] < 1.0
    assert 0.97 <= r["val_coverage"] < 0.98
    # already_referred eats the budget: the most lenient thresholds come back
    r2 = signals.fit_referral({"a": p}, {"a": rng.chisquare(8, 200)}, rng.uniform(0.1, 0.3, 200), 0.99,
                        already_referred=np.r_[np.ones(5, bool), np.zeros(195, bool)], signals=sig[:2]).to_dict()
    assert r2["quantile"] == 1.0 and r2["val_coverage"] == pytest.approx(0.975)
    with pytest.raises(ConfigError, match="signals"):
        signals.fit_referral({"a": p}, None, None, 0.99, signals=("energy",))
