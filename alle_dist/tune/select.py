"""Stage `tune`, the pure core (numpy, no Ray): temperatures, the validation metrics of one ensemble
setting, the choice among the trials, the referral thresholds fitted around the chosen setting, and
what each rule promises (ensemble.json's "guarantees", docs/referral-guarantees.md)."""
from __future__ import annotations

import dataclasses

import numpy as np

from .. import config
from ..ensemble import split_probs, weighted
from ..errors import ConfigError
from ..referral import bounds, signals

OBJECTIVES = config.TUNE_OBJECTIVES


def fit_temperature(probs: np.ndarray, y: np.ndarray, bounds=(0.5, 10.0)) -> float:
    """T minimising the NLL of softmax(log p / T) on labelled rows (1.0 if none).

    The lower bound matters: on a validation split a model gets 100 % right (common here), the NLL
    keeps falling as T → 0, and an unbounded fit would sharpen every output until γ refers nothing."""
    from scipy.optimize import minimize_scalar

    keep = y >= 0
    if not keep.any():
        return 1.0
    p, yy = probs[keep], y[keep]

    def nll(log_t: float) -> float:
        q = weighted.scale(p, float(np.exp(log_t)))
        return float(-np.mean(np.log(np.clip(q[np.arange(len(yy)), yy], 1e-12, 1.0))))

    res = minimize_scalar(nll, bounds=(np.log(bounds[0]), np.log(bounds[1])), method="bounded")
    return float(np.exp(res.x)) if nll(res.x) < nll(0.0) else 1.0


def macro_f1(y: np.ndarray, label: np.ndarray, num_classes: int) -> float:
    """sklearn's f1_score(average="macro", labels=range(C), zero_division=0), from counts: it runs in
    every Tune trial, where importing sklearn would dominate the trial's cost."""
    f1 = []
    for c in range(num_classes):
        tp = np.sum((label == c) & (y == c))
        denom = np.sum(label == c) + np.sum(y == c)
        f1.append(2 * tp / denom if denom else 0.0)
    return float(np.mean(f1))


def decision_metrics(y: np.ndarray, label: np.ndarray, num_classes: int) -> dict:
    """Validation numbers of one ensemble setting (label -1 = referred); a referral counts as an error
    where the name says so. accuracy_on_accepted is None when nothing is accepted."""
    return {
        "n": int(len(y)),
        **weighted.accepted_metrics(y, label),
        "accuracy_referral_as_error": float(np.mean(label == y)) if len(y) else 0.0,
        "macro_f1_referral_as_error": macro_f1(y, label, num_classes),
    }


def objective_value(metrics: dict, objective: str, min_coverage: float) -> tuple:
    """Sort key, larger is better: feasible (coverage floor met) first, then objective, then coverage.
    A setting that accepts nothing has no accuracy on accepted images: it ranks below every other."""
    value = metrics[objective]
    return (metrics["coverage"] >= min_coverage, -1.0 if value is None else value, metrics["coverage"])


def select_best(trials: list[dict], objective: str, min_coverage: float) -> dict:
    # Stable over the trial order: among exact ties the earlier (paper grid first) trial wins.
    return max(trials, key=lambda t: objective_value(t["metrics"], objective, min_coverage))


def evaluate_setting(weights, gamma, data: split_probs.SplitProbs, temperatures, fixed_refer=None) -> dict:
    """Validation metrics of one (weights, γ); `fixed_refer`: images a rule that does not depend on
    them refers anyway (the image-statistics rule), so the coverage floor holds for the whole rule."""
    spec = weighted.EnsembleSpec(tuple(data.probs), data.classes, weights, gamma, temperatures)
    d = weighted.apply(spec, data.probs)
    refer = d.refer if fixed_refer is None else d.refer | fixed_refer
    return decision_metrics(data.y, np.where(refer, -1, d.label), len(data.classes))


def image_rule_refers(data: split_probs.SplitProbs, cfg: config.TuneConfig) -> np.ndarray | None:
    """Which validation images the image-statistics rule refers (None when it is off or can't run)."""
    if not (cfg.referral and "image_score" in cfg.referral_signals):
        return None
    rule = signals.fit_image_rule(data.image_score, data.image_reference, cfg.image_quantile,
                                        cfg.referral_rate, cfg.confidence)
    if not rule:
        return None
    return signals.referral_flags(rule, data.probs, None, None, data.image_score)["odd_image"]


def finish(data: split_probs.SplitProbs, temperatures, best: dict, cfg: config.TuneConfig):
    """The chosen spec with referral thresholds, and its validation metrics under the whole rule."""
    backbones = tuple(data.probs)
    base = weighted.EnsembleSpec(backbones, data.classes, best["weights"], best["gamma"], temperatures)
    low_conf = weighted.apply(base, data.probs).refer
    scaled = {b: weighted.scale(data.probs[b], t) for b, t in zip(backbones, base.temperatures)}
    referral = signals.fit_referral(scaled, data.ood, data.mask_fraction, cfg.referral_coverage,
                                     already_referred=low_conf, signals=cfg.referral_signals,
                                     image_score=data.image_score, image_reference=data.image_reference,
                                     image_quantile=cfg.image_quantile, referral_rate=cfg.referral_rate,
                                     confidence=cfg.confidence) if cfg.referral else signals.ReferralRule()
    spec = weighted.EnsembleSpec(backbones, data.classes, best["weights"], best["gamma"], temperatures, referral)
    d = split_probs.apply_split(spec, data)
    return spec, decision_metrics(data.y, d.label, len(data.classes))


