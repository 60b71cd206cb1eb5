"""Stage `evaluate`: the test split, every backbone, every baseline and the ensemble; metrics, plots, report.

Reads RUN/models/*/test_probs.parquet (the only stage that touches the test split) and
RUN/ensemble.json, and writes RUN/report/ (evaluate.report). Core: evaluate.metrics (Ray-free).
Ray shell: the work is a few thousand rows of cached probabilities, so the stage runs on the driver;
`main` still initialises Ray for a uniform `ray job_cfg submit` entry.
"""
from __future__ import annotations

import argparse
import logging

from .. import config, fields
from ..ensemble import lineage
from ..ensemble import split_probs
from ..ensemble import weighted
from ..io import storage
from ..rundir import RunDir
from .metrics import ENSEMBLE, control_summary, guarantee_rows, model_metrics, model_outputs, table3

log = logging.getLogger("alle_dist.evaluate")


def evaluate_run(run_dir: str, cfg: config.EvaluateConfig) -> dict:
    """Everything: metrics.json's doc; writes the whole report (report.write_report)."""
    from . import card, gallery, report

    run = RunDir(run_dir)
    spec = weighted.load_spec(run_dir)
    now = lineage.check(run, weighted.read_doc(run_dir))   # nothing stale behind ensemble.json
    data = split_probs.load_probs(run_dir, list(spec.backbones), "test")
    outputs = model_outputs(data, spec)
    models = {name: model_metrics(o, data.y, spec.classes) for name, o in outputs.items()}
    trained = set(run.trained_models()) - set(spec.backbones)
    controls = sorted(b for b in trained if RunDir.CONTROL in b)     # shortcut controls: never a baseline
    for name in sorted(trained):   # baselines and controls were trained on this split too
        now["models"].update(lineage.snapshot(run, [name])["models"])
    for extra in sorted(trained - set(controls)):   # baselines: on their own rows
        bd = split_probs.load_probs(run_dir, [extra], "test")
        models[extra] = model_metrics(model_outputs(bd, None)[extra], bd.y, bd.classes)
    ens = models[ENSEMBLE]
    doc = {"per_class": ens["per_class"], "overall": ens["overall"], "coverage": ens["coverage"],
           "ece": ens["ece"], "n": ens["n"], "accuracy_on_accepted": ens["accuracy_on_accepted"],
           "ensemble": {"backbones": list(spec.backbones), "weights": list(spec.weights), "gamma": spec.gamma,
                        "temperatures": list(spec.temperatures)},
           "table3": table3(data, spec), "models": models,
           "lineage": {"ensemble": lineage.ensemble_sha256(run), **now}}
    doc["guarantees"] = guarantee_rows(data, spec, weighted.read_doc(run_dir).get("guarantees"))
    if controls:
        doc["control"] = _control(run_dir, controls[0], models)
    stress = _stress(run)
    if stress:
        doc["stress"] = stress
    doc["corrections"] = report.corrections(run_dir, data, outputs, spec, cfg.max_corrections_copied)
    report.write_report(run_dir, doc, gallery.build(run_dir, data, outputs, spec))
    card.write(run_dir)                      # from metrics.json, just written
    return doc


def _control(run_dir: str, name: str, models: dict) -> dict:
    """The shortcut control's test accuracy beside its backbone's (train --control)."""
    cd = split_probs.load_probs(run_dir, [name], "test")
    backbone = name.split(RunDir.CONTROL)[0]
    real = (models.get(backbone) or models[ENSEMBLE])["overall"]["accuracy"]
    return control_summary(backbone, cd.y, cd.probs[name].argmax(1), real)


def _stress(run: RunDir) -> dict | None:
    """RUN/report/stress.json (`alle-dist stress`) when it was made with the ensemble now in RUN; a
    stale one is left out of the report, with a line saying so."""
    if not storage.exists(run.stress):
        return None
    doc = storage.read_json(run.stress)
    if doc.get("ensemble_sha256") != lineage.ensemble_sha256(run):
        log.warning("%s was made with another ensemble.json: left out of the report; rerun `alle-dist stress "
                    "--run-dir %s`", run.stress, run.root)
        return None
    return doc


