"""The stress run (Ray shell): each shift's images written under RUN/report/stress-images/ and read
back through classify's own pipeline (models.inference read tasks → model actors → the ensemble's
decision with the tuned spec, classify.pipeline), one shift at a time, so what is measured is what
bulk classification would do with such images. The unshifted condition reads the original files.
"""
from __future__ import annotations

import logging
import time

import cv2
import numpy as np
import pyarrow as pa

from .. import schema
from ..classify.pipeline import Decider, build_dataset
from ..classify.planning import TODO_SCHEMA
from ..classify.resolve import Models, read_spec, resolve_models
from ..config import JobConfig
from ..ensemble import lineage
from ..io import storage
from ..io.images import decode_rgb
from ..rundir import RunDir
from . import measure
from .shifts import SHIFTS, shifted

log = logging.getLogger("alle_dist.stress")


def test_rows(run_dir: str, limit: int | None, seed: int) -> tuple[list[str], np.ndarray, str, list[str]]:
    """(paths, class indices, source, classes) of the test split's ok images; a seeded subset of `limit`."""
    from ..prepare.manifest import read_manifest
    from ..train.stage import split_rows

    table, source, classes = read_manifest(RunDir(run_dir))
    rows = split_rows(table, schema.TEST, limit, seed)
    index = {c: i for i, c in enumerate(classes)}
    return rows.column("path").to_pylist(), np.array([index[c] for c in rows.column("label").to_pylist()]), source, classes


def decide(uris: list[str], models: Models, job_cfg: JobConfig, run_id: str) -> tuple[np.ndarray, int]:
    """The ensemble's label per uri (class index; -1 referred or unreadable) through classify's
    pipeline, and how many inputs were unreadable (error rows: not accepted, counted apart)."""
    todo = pa.table({f.name: pa.array(uris, f.type) if f.name == "uri" else pa.nulls(len(uris), f.type)
                     for f in TODO_SCHEMA}, schema=TODO_SCHEMA)
    ds = build_dataset(todo, models, read_spec(models, job_cfg), job_cfg.classify, Decider(models, run_id))
    index = {c: i for i, c in enumerate(models.spec.classes)}
    got, errors = {}, 0
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        for uri, status, label in zip(*(batch.column(c).to_pylist() for c in ("uri", "status", "label"))):
            got[uri] = index.get(label, -1) if status == schema.OK else -1
            errors += status != schema.OK
    return np.array([got[u] for u in uris]), errors


def _png(rgb: np.ndarray) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()


def write_shift(run: RunDir, name: str, fields: list[np.ndarray], seed: int) -> dict[float, list[str]]:
    """Every field under each strength of one shift, as PNGs (lossless: the pixels the shift made) under
    RUN/report/stress-images/<shift>/<k>/; returns {strength: uris}."""
    out = {}
    for k, s in enumerate(SHIFTS[name].strengths):
        folder = storage.join(run.stress_images(name), str(k))
        uris = []
        for i, rgb in enumerate(fields):
            uri = storage.join(folder, f"{i:06d}.png")
            storage.write_bytes(uri, _png(shifted(rgb, name, s, seed, i)))
            uris.append(storage.to_uri(uri))
        out[s] = uris
    return out


def label_of(name: str, strength: float) -> str:
    return f"{strength:g} {SHIFTS[name].unit}"


def stress_run(run_dir: str, job_cfg: JobConfig) -> dict:
    """The stress doc (RUN/report/stress.json): the unshifted test split and every shift × strength, judged against the goal."""
    cfg, run = job_cfg.stress, RunDir(run_dir)
    models = resolve_models(run_dir)            # every model hash checked before any work
    paths, y, source, classes = test_rows(run_dir, cfg.limit, cfg.seed)
    run_id = f"stress-{int(time.time())}"
    t0 = time.perf_counter()
    label, errors = decide([storage.to_uri(storage.join(source, p)) for p in paths], models, job_cfg, run_id)
    base = {**measure.outcome(y, label), "unreadable": errors}
    log.info("unshifted: %d images, coverage %.3f, confident errors %.3f", len(y), base["coverage"],
             base["confident_error_rate"])
    fields = [decode_rgb(storage.read_bytes(storage.join(source, p))) for p in paths]
    rows = []
    try:
        for name in cfg.shifts:
            uris = write_shift(run, name, fields, cfg.seed)
            everything = [u for s in uris for u in uris[s]]
            labels, _ = decide(everything, models, job_cfg, run_id)
            for k, s in enumerate(uris):
                o = measure.outcome(y, labels[k * len(y):(k + 1) * len(y)])
                rows.append(measure.judge({"shift": name, "strength": s, "strength_label": label_of(name, s), **o},
                                          base, cfg.goal_factor))
            storage.delete(run.stress_images(name))
            log.info("%s: %s", name, ", ".join(f"{r['strength_label']} confident errors "
                                               f"{r['confident_error_rate']:.3f}" for r in rows[-len(uris):]))
    finally:
        if storage.exists(run.report_file(RunDir.STRESS_IMAGES)):
            storage.delete(run.report_file(RunDir.STRESS_IMAGES))
    return {"n": len(y), "limit": cfg.limit, "seed": cfg.seed, "goal_factor": cfg.goal_factor, "classes": classes,
            "shifts": {n: {"strengths": list(SHIFTS[n].strengths), "unit": SHIFTS[n].unit} for n in cfg.shifts},
            "unshifted": base, "rows": rows, "verdict": measure.verdict(rows, base, cfg.goal_factor),
            "broken": sorted({r["shift"] for r in rows if r["breaks_goal"]}),
            "ensemble_sha256": lineage.ensemble_sha256(run), "model_sha256": models.model_sha256,
            "seconds": round(time.perf_counter() - t0, 1)}
