"""Tune the ensemble: Ray Tune over weights and γ on the validation probabilities, plus referral thresholds.

Core (Ray-free): `fit_temperature`, `decision_metrics`, `objective_value`, `select_best`, `finish`.
Ray shell: every candidate (the paper's grid and a random search) is a real Ray Tune trial over the
cached validation arrays (`tune.with_parameters` puts them in the object store once). The test split
is never read here. Writes RUN/ensemble.json and RUN/tune_config.yaml.

Order: (1) a temperature per backbone (NLL on validation); (2) weights × γ by the objective, the γ
rule alone counting against the coverage floor; (3) the unfamiliar-image thresholds, fitted so that
the whole rule (γ + unfamiliar) still covers `referral_coverage` of the validation images.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import uuid

import numpy as np

from . import config as config_mod
from . import ensemble, storage
from .cli import UsageError

log = logging.getLogger("alle_dist.tune")

# The paper's weight sets over (DenseNet-201, ResNet-50) and thresholds.
PAPER_WEIGHTS = ((0.5, 0.5), (0.6, 0.4), (0.4, 0.6), (0.3, 0.7), (0.7, 0.3))
PAPER_GAMMAS = (0.7, 0.8)
OBJECTIVES = ("accuracy_referral_as_error", "accuracy_on_accepted", "macro_f1_referral_as_error")


def fit_temperature(probs: np.ndarray, y: np.ndarray, bounds=(0.05, 20.0)) -> float:
    """T minimising the NLL of softmax(log p / T) on labelled rows (1.0 if none)."""
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


def evaluate_setting(weights, gamma, data: ensemble.SplitProbs, temperatures) -> dict:
    spec = ensemble.EnsembleSpec(tuple(data.probs), data.classes, weights, gamma, temperatures)
    d = ensemble.apply(spec, data.probs)
    return decision_metrics(data.y, d.label, d.refer, len(data.classes))


def _trial(config: dict, data: ensemble.SplitProbs, temperatures) -> dict:
    """One Ray Tune trial: weights either given (grid) or from raw uniform draws (search)."""
    point = config["point"]
    if "weights" in point:
        w, gamma, source = np.asarray(point["weights"], np.float64), point["gamma"], "paper_grid"
    else:
        w = np.asarray([config[f"w{i}"] for i in range(len(data.probs))], np.float64) + 1e-9
        w, gamma, source = w / w.sum(), config["gamma"], "random_search"
    w = tuple(np.round(w, 6) / np.round(w, 6).sum())
    return {**evaluate_setting(w, float(gamma), data, temperatures),
            "weights": list(w), "gamma": float(gamma), "source": source, "index": point["i"]}


def search(data: ensemble.SplitProbs, temperatures, cfg: config_mod.TuneConfig) -> list[dict]:
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
    trainable = tune.with_resources(tune.with_parameters(_trial, data=data, temperatures=temperatures),
                                    {"cpu": 1})
    tmp = tempfile.mkdtemp(prefix="alle-dist-tune-")
    try:
        tuner = tune.Tuner(
            trainable, param_space=space,
            tune_config=tune.TuneConfig(search_alg=BasicVariantGenerator(random_state=cfg.seed),
                                        max_concurrent_trials=cfg.max_concurrent_trials),
            run_config=tune.RunConfig(name=f"ensemble-{uuid.uuid4().hex[:8]}", storage_path=tmp, verbose=0),
        )
        results = tuner.fit()
        errors = [r.error for r in results if r.error]
        if errors:
            raise RuntimeError(f"{len(errors)} tune trial(s) failed; first: {errors[0]}")
        metrics = sorted((r.metrics for r in results), key=lambda m: m["index"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [_keep(m, m["source"]) for m in metrics]


def _keep(result: dict, source: str) -> dict:
    names = ("n", "coverage") + OBJECTIVES
    return {"source": source, "weights": result["weights"], "gamma": result["gamma"],
            "metrics": {k: result[k] for k in names}}


def finish(data: ensemble.SplitProbs, temperatures, best: dict, cfg: config_mod.TuneConfig):
    """The chosen spec with referral thresholds, and its validation metrics under the whole rule."""
    backbones = tuple(data.probs)
    base = ensemble.EnsembleSpec(backbones, data.classes, best["weights"], best["gamma"], temperatures)
    low_conf = ensemble.apply(base, data.probs).refer
    scaled = {b: ensemble.scale(data.probs[b], t) for b, t in zip(backbones, base.temperatures)}
    referral = ensemble.fit_referral(scaled, data.ood, data.mask_fraction, cfg.referral_coverage,
                                     already_referred=low_conf) if cfg.referral else {}
    spec = ensemble.EnsembleSpec(backbones, data.classes, best["weights"], best["gamma"], temperatures, referral)
    d = ensemble.apply(spec, data.probs, data.ood, data.mask_fraction)
    return spec, decision_metrics(data.y, d.label, d.refer, len(data.classes))


def run(run_dir: str, cfg: config_mod.TuneConfig) -> dict:
    """The whole stage on an initialised Ray: reads only the validation split; returns ensemble.json's doc."""
    data = ensemble.load_probs(run_dir, list(cfg.backbones), "val")
    if (data.y < 0).any():
        raise UsageError(f"{run_dir}: validation labels outside the classes {list(data.classes)}")
    temps = tuple(fit_temperature(data.probs[b], data.y) if cfg.temperature_scaling else 1.0
                  for b in cfg.backbones)
    trials = search(data, temps, cfg)
    best = select_best(trials, cfg.objective, cfg.min_coverage)
    spec, metrics = finish(data, temps, best, cfg)
    extra = {"objective": cfg.objective, "min_coverage": cfg.min_coverage, "selected": best,
             "metrics": {"validation": metrics}, "trials": trials}
    ensemble.save_spec(run_dir, spec, **extra)
    log.info("ensemble %s weights=%s gamma=%.3f: val %s", spec.backbones, spec.weights, spec.gamma, metrics)
    return {**ensemble.load_spec(run_dir).__dict__, **extra}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-dir", required=True, help="run directory (local or s3://) with models/<backbone>/")
    p.add_argument("--backbones", default=None, help="comma-separated, in weight order (default densenet201,resnet50)")
    p.add_argument("--objective", default=None, choices=OBJECTIVES)
    p.add_argument("--min-coverage", type=float, default=None, help="validation coverage floor of the γ rule")
    p.add_argument("--num-samples", type=int, default=None, help="random-search trials besides the paper's grid")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--tune-training", action="store_true",
                   help="instead: tune training hyperparameters by running the train stage inside Tune")


def main(args: argparse.Namespace) -> int:
    from .runtime import init_ray

    overrides = {"objective": args.objective, "min_coverage": args.min_coverage,
                 "num_samples": args.num_samples, "seed": args.seed,
                 "backbones": tuple(args.backbones.split(",")) if args.backbones else None}
    job = config_mod.job_config(args.config, tune=overrides)
    init_ray(args.num_cpus)
    if args.tune_training:
        tune_training(args.run_dir, job)
        return 0
    config_mod.save_resolved(storage.join(args.run_dir, "tune_config.yaml"), job, run_dir=args.run_dir)
    doc = run(args.run_dir, job.tune)
    print(f"ensemble.json: weights={doc['weights']} gamma={doc['gamma']:.3f} "
          f"val={doc['metrics']['validation']}")
    return 0
