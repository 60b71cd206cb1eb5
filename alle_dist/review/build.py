"""`review build`: one review batch from DST, for a haematologist.

Picks the referred rows not yet reviewed for their current bytes (oldest first, at most `limit`) and
a blind audit sample of the accepted rows not yet reviewed (review.select), renders their pictures
with the models DST was classified with (checked: their identity must be the rows' model_sha256),
and writes, under DIR (local):

  DIR/review.html                     the page (review.page): works opened from disk
  DIR/label_studio/tasks.json         the same batch as Label Studio tasks (review.labelstudio)
  DIR/label_studio/labeling_config.xml
  DIR/batch.json                      the batch manifest: what was picked, why, from which table
                                      version and models, with which seed (also stored under DST,
                                      tables.SideDir.batch, where `review import` checks decisions)
  DIR/review_config.yaml              the resolved config
"""
from __future__ import annotations

import datetime as dt
import logging
import secrets
import uuid

import pyarrow as pa
import pyarrow.compute as pc

from .. import config
from .. import schema
from ..classify.resolve import resolve_models
from ..classify.store import who
from ..errors import StaleArtifactError
from ..io import storage
from ..referral.signals import reasons_in_words
from . import labelstudio, page, select, source, views

log = logging.getLogger("alle_dist.review")
PAGE, MANIFEST, CONFIG = "review.html", "batch.json", "review_config.yaml"
LS_DIR, LS_TASKS, LS_CONFIG = "label_studio", "tasks.json", "labeling_config.xml"


def _columns(classes, backbones) -> list[str]:
    return (["uri", "path", "sha256", "status", "refer", "label", "predicted_class", "refer_reason", "confidence",
             "model_sha256", "run_id", "classified_at"] + [schema.prob_column(c) for c in classes]
            + [schema.backbone_prob_column(b, c) for b in backbones for c in classes])


def new_batch_id() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


def check_models(table: source.Table, run_dir: str):
    """The models DST was classified with, every file's hash checked; refused when RUN holds others."""
    models = resolve_models(run_dir)
    if models.model_sha256 != table.model_sha256:
        raise StaleArtifactError(f"{run_dir}: its models ({models.model_sha256[:12]}…) are not the ones {table.uri} "
                                 f"was classified with ({table.model_sha256[:12]}…); give --run-dir of that run")
    return models


def pick(table: source.Table, reviewed: pa.Array, audit: int, limit: int | None, seed: int) -> tuple[list[dict], dict]:
    """The batch's rows (each with `kind`) and what was picked from how many."""
    cols = _columns(table.classes, table.backbones)
    referred = _unreviewed(table.rows(cols, _ok(True)), reviewed)
    idx = select.referred_first(referred.column("classified_at").to_pylist(), referred.column("uri").to_pylist(), limit)
    accepted = _unreviewed(table.rows(["uri", "sha256", "label", "status", "refer"], _ok(False)), reviewed)
    accepted = accepted.sort_by("uri")
    labels = accepted.column("label").to_pylist()
    drawn = accepted.take(pa.array(select.draw_audit(labels, audit, seed), pa.int64()))
    audit_rows = _same_bytes(table.rows_of(drawn.column("uri").to_pylist(), cols), drawn)
    rows = [{**r, "kind": schema.REFERRED} for r in referred.take(pa.array(idx, pa.int64())).to_pylist()]
    rows += [{**r, "kind": schema.AUDIT} for r in audit_rows.sort_by("uri").to_pylist()]
    counts = {"referred_not_reviewed": referred.num_rows, "referred_picked": len(idx),
              "accepted_not_reviewed": accepted.num_rows, "accepted_by_class": _count(labels),
              "audit_by_class": _count(audit_rows.column("label").to_pylist())}
    return rows, counts


def _ok(refer: bool):
    """keep(batch): ok rows the ensemble referred (True) or accepted (False)."""
    return lambda b: pc.and_(pc.equal(b.column("status"), schema.OK), pc.equal(b.column("refer"), refer))


def _unreviewed(rows: pa.Table, reviewed: pa.Array) -> pa.Table:
    return rows.filter(pc.invert(pc.is_in(source.key(rows), value_set=reviewed))) if len(reviewed) else rows


def _same_bytes(rows: pa.Table, drawn: pa.Table) -> pa.Table:
    """Rows re-read by uri that still hold the drawn bytes (a concurrent classify may have replaced some)."""
    return rows.filter(pc.is_in(source.key(rows), value_set=source.key(drawn)))


def _count(labels) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in labels:
        out[c] = out.get(c, 0) + 1
    return dict(sorted(out.items()))


