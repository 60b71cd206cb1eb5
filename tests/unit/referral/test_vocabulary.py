"""referral.signals.TABLE owns the referral vocabulary: each signal's config name, its reason, its stored
key; ReferralRule writes both stored forms (ensemble.json, a row's `thresholds`) from it."""
from __future__ import annotations

import numpy as np

from alle_dist import config
from alle_dist.ensemble import weighted
from alle_dist.referral import signals


def test_the_table_names_every_configurable_signal_once():
    names = [s.name for s in signals.TABLE]
    assert sorted(names) == sorted(config.REFERRAL_SIGNALS) and len(set(names)) == len(names)
    assert signals.REASONS[-1] == signals.LOW_CONFIDENCE and set(signals.REASON_WORDS) == set(signals.REASONS)


def test_both_serialisations_use_the_stored_keys():
    rule = signals.ReferralRule(ood_score={"b": 3.0, "a": 2.0}, mask_low=0.01, image_score=40.0, fit={"method": "x"})
    assert rule.to_dict() == {"method": "x", "ood_score": {"b": 3.0, "a": 2.0}, "mask_fraction_low": 0.01,
                              "image_score": 40.0}
    assert rule.thresholds() == {"mask_fraction_low": 0.01, "image_score": 40.0, "a_ood_score": 2.0,
                                 "b_ood_score": 3.0}
    assert signals.ReferralRule.from_dict(rule.to_dict()) == rule


def test_an_ensemble_json_from_before_the_table_still_reads():
    old = {"method": "quantile_union", "ood_score": {}, "mask_fraction": {"low": 0.02, "high": None}, "disagreement": 0.4}
    rule = signals.ReferralRule.from_dict(old)
    assert (rule.mask_low, rule.mask_high, rule.disagreement) == (0.02, None, 0.4)
    assert rule.fit == {"method": "quantile_union"}


def test_reasons_in_words_follow_the_table_order():
    words = signals.reasons_in_words("low_confidence+empty_field")
    assert words == [signals.REASON_WORDS["empty_field"], signals.REASON_WORDS["low_confidence"]]
    assert signals.reasons_in_words(None) == []


def test_gamma_acceptance_is_a_named_array_not_a_reason_string():
    spec = weighted.EnsembleSpec(("a",), ("x", "y"), (1.0,), 0.8,
                                 referral=signals.ReferralRule(mask_low=0.5))
    d = weighted.apply(spec, {"a": np.array([[0.9, 0.1], [0.6, 0.4], [0.95, 0.05]])}, mask_fraction=np.array([0.9, 0.9, 0.1]))
    assert d.gamma_accepted.tolist() == [True, False, True]          # the γ rule alone
    assert d.refer.tolist() == [False, True, True]                     # the mask rule refers the third
    assert weighted.accepted_metrics(np.array([0, 0, 0]), d.label) == {"coverage": 1 / 3, "accuracy_on_accepted": 1.0}
