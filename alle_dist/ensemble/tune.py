"""Stage `tune`: Ray Tune over the ensemble weights and γ on the validation probabilities, plus referral thresholds.

Core (Ray-free): `fit_temperature`, `decision_metrics`, `objective_value`, `select_best`, `finish`.
Ray shell: every candidate (the paper's grid and a random search) is a real Ray Tune trial over the
cached validation arrays (`tune.with_parameters` puts them in the object store once). The test split
is never read here. Writes RUN/ensemble.json and RUN/tune_config.yaml.

Order: (1) a temperature per backbone (NLL on validation); (2) weights × γ by the objective, the γ
rule alone counting against the coverage floor (with `gamma_by_sgr`, γ is then SGR's threshold for
`risk_target`); (3) the unfamiliar-image thresholds: the image rule's conformal threshold for
(`referral_rate`, `confidence`), any other signal fitted so that the whole rule (γ + unfamiliar) still
covers `referral_coverage` of the validation images; (4) `guarantees`: what each rule promises,
recorded in ensemble.json (docs/referral-guarantees.md).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import shutil
import tempfile
import uuid

import numpy as np

from .. import config as config_mod
from ..errors import ConfigError, UsageError
from ..referral import bounds
from ..referral import rule as referral_rule
from ..rundir import RunDir
from ..runtime import secrets_hidden_from_ray
from . import lineage
from . import probs as probs_mod
from . import rule as ensemble
from .rule import PAPER_GAMMAS, PAPER_WEIGHTS

log = logging.getLogger("alle_dist.tune")

OBJECTIVES = config_mod.TUNE_OBJECTIVES


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
        q = ensemble.scale(p, float(np.exp(log_t)))
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


def decision_metrics(y: np.ndarray, label: np.ndarray, refer: np.ndarray, num_classes: int) -> dict:
    """Validation numbers of one ensemble setting; a referral counts as an error where it says so."""
    accepted = ~refer
    n_acc = int(accepted.sum())
    return {
        "n": int(len(y)),
        "coverage": float(accepted.mean()) if len(y) else 0.0,
        "accuracy_referral_as_error": float(np.mean(label == y)) if len(y) else 0.0,
        "accuracy_on_accepted": float(np.mean(label[accepted] == y[accepted])) if n_acc else 0.0,
        "macro_f1_referral_as_error": macro_f1(y, label, num_classes),
    }


def objective_value(metrics: dict, objective: str, min_coverage: float) -> tuple:
    """Sort key, larger is better: feasible (coverage floor met) first, then objective, then coverage."""
    return (metrics["coverage"] >= min_coverage, metrics[objective], metrics["coverage"])


def select_best(trials: list[dict], objective: str, min_coverage: float) -> dict:
    # Stable over the trial order: among exact ties the earlier (paper grid first) trial wins.
    return max(trials, key=lambda t: objective_value(t["metrics"], objective, min_coverage))


def evaluate_setting(weights, gamma, data: probs_mod.SplitProbs, temperatures, fixed_refer=None) -> dict:
    """Validation metrics of one (weights, γ); `fixed_refer`: images a rule that does not depend on
    them refers anyway (the image-statistics rule), so the coverage floor holds for the whole rule."""
    spec = ensemble.EnsembleSpec(tuple(data.probs), data.classes, weights, gamma, temperatures)
    d = ensemble.apply(spec, data.probs)
    refer = d.refer if fixed_refer is None else d.refer | fixed_refer
    return decision_metrics(data.y, np.where(refer, -1, d.label), refer, len(data.classes))


def image_rule_refers(data: probs_mod.SplitProbs, cfg: config_mod.TuneConfig) -> np.ndarray | None:
    """Which validation images the image-statistics rule refers (None when it is off or can't run)."""
    if not (cfg.referral and "image_score" in cfg.referral_signals):
        return None
    rule = referral_rule.fit_image_rule(data.image_score, data.image_reference, cfg.image_quantile,
                                        cfg.referral_rate, cfg.confidence)
    if not rule:
        return None
    return referral_rule.referral_flags(rule, data.probs, None, None, data.image_score)["odd_image"]


def _trial(config: dict, data: probs_mod.SplitProbs, temperatures, fixed_refer=None) -> dict:
    """One Ray Tune trial: weights either given (grid) or from raw uniform draws (search)."""
    point = config["point"]
    if "weights" in point:
        w, gamma, source = np.asarray(point["weights"], np.float64), point["gamma"], "paper_grid"
    else:
        w = np.asarray([config[f"w{i}"] for i in range(len(data.probs))], np.float64) + 1e-9
        w, gamma, source = w / w.sum(), config["gamma"], "random_search"
    w = tuple(np.round(w, 6) / np.round(w, 6).sum())
    return {**evaluate_setting(w, float(gamma), data, temperatures, fixed_refer),
            "weights": list(w), "gamma": float(gamma), "source": source, "index": point["i"]}


def search(data: probs_mod.SplitProbs, temperatures, cfg: config_mod.TuneConfig) -> list[dict]:
    """Every trial's result: the paper's grid (two backbones) then `num_samples` random settings.

    One Tuner run (its fixed cost is seconds): the grid points and `num_samples` "random" entries go
    through one grid_search; BasicVariantGenerator draws fresh uniform weights and γ for each entry,
    which only the random entries (no "weights") use.
    """
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    grid = ([{"weights": list(w), "gamma": g} for w in PAPER_WEIGHTS for g in PAPER_GAMMAS]
            if len(data.probs) == 2 else [])
    points = [{"i": i, **g} for i, g in enumerate(grid + [{}] * cfg.num_samples)]
    if not points:
        raise config_mod.ConfigError(f"tune.num_samples=0 with {len(data.probs)} backbone(s): nothing to try "
                                     "(the paper's grid needs two); set num_samples > 0")
    space = {"point": tune.grid_search(points),
             "gamma": tune.uniform(*cfg.gamma_range)}
    space.update({f"w{i}": tune.uniform(0.0, 1.0) for i in range(len(data.probs))})
    trainable = tune.with_resources(tune.with_parameters(_trial, data=data, temperatures=temperatures,
                                                         fixed_refer=image_rule_refers(data, cfg)), {"cpu": 1})
    tmp = tempfile.mkdtemp(prefix="alle-dist-tune-")
    try:
        tuner = tune.Tuner(
            trainable, param_space=space,
            # Tune ignores TuneConfig(max_concurrent_trials) with a BasicVariantGenerator (it warns so):
            # the generator limits concurrency itself.
            tune_config=tune.TuneConfig(search_alg=BasicVariantGenerator(
                random_state=cfg.seed, max_concurrent=cfg.max_concurrent_trials)),
            run_config=tune.RunConfig(name=f"ensemble-{uuid.uuid4().hex[:8]}", storage_path=tmp, verbose=0,
                                      callbacks=[trial_progress(len(points), cfg.objective)]),
        )
        with secrets_hidden_from_ray():
            results = tuner.fit()
        errors = [r.error for r in results if r.error]
        if errors:
            raise RuntimeError(f"{len(errors)} tune trial(s) failed; first: {errors[0]}")
        metrics = sorted((r.metrics for r in results), key=lambda m: m["index"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [_keep(m, m["source"]) for m in metrics]


def trial_progress(total: int, objective: str):
    """A Tune callback (it runs on the driver): trials done / total and the best objective so far,
    as a bar on a terminal or a line every few seconds in a log (alle_dist.progress)."""
    from ray.tune import Callback

    from ..progress import Progress

    class TrialProgress(Callback):
        def __init__(self):
            self.bar, self.best = Progress("tune: trials", total, unit="trial", interval_s=5), None

        def on_trial_complete(self, iteration, trials, trial, **info):
            value = (trial.last_result or {}).get(objective)
            self.best = value if self.best is None or (value is not None and value > self.best) else self.best
            self.bar.update(1, postfix=f"best {objective} so far {self.best:.4f}" if self.best is not None else None)

        def on_experiment_end(self, trials, **info):
            self.bar.close()

    return TrialProgress()


def _keep(result: dict, source: str) -> dict:
    names = ("n", "coverage") + OBJECTIVES
    return {"source": source, "weights": result["weights"], "gamma": result["gamma"],
            "metrics": {k: result[k] for k in names}}


def finish(data: probs_mod.SplitProbs, temperatures, best: dict, cfg: config_mod.TuneConfig):
    """The chosen spec with referral thresholds, and its validation metrics under the whole rule."""
    backbones = tuple(data.probs)
    base = ensemble.EnsembleSpec(backbones, data.classes, best["weights"], best["gamma"], temperatures)
    low_conf = ensemble.apply(base, data.probs).refer
    scaled = {b: ensemble.scale(data.probs[b], t) for b, t in zip(backbones, base.temperatures)}
    referral = referral_rule.fit_referral(scaled, data.ood, data.mask_fraction, cfg.referral_coverage,
                                     already_referred=low_conf, signals=cfg.referral_signals,
                                     image_score=data.image_score, image_reference=data.image_reference,
                                     image_quantile=cfg.image_quantile, referral_rate=cfg.referral_rate,
                                     confidence=cfg.confidence) if cfg.referral else referral_rule.ReferralRule()
    spec = ensemble.EnsembleSpec(backbones, data.classes, best["weights"], best["gamma"], temperatures, referral)
    d = probs_mod.apply_split(spec, data)
    return spec, decision_metrics(data.y, d.label, d.refer, len(data.classes))


def sgr_gamma(data: probs_mod.SplitProbs, temperatures, best: dict, cfg: config_mod.TuneConfig) -> dict:
    """`best` with γ replaced by SGR's threshold for `risk_target` on validation (same weights)."""
    fit = _sgr(data, temperatures, best["weights"], cfg)
    if not fit["feasible"]:
        raise ConfigError(f"tune.gamma_by_sgr: no γ certifies an error rate ≤ {cfg.risk_target} among accepted "
                          f"images at confidence {cfg.confidence} on {fit['n']} validation images (the best "
                          f"bound reached is {fit['risk_bound']:.3f}); raise --selective-risk or drop it")
    return {**best, "gamma": fit["threshold"], "source": f"{best['source']}+sgr"}


def _sgr(data, temperatures, weights, cfg) -> dict:
    spec = ensemble.EnsembleSpec(tuple(data.probs), data.classes, weights, 0.0, temperatures)
    d = ensemble.apply(spec, data.probs)
    return bounds.selective_risk_bound(d.confidence, d.probs.argmax(1) == data.y, cfg.risk_target,
                                       1 - cfg.confidence)


def guarantees(data: probs_mod.SplitProbs, spec: ensemble.EnsembleSpec, cfg: config_mod.TuneConfig,
               gamma_by_sgr: bool = False) -> dict:
    """The "guarantees" of ensemble.json: the image rule's conformal fit (its provenance in the rule),
    the whole rule's validation referral rate with its Clopper-Pearson bound (optimistic: γ and the
    thresholds were fitted on these images), and the γ rule's selective risk (SGR at `risk_target`,
    and the chosen γ's bound on validation)."""
    delta = 1 - cfg.confidence
    d = probs_mod.apply_split(spec, data)
    gamma_ok = np.array(["low_confidence" not in (r or "") for r in d.reason])
    errors = d.probs.argmax(1) != data.y
    return {
        "alpha": cfg.referral_rate, "confidence": cfg.confidence, "delta": delta,
        "image_rule": spec.referral.fit.get("image_rule"),
        "whole_rule_validation": {**bounds.rate_upper_bound(d.refer, delta),
                                  "note": "optimistic: γ and the thresholds were fitted on these images"},
        "gamma_rule": {"gamma": spec.gamma, "set_by": "sgr" if gamma_by_sgr else "search",
                       "sgr": _sgr(data, spec.temperatures, spec.weights, cfg),
                       "validation": bounds.selective_risk_upper(errors, gamma_ok, delta)},
    }


def load_validation(run_dir: str, cfg: config_mod.TuneConfig, check_rate: bool = True) -> probs_mod.SplitProbs:
    """The cached validation outputs: the only split this stage reads. `check_rate`: refuse an (α,
    confidence) the calibration set is too small for (False: the caller picks α, `supported_rate`)."""
    controls = [b for b in cfg.backbones if RunDir.CONTROL in b]
    if controls:
        raise ConfigError(f"tune.backbones {controls}: shortcut controls (train --control) are never ensemble "
                          "members; drop them from --backbones")
    lineage.snapshot(RunDir(run_dir), cfg.backbones)   # every member trained on RUN's current manifest
    data = probs_mod.load_probs(run_dir, list(cfg.backbones), "val")
    if (data.y < 0).any():
        raise UsageError(f"{run_dir}: validation labels outside the classes {list(data.classes)}")
    if not len(data.y):
        raise UsageError(f"{run_dir}: no validation rows shared by {list(cfg.backbones)}; retrain with a val split")
    data.image_reference = probs_mod.image_reference(run_dir, cfg.backbones)
    if check_rate:
        image_rule_refers(data, cfg)     # an (α, confidence) too strict for the calibration set fails here
    if cfg.referral and "image_score" in cfg.referral_signals and data.image_score is None:
        log.warning("%s: the validation files carry no image_score (models trained before alle_dist had "
                    "image statistics): unfamiliar images are referred by γ alone; retrain "
                    "(`alle-dist train --retrain`) to enable the image-statistics rule", run_dir)
    return data


def supported_rate(cfg: config_mod.TuneConfig, data: probs_mod.SplitProbs) -> tuple[config_mod.TuneConfig, str | None]:
    """For a referral rate that was not chosen explicitly: (cfg, None) when the calibration set supports
    it, else cfg with the smallest α it supports and a line saying so (ensemble.json records it)."""
    if cfg.referral_rate is None or image_rule_refers(data, dataclasses.replace(cfg, referral_rate=None)) is None:
        return cfg, None
    n = referral_rule.calibration_size(data.image_score, data.image_reference)
    if n >= bounds.required_n(cfg.referral_rate, 1 - cfg.confidence):
        return cfg, None
    alpha = referral_rule.smallest_rate(n, cfg.confidence)
    note = (f"the default referral rate {cfg.referral_rate} needs {bounds.required_n(cfg.referral_rate, 1 - cfg.confidence)} "
            f"calibration images at confidence {cfg.confidence}; this run has {n}, so the image rule guarantees "
            f"the smallest rate they support, {alpha} (--referral-rate sets it)")
    return dataclasses.replace(cfg, referral_rate=alpha), note


def run(run_dir: str, cfg: config_mod.TuneConfig, data: probs_mod.SplitProbs | None = None,
        rate_note: str | None = None) -> dict:
    """The whole stage on an initialised Ray: reads only the validation split; returns ensemble.json's doc.
    `rate_note`: why the referral rate is not the default (supported_rate), kept in the guarantees."""
    data = data if data is not None else load_validation(run_dir, cfg)
    temps = tuple(fit_temperature(data.probs[b], data.y) if cfg.temperature_scaling else 1.0
                  for b in cfg.backbones)
    trials = search(data, temps, cfg)
    best = select_best(trials, cfg.objective, cfg.min_coverage)
    best = sgr_gamma(data, temps, best, cfg) if cfg.gamma_by_sgr else best
    spec, metrics = finish(data, temps, best, cfg)
    extra = {"objective": cfg.objective, "min_coverage": cfg.min_coverage, "selected": best,
             "metrics": {"validation": metrics},
             "guarantees": {**guarantees(data, spec, cfg, cfg.gamma_by_sgr), "alpha_chosen": rate_note or "as configured"},
             "trials": trials, "lineage": lineage.snapshot(RunDir(run_dir), cfg.backbones)}
    ensemble.save_spec(run_dir, spec, **extra)
    log.debug("ensemble %s weights=%s gamma=%.3f: val %s", spec.backbones, spec.weights, spec.gamma, metrics)
    return {**ensemble.spec_doc(ensemble.load_spec(run_dir)), **extra}


_NONE = "none"   # --referral-rate none: the uncalibrated quantile (flags.tune)


def main(args: argparse.Namespace) -> int:
    from ..runtime import init_ray

    # --backbone is train.backbone (for --tune-training); every other flag is a tune field.
    over = config_mod.overrides(args, config_mod.TuneConfig)
    if over.get("referral_rate") == _NONE:
        over.pop("referral_rate")
    if getattr(args, "selective_risk", None) is not None:   # γ by SGR at that error rate
        over.update(risk_target=args.selective_risk, gamma_by_sgr=True)
    job = config_mod.job_config(args.config, tune=over, train={"backbone": args.backbone})
    if getattr(args, "referral_rate", None) == _NONE:     # None overrides are ignored: say it explicitly
        job = dataclasses.replace(job, tune=dataclasses.replace(job.tune, referral_rate=None))
    # A wrong RUN fails in a second, before Ray starts (--tune-training trains: it needs a manifest).
    RunDir(args.run_dir).check_ready("train" if args.tune_training else "tune")
    if args.tune_training:
        from ..train.hyperparams import tune_training

        init_ray(args.num_cpus)
        doc = tune_training(args.run_dir, job)
        print(f"tune_training.json: best {doc['best']}")
        return 0
    explicit = "referral_rate" in over or getattr(args, "referral_rate", None) == _NONE or \
        "referral_rate" in (config_mod.load_yaml(args.config).get("tune") or {})
    data = load_validation(args.run_dir, job.tune, check_rate=explicit)    # a wrong RUN fails here, before Ray
    note = None
    if not explicit:   # the default α where the calibration set supports it, else the smallest it does
        tune_cfg, note = supported_rate(job.tune, data)
        job = dataclasses.replace(job, tune=tune_cfg)
        if note:
            print(f"tune: {note}")
        image_rule_refers(data, job.tune)   # still infeasible (NaN scores): one line here
    init_ray(args.num_cpus)
    doc = run(args.run_dir, job.tune, data, note)
    config_mod.save_resolved(RunDir(args.run_dir).config("tune"), job, run_dir=args.run_dir)
    val = doc["metrics"]["validation"]
    weights = ", ".join(f"{b} {w:.2f}" for b, w in zip(doc["backbones"], doc["weights"]))
    print(f"{RunDir.ENSEMBLE}: weights {weights}, gamma {doc['gamma']:.3f}; validation n={val['n']} "
          f"coverage {val['coverage']:.3f} accuracy {val['accuracy_referral_as_error']:.3f} "
          f"→ {RunDir(args.run_dir).ensemble}")
    print(guarantee_line(doc["guarantees"]))
    return 0


def guarantee_line(g: dict) -> str:
    """One line for the terminal: what the image rule, the whole rule and the γ rule promise."""
    img, sgr, whole = g.get("image_rule") or {}, g["gamma_rule"]["sgr"], g["whole_rule_validation"]
    if not img:
        first = "image rule off"
    elif img["method"] == "quantile":
        first = "image rule: uncalibrated quantile (no guarantee)"
    else:
        first = (f"image rule refers ≤ {img['alpha_bound']:.4f} of in-distribution images at confidence "
                 f"{g['confidence']} (n_val={img['n_val']}, n_oof={img['n_oof']})")
    risk = (f"SGR: error rate ≤ {sgr['risk_bound']:.4f} among accepted at γ ≥ {sgr['threshold']:.3f} "
            f"(coverage {sgr['coverage']:.3f})" if sgr["feasible"] else
            f"SGR: no γ certifies an error rate ≤ {sgr['target_risk']} (best bound {sgr['risk_bound']:.3f})")
    return (f"guarantees: {first}; whole rule on validation {whole['rate']:.4f} referred (≤ {whole['upper']:.4f}, "
            f"optimistic); {risk}")