def _guarantee_lines(doc: dict) -> list[str]:
    """One line per guarantee row: the valid headline first, then what was observed and what tune stated."""
    fmt = lambda v: "–" if v is None else f"{v:.4f}"  # noqa: E731
    lines = []
    for r in doc.get("guarantees") or []:
        head = (f"≤ {fmt(r['headline'])} ({r['basis']})" if r["valid"] else
                f"≤ {fmt(r['headline'])} (valid: Clopper-Pearson on the test split)")
        tuned = "" if r["valid"] else f"; tuned: {fmt(r['bound'])} {r['basis']}" if r["bound"] is not None else f"; {r['basis']}"
        lines.append(f"  {r['name']}: {head}; observed {fmt(r['observed'])} of n={r['n']}{tuned}"
                     f"{' VIOLATED' if r['violated'] else ''}")
    c = doc.get("control")
    if c:
        lines.append(f"  shortcut control {c['backbone']}: accuracy {c['accuracy']:.4f}, chance {c['chance']:.4f}, "
                     f"{c['backbone']} {fmt(c['real_accuracy'])}: {c['reading']}")
    return lines


def track(tracker, run_dir: str, doc: dict, cfg: config.EvaluateConfig) -> None:
    """MLflow (opt-in): the test-split metrics, the lineage hashes as tags, the report and model card as artifacts."""
    report = RunDir(run_dir).report
    files = {rel: storage.read_bytes(storage.join(report, rel)) for rel, _ in storage.list_files(report)
             if "/" not in rel or rel.endswith(".csv")}          # not the copied correction images
    models = {name: {"accuracy": m["overall"]["accuracy"], "f1": m["overall"]["f1"], "ece": m["ece"]}
              for name, m in doc["models"].items()}
    with tracker.run(f"evaluate {RunDir(run_dir).root.rstrip('/').rsplit('/', 1)[-1]}", params={"evaluate": vars(cfg)},
                     tags={"alle_dist.lineage": doc["lineage"]}) as r:
        r.log_metrics({**{k: doc["overall"][k] for k in ("accuracy", "precision", "sensitivity", "specificity", "f1")},
                       "coverage": doc["coverage"], "ece": doc["ece"], "n": doc["n"],
                       "accuracy_on_accepted": doc["accuracy_on_accepted"], "models": models})
        r.log_files(files, "report")


def main(args: argparse.Namespace) -> int:
    from ..runtime import init_ray
    from ..tracking import open_tracker

    job_cfg = config.job_config(args.config, evaluate=fields.overrides(args, config.EvaluateConfig))
    RunDir(args.run_dir).check_ready("evaluate")   # a wrong RUN fails in a second, before Ray starts
    weighted.load_spec(args.run_dir)          # a wrong RUN fails here, before Ray starts or files are written
    tracker = open_tracker(getattr(args, "mlflow", None), "evaluate", args.run_dir)   # an unreachable server: now
    init_ray(args.num_cpus)
    doc = evaluate_run(args.run_dir, job_cfg.evaluate)
    config.save_resolved(RunDir(args.run_dir).config("evaluate"), job_cfg, run_dir=args.run_dir)
    if tracker is not None:
        try:
            track(tracker, args.run_dir, doc, job_cfg.evaluate)
        except Exception as exc:  # noqa: BLE001 - the report is written; a tracking server gone since is a warning
            log.warning("MLflow: evaluation not recorded (%s); the report is in %s", storage.first_line(exc),
                        RunDir(args.run_dir).report)
    o = doc["overall"]
    print(f"test n={doc['n']} coverage={doc['coverage']:.4f} accuracy={o['accuracy']:.4f} "
          f"macro F1={o['f1']:.4f} ece={doc['ece']:.4f} → {RunDir(args.run_dir).report}")
    for line in _guarantee_lines(doc):
        print(line)
    return 0