def item(row: dict, pics: dict, classes, backbones) -> dict:
    """One page item: the pictures and the model's answer (shown at once for referred images, after the
    decision for audit images)."""
    probs = {b: [row[schema.backbone_prob_column(b, c)] for c in classes] for b in backbones}
    probs["ensemble"] = [row[schema.prob_column(c)] for c in classes]
    members = {b: f"{classes[max(range(len(classes)), key=lambda i: p[i] or 0)]}" for b, p in probs.items()}
    reasons = reasons_in_words(row["refer_reason"])
    return {"uri": row["uri"], "sha256": row["sha256"], "path": row["path"], "kind": row["kind"], **pics,
            "model": {"label": row["label"], "predicted": row["predicted_class"], "confidence": row["confidence"],
                      "probs": probs, "members": members, "reasons": reasons}}


def ls_info(row: dict) -> str:
    """Label Studio's `info` line: the model's answer for a referred image; nothing for an audit image."""
    if row["kind"] == schema.AUDIT:
        return ""
    why = "; ".join(reasons_in_words(row["refer_reason"]))
    return f"Referred by the model (it leaned to {row['predicted_class']}, {100 * (row['confidence'] or 0):.0f} %): {why}"


def manifest(batch_id: str, table: source.Table, models, run_dir: str, cfg, seed: int, rows: list[dict],
             counts: dict, left: dict, root: dict) -> dict:
    keep = ("uri", "sha256", "kind", "path", "label", "predicted_class", "refer_reason", "confidence", "run_id")
    return {"batch_id": batch_id, "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "who": who(), "table": table.uri, "table_version": table.version, "model_sha256": table.model_sha256,
            "models": models.hashes, "run_dir": run_dir, "classes": list(table.classes),
            "labels": list(schema.review_labels(table.classes)), "seed": seed, "audit_requested": cfg.audit,
            "limit": cfg.limit, "selection": counts, "left_out": left, "label_studio": root,
            "items": [{**{k: r[k] for k in keep}, "model_label": r["label"]} for r in rows]}


def build(dst: str, out_dir: str, run_dir: str | None, job_cfg: config.JobConfig) -> dict:
    """The whole build; returns the batch manifest (with `written`: the files)."""
    cfg = job_cfg.review
    table = source.open_table(dst)
    run_dir = source.resolve_run_dir(table, run_dir)
    models = check_models(table, run_dir)
    seed = cfg.seed if cfg.seed is not None else secrets.randbelow(2 ** 31)
    rows, counts = pick(table, source.reviewed_keys(table.uri), cfg.audit, cfg.limit, seed)
    rows = [rows[i] for i in select.page_order(len(rows), seed)]
    log.info("review build: %d image(s): reading them and computing Grad-CAM maps", len(rows))
    pics, left = views.pictures(rows, run_dir, models.metas, table.classes, cfg.image_px)
    kept = [(r, p) for r, p in zip(rows, pics) if p is not None]
    root = labelstudio.local_roots([r["uri"] for r, _ in kept])
    doc = manifest(new_batch_id(), table, models, run_dir, cfg, seed, [r for r, _ in kept], counts, left, root)
    if not kept:
        return {**doc, "written": []}
    doc["written"] = write(out_dir, doc, kept, table, job_cfg)
    source.write_batch(table, {k: v for k, v in doc.items() if k != "written"})
    return doc


def write(out_dir: str, doc: dict, kept: list, table: source.Table, job_cfg: config.JobConfig) -> list[str]:
    labels = doc["labels"]
    words = {lab: labelstudio.words(lab) for lab in labels}
    items = [item(r, p, table.classes, table.backbones) for r, p in kept]
    files = {PAGE: page.render(doc, items, labels, words).encode(),
             MANIFEST: _json(doc),
             f"{LS_DIR}/{LS_TASKS}": _json(labelstudio.tasks([{**r, "info": ls_info(r)} for r, _ in kept],
                                                             doc["batch_id"], doc["label_studio"]["document_root"])),
             f"{LS_DIR}/{LS_CONFIG}": labelstudio.config_xml(labels).encode()}
    for name, data in files.items():
        storage.write_bytes(storage.join(out_dir, name), data)
    config.save_resolved(storage.join(out_dir, CONFIG), job_cfg, table=table.uri, output=out_dir,
                             run_dir=doc["run_dir"], batch_id=doc["batch_id"])
    return [storage.join(out_dir, n) for n in files]


def _json(obj) -> bytes:
    import json

    return (json.dumps(obj, indent=1, default=str) + "\n").encode()
