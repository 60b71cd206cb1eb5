"""Stage `tune`: Ray Tune over the ensemble weights and γ on the validation probabilities, plus referral
thresholds (or, with --tune-training, over the training hyperparameters: tune.training).

The test split is never read here. Order: (1) a temperature per backbone (NLL on validation); (2)
weights × γ by the objective (tune.search: real Ray Tune trials), the γ rule alone counting against the
coverage floor (with `gamma_by_sgr`, γ is then SGR's threshold for `risk_target`); (3) the
unfamiliar-image thresholds: the image rule's conformal threshold for (`referral_rate`, `confidence`),
any other signal fitted so that the whole rule (γ + unfamiliar) still covers `referral_coverage` of the
validation images; (4) `guarantees`: what each rule promises (tune.select; docs/referral-guarantees.md).
Writes RUN/ensemble.json and RUN/tune_config.yaml.
"""
from __future__ import annotations

import argparse
import logging

from .. import config, fields
from ..ensemble import lineage, split_probs, weighted
from ..errors import ConfigError, UsageError
from ..io import storage
from ..rundir import RunDir
from . import search, select

log = logging.getLogger("alle_dist.tune")


def load_validation(run_dir: str, cfg: config.TuneConfig, check_rate: bool = True) -> split_probs.SplitProbs:
    """The cached validation outputs: the only split this stage reads. `check_rate`: refuse an (α,
    confidence) the calibration set is too small for (False: the caller picks α, select.supported_rate)."""
    controls = [b for b in cfg.backbones if RunDir.CONTROL in b]
    if controls:
        raise ConfigError(f"tune.backbones {controls}: shortcut controls (train --control) are never ensemble "
                          "members; drop them from --backbones")
    lineage.snapshot(RunDir(run_dir), cfg.backbones)   # every member trained on RUN's current manifest
    data = split_probs.load_probs(run_dir, list(cfg.backbones), "val")
    if (data.y < 0).any():
        raise UsageError(f"{run_dir}: validation labels outside the classes {list(data.classes)}")
    if not len(data.y):
        raise UsageError(f"{run_dir}: no validation rows shared by {list(cfg.backbones)}; retrain with a val split")
    data.image_reference = split_probs.image_reference(run_dir, cfg.backbones)
    if check_rate:
        select.image_rule_refers(data, cfg)     # an (α, confidence) too strict for the calibration set fails here
    if cfg.referral and "image_score" in cfg.referral_signals and data.image_score is None:
        log.warning("%s: the validation files carry no image_score (models trained before alle_dist had "
                    "image statistics): unfamiliar images are referred by γ alone; retrain "
                    "(`alle-dist train --retrain`) to enable the image-statistics rule", run_dir)
    return data


def run(run_dir: str, cfg: config.TuneConfig, data: split_probs.SplitProbs | None = None,
        rate_note: str | None = None, tracked=None) -> dict:
    """The whole stage on an initialised Ray: reads only the validation split; returns ensemble.json's doc.
    `rate_note`: why the referral rate is not the default (select.supported_rate), kept in the guarantees;
    `tracked` (an MLflow run, alle_dist.tracking): every Tune trial becomes a child run of it."""
    data = data if data is not None else load_validation(run_dir, cfg)
    temps = tuple(select.fit_temperature(data.probs[b], data.y) if cfg.temperature_scaling else 1.0
                  for b in cfg.backbones)
    trials = search.search(data, temps, cfg, [tracked.tune_callback("ensemble")] if tracked is not None else None)
    best = select.select_best(trials, cfg.objective, cfg.min_coverage)
    best = select.sgr_gamma(data, temps, best, cfg) if cfg.gamma_by_sgr else best
    spec, metrics = select.finish(data, temps, best, cfg)
    extra = {"objective": cfg.objective, "min_coverage": cfg.min_coverage, "selected": best,
             "metrics": {"validation": metrics},
             "guarantees": {**select.guarantees(data, spec, cfg, cfg.gamma_by_sgr), "alpha_chosen": rate_note or "as configured"},
             "trials": trials, "lineage": lineage.snapshot(RunDir(run_dir), cfg.backbones)}
    weighted.save_spec(run_dir, spec, **extra)
    log.debug("ensemble %s weights=%s gamma=%.3f: val %s", spec.backbones, spec.weights, spec.gamma, metrics)
    return {**weighted.spec_doc(weighted.load_spec(run_dir)), **extra}


_NONE = "none"   # --referral-rate none: the uncalibrated quantile (flags.tune)


