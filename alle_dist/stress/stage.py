"""Stage `stress`: the test split under graded, seeded stain and acquisition shifts (stress.shifts),
through the real inference path and the tuned ensemble (stress.run); per shift and strength the
coverage, the accuracy on accepted images and the confident-error rate beside the unshifted figures.

Writes RUN/report/stress.json, one plot per shift (RUN/report/stress_<shift>.png) and
RUN/report/stress_config.yaml; when RUN/report/report.html exists, evaluate renders it again with a
stress section (evaluate reads stress.json whenever it runs).
"""
from __future__ import annotations

import argparse
import logging

from .. import config, fields
from ..io import storage
from ..rundir import RunDir

log = logging.getLogger("alle_dist.stress")


def write_outputs(run_dir: str, doc: dict) -> list[str]:
    """RUN/report/stress.json and one plot per shift (evaluate.plots.plot_stress); returns the plot URIs."""
    from ..evaluate.plots import plot_stress

    run = RunDir(run_dir)
    storage.write_json(run.stress, doc)
    uris = []
    for shift in doc["shifts"]:
        storage.write_bytes(run.stress_plot(shift), plot_stress(doc, shift))
        uris.append(run.stress_plot(shift))
    return uris


def lines(doc: dict) -> list[str]:
    """The terminal summary: the unshifted figures, each shift's worst strength, the verdict."""
    f = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
    b = doc["unshifted"]
    out = [f"unshifted n={doc['n']}: coverage {f(b['coverage'])}, accuracy on accepted "
           f"{f(b['accuracy_on_accepted'])}, confident errors {f(b['confident_error_rate'])}"]
    for r in doc["rows"]:
        out.append(f"  {r['shift']:>16} {r['strength_label']:<20} coverage {f(r['coverage'])}  accuracy on accepted "
                   f"{f(r['accuracy_on_accepted'])}  confident errors {f(r['confident_error_rate'])}"
                   f"{'  BREAKS THE GOAL' if r['breaks_goal'] else ''}")
    return out + [doc["verdict"]]


def main(args: argparse.Namespace) -> int:
    from ..ensemble import weighted
    from ..runtime import init_ray
    from .run import stress_run

    job_cfg = config.job_config(args.config, stress=fields.overrides(args, config.StressConfig))
    run = RunDir(args.run_dir)
    run.check_ready("stress")              # a wrong RUN fails in a second, before Ray starts
    weighted.load_spec(args.run_dir)
    init_ray(args.num_cpus)
    doc = stress_run(args.run_dir, job_cfg)
    write_outputs(args.run_dir, doc)
    config.save_resolved(run.config("stress"), job_cfg, run_dir=args.run_dir)
    if storage.exists(run.report_file(RunDir.REPORT_HTML)):
        from ..evaluate.stage import evaluate_run

        log.info("rendering %s again with the stress section", run.report_file(RunDir.REPORT_HTML))
        evaluate_run(args.run_dir, job_cfg.evaluate)
    for line in lines(doc):
        print(line)
    print(f"→ {run.stress}")
    return 0