def sgr_gamma(data: split_probs.SplitProbs, temperatures, best: dict, cfg: config.TuneConfig) -> dict:
    """`best` with γ replaced by SGR's threshold for `risk_target` on validation (same weights)."""
    fit = _sgr(data, temperatures, best["weights"], cfg)
    if not fit["feasible"]:
        raise ConfigError(f"tune.gamma_by_sgr: no γ certifies an error rate ≤ {cfg.risk_target} among accepted "
                          f"images at confidence {cfg.confidence} on {fit['n']} validation images (the best "
                          f"bound reached is {fit['risk_bound']:.3f}); raise --selective-risk or drop it")
    return {**best, "gamma": fit["threshold"], "source": f"{best['source']}+sgr"}


def _sgr(data, temperatures, weights, cfg) -> dict:
    spec = weighted.EnsembleSpec(tuple(data.probs), data.classes, weights, 0.0, temperatures)
    d = weighted.apply(spec, data.probs)
    return bounds.selective_risk_bound(d.confidence, d.probs.argmax(1) == data.y, cfg.risk_target,
                                       1 - cfg.confidence)


def guarantees(data: split_probs.SplitProbs, spec: weighted.EnsembleSpec, cfg: config.TuneConfig,
               gamma_by_sgr: bool = False) -> dict:
    """The "guarantees" of ensemble.json: the image rule's conformal fit (its provenance in the rule),
    the whole rule's validation referral rate with its Clopper-Pearson bound, and the γ rule's
    selective risk (SGR at `risk_target`, and the chosen γ's bound on validation). The two validation
    bounds are optimistic (γ and the thresholds were fitted on these images) and each records
    `n_required`: the images a bound at its target needs even with no event, so a split too small to
    state one says so (evaluate then states none, only the test split's)."""
    delta = 1 - cfg.confidence
    d = split_probs.apply_split(spec, data)
    errors = d.probs.argmax(1) != data.y
    whole = _with_target(bounds.rate_upper_bound(d.refer, delta), "n", 1 - cfg.referral_coverage, delta)
    risk = _with_target(bounds.selective_risk_upper(errors, d.gamma_accepted, delta), "accepted", cfg.risk_target, delta)
    return {
        "alpha": cfg.referral_rate, "confidence": cfg.confidence, "delta": delta,
        "image_rule": spec.referral.fit.get("image_rule"),
        "whole_rule_validation": {**whole, "note": "optimistic: γ and the thresholds were fitted on these images"},
        "gamma_rule": {"gamma": spec.gamma, "set_by": "sgr" if gamma_by_sgr else "search",
                       "sgr": _sgr(data, spec.temperatures, spec.weights, cfg), "validation": risk},
    }


def _with_target(fit: dict, counted: str, target: float, delta: float) -> dict:
    """A validation bound with the target it is meant for and the images (`counted`: all, or the
    accepted ones) a bound at that target needs: (1-target)^n ≤ δ (referral.bounds.required_n)."""
    need = bounds.required_n(target, delta) if 0 < target < 1 else None
    return {**fit, "target": float(target), "n_required": need,
            "enough": need is not None and fit[counted] >= need}


def too_few_for_a_bound(fit: dict) -> bool:
    """Whether a validation bound `_with_target` recorded had too few images for its target, so no
    bound is stated (files from before it record no target: False, their figure stands as it was)."""
    return fit.get("n_required") is not None and not fit.get("enough")


def supported_rate(cfg: config.TuneConfig, data: split_probs.SplitProbs) -> tuple[config.TuneConfig, str | None]:
    """For a referral rate that was not chosen explicitly: (cfg, None) when the calibration set supports
    it, else cfg with the smallest α it supports and a line saying so (ensemble.json records it)."""
    if cfg.referral_rate is None or image_rule_refers(data, dataclasses.replace(cfg, referral_rate=None)) is None:
        return cfg, None
    n = signals.calibration_size(data.image_score, data.image_reference)
    need = bounds.required_n(cfg.referral_rate, 1 - cfg.confidence)
    if n >= need:
        return cfg, None
    alpha = signals.smallest_rate(n, cfg.confidence)
    note = (f"the default referral rate {cfg.referral_rate} needs {need} calibration images at confidence "
            f"{cfg.confidence}; this run has {n}, so the image rule guarantees the smallest rate they support, "
            f"{alpha} (--referral-rate sets it)")
    return dataclasses.replace(cfg, referral_rate=alpha), note