def main(args: argparse.Namespace) -> int:
    import dataclasses

    from ..runtime import init_ray
    from ..tracking import open_tracker

    # --backbone is train.backbone (for --tune-training); every other flag is a tune field.
    over = fields.overrides(args, config.TuneConfig)
    if over.get("referral_rate") == _NONE:
        over.pop("referral_rate")
    if getattr(args, "selective_risk", None) is not None:   # γ by SGR at that error rate
        over.update(risk_target=args.selective_risk, gamma_by_sgr=True)
    job_cfg = config.job_config(args.config, tune=over, train={"backbone": args.backbone})
    if getattr(args, "referral_rate", None) == _NONE:     # None overrides are ignored: say it explicitly
        job_cfg = dataclasses.replace(job_cfg, tune=dataclasses.replace(job_cfg.tune, referral_rate=None))
    # A wrong RUN fails in a second, before Ray starts (--tune-training trains: it needs a manifest).
    RunDir(args.run_dir).check_ready("train" if args.tune_training else "tune")
    if args.tune_training:
        from .training import tune_training

        tracker = open_tracker(getattr(args, "mlflow", None), "tune", args.run_dir)   # unreachable: fails now
        init_ray(args.num_cpus)
        with _tracked(tracker, args.run_dir, job_cfg, "tune-training") as tracked:
            doc = tune_training(args.run_dir, job_cfg, tracked)
        print(f"tune_training.json: best {doc['best']}")
        return 0
    explicit = "referral_rate" in over or getattr(args, "referral_rate", None) == _NONE or \
        "referral_rate" in (config.load_yaml(args.config).get("tune") or {})
    data = load_validation(args.run_dir, job_cfg.tune, check_rate=explicit)    # a wrong RUN fails here, before Ray
    note = None
    if not explicit:   # the default α where the calibration set supports it, else the smallest it does
        tune_cfg, note = select.supported_rate(job_cfg.tune, data)
        job_cfg = dataclasses.replace(job_cfg, tune=tune_cfg)
        if note:
            print(f"tune: {note}")
        select.image_rule_refers(data, job_cfg.tune)   # still infeasible (NaN scores): one line here
    tracker = open_tracker(getattr(args, "mlflow", None), "tune", args.run_dir)   # unreachable: fails now
    init_ray(args.num_cpus)
    with _tracked(tracker, args.run_dir, job_cfg) as tracked:
        doc = run(args.run_dir, job_cfg.tune, data, note, tracked)
        if tracked is not None:
            tracked.log_metrics({"validation": doc["metrics"]["validation"], "gamma": doc["gamma"]})
            tracked.set_tags({"alle_dist.lineage": doc["lineage"],
                              "alle_dist.lineage.ensemble": lineage.ensemble_sha256(RunDir(args.run_dir))})
            tracked.log_files({RunDir.ENSEMBLE: storage.read_bytes(RunDir(args.run_dir).ensemble)})
    config.save_resolved(RunDir(args.run_dir).config("tune"), job_cfg, run_dir=args.run_dir)
    val = doc["metrics"]["validation"]
    weights = ", ".join(f"{b} {w:.2f}" for b, w in zip(doc["backbones"], doc["weights"]))
    print(f"{RunDir.ENSEMBLE}: weights {weights}, gamma {doc['gamma']:.3f}; validation n={val['n']} "
          f"coverage {val['coverage']:.3f} accuracy {val['accuracy_referral_as_error']:.3f} "
          f"→ {RunDir(args.run_dir).ensemble}")
    print(guarantee_line(doc["guarantees"]))
    return 0


def _tracked(tracker, run_dir: str, job_cfg, kind: str = "tune"):
    """The parent MLflow run of a Tune search (a no-op context without a tracker)."""
    import contextlib

    if tracker is None:
        return contextlib.nullcontext()
    params = {k: v for k, v in job_cfg.to_dict().items() if k in (("tune",) if kind == "tune" else ("tune", "train"))}
    return tracker.run(f"{kind} {RunDir(run_dir).root.rstrip('/').rsplit('/', 1)[-1]}", params=params)


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
    if select.too_few_for_a_bound(whole):
        rest = (f"whole rule: {whole['rate']:.4f} of {whole['n']} validation images referred, too few for a bound "
                f"(need ≥ {whole['n_required']}): evaluate bounds it on the test split")
    else:
        rest = f"whole rule on validation {whole['rate']:.4f} referred (≤ {whole['upper']:.4f}, optimistic)"
    return f"guarantees: {first}; {rest}; {risk}"
