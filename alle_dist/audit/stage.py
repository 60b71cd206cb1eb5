"""Stage `audit`: the reviews of DST (review import) as numbers a lab can act on, beside what tune stated.

Core (pure): audit.core. Shell (no Ray: it reads two small tables): read DST, its reviews, its run
records and the stated guarantees of the models it was classified with (their identity checked),
print three summary lines, write DIR/audit.json and DIR/audit.html (audit.page, audit.plots).
"""
from __future__ import annotations

import argparse
import logging

import pyarrow as pa
import pyarrow.compute as pc

from .. import schema
from ..classify import drift
from ..io import storage
from ..review import source
from . import core

log = logging.getLogger("alle_dist.audit")
JSON, HTML, CONFIG = "audit.json", "audit.html", "audit_config.yaml"


def stated(table: source.Table, run_dir: str | None) -> tuple[dict | None, dict | None, str | None]:
    """The guarantees in ensemble.json of the models DST was classified with (checked), evaluate's γ row
    for that very ensemble.json (None without a current report), and the run dir; (None, None, None)
    with a warning when no run directory is known or the recorded one is gone."""
    from ..review.build import check_models
    from ..rundir import RunDir

    found = run_dir or table.recorded_run_dir()
    if not found or (not run_dir and not storage.exists(RunDir(found).ensemble)):
        log.warning("audit: no run directory with a tuned ensemble%s: no stated bounds to compare with; give --run-dir",
                    f" at {found}" if found else "")
        return None, None, None
    check_models(table, found)
    return storage.read_json(RunDir(found).ensemble).get("guarantees"), tested_gamma(RunDir(found)), found


def tested_gamma(run) -> dict | None:
    """evaluate's γ row (RUN/report/metrics.json) if that report is of RUN's current ensemble.json (its
    lineage records the file's hash): a report of an earlier tuning is not this rule's."""
    from ..ensemble.lineage import ensemble_sha256
    from ..evaluate.metrics import GAMMA_ROW

    path = run.report_file(run.METRICS)
    if not storage.exists(path):
        return None
    doc = storage.read_json(path)
    if (doc.get("lineage") or {}).get("ensemble") != ensemble_sha256(run):
        log.warning("audit: %s is of another tuning than %s (rerun alle-dist evaluate): not used", path, run.ensemble)
        return None
    return next((r for r in doc.get("guarantees") or [] if r.get("name") == GAMMA_ROW), None)


def run_counts(table: source.Table) -> list[dict]:
    """Per classify run: its image-rule referrals and ok rows (the run record's own count, made when it
    finished; older runs: counted from their rows still current in DST)."""
    rows = table.rows(["run_id", "refer_reason", "status"], lambda b: pc.equal(b.column("status"), schema.OK))
    odd = pc.cast(pc.fill_null(pc.match_substring(rows.column("refer_reason"), drift.REASON), False), pa.int64())
    grouped = pa.table({"run_id": rows.column("run_id"), "odd": odd}).group_by("run_id").aggregate(
        [("odd", "sum"), ("odd", "count")]).to_pylist()
    by_run = {g["run_id"]: (g["odd_sum"], g["odd_count"]) for g in grouped}
    out = []
    for rec in table.runs():
        d = rec.get("drift") or {}
        k, n = (d["referred"], d["n"]) if "n" in d else by_run.get(rec["run_id"], (0, 0))
        out.append({"run_id": rec["run_id"], "started_at": rec.get("started_at"), "referred": int(k), "n": int(n)})
    return out


def audit(dst: str, run_dir: str | None, confidence: float | None) -> dict:
    table = source.open_table(dst)
    guarantees, tested, used = stated(table, run_dir)
    stated_level = 1 - float(guarantees["delta"]) if guarantees and guarantees.get("delta") else 0.95
    level = confidence or stated_level
    reviews = source.reviews(table.uri).to_pylist()
    doc = core.audit(reviews, table.classes, guarantees, run_counts(table), level, tested)
    return {"table": table.uri, "version": table.version, "model_sha256": table.model_sha256, "run_dir": used,
            "classes": list(table.classes), **doc}


def main(args: argparse.Namespace) -> int:
    from .. import config, fields
    from . import page, plots

    job_cfg = config.job_config(args.config, audit=fields.overrides(args, config.AuditConfig))
    doc = audit(args.table, args.run_dir, job_cfg.audit.confidence)
    for line in page.lines(doc):
        print(f"audit: {line}")
    if args.output:
        storage.write_json(storage.join(args.output, JSON), doc)
        html = page.render(doc, plots.all_plots(doc, doc["classes"]))
        storage.write_bytes(storage.join(args.output, HTML), html.encode())
        config.save_resolved(storage.join(args.output, CONFIG), job_cfg, table=args.table, run_dir=doc["run_dir"],
                             output=args.output)
        print(f"audit: → {storage.join(args.output, HTML)}")
    return 0
