"""Classify images in bulk: image store → the one inference path → ensemble + referral → result rows.

Core (Ray-free): `Decider` (model outputs → result rows: OOD, ensemble, referral), `Classifier`
(inference.ModelRunner + Decider in one process). Ray shell: `build_dataset` (read + decode tasks →
one model actor per GPU, or CPU actors → decider tasks), `execute` (the driver's exactly-once writer
→ reconciliation), `run_job` = plan + execute. Design, row schema and failure behaviour: docs/classify.md.
"""
from __future__ import annotations

import datetime as dt
import os
import sys

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import __version__, schema
from ..ensemble import rule as ensemble
from ..errors import ClassifyIncomplete
from ..models import feature_distance, field_stats, inference
from ..config import JobConfig
from . import parts
from .plan import JobPlan, Models, load_ood_stats, plan_job

# Parquet key-value metadata of every part (never anything from the environment: no credentials).
META_RUN_ID, META_MODEL = b"alle_dist.run_id", b"alle_dist.model_sha256"


class Decider:
    """The CPU half: model outputs → result rows (schema.classify_schema): OOD scores, the weighted
    ensemble and the referral rule. Kept off the GPU actor: OOD scoring is float64 matrix work."""

    def __init__(self, models: Models, run_id: str):
        self.spec, self.run_id, self.model_sha256 = models.spec, run_id, models.model_sha256
        self.ood = {b: load_ood_stats(models, b) for b in self.spec.backbones}
        # One image-statistics model: every backbone of a run fits the same one on the same training split.
        self.image_stats = next((s for s in self.ood.values() if field_stats.has_stats(s)), None)
        self.schema = schema.classify_schema(list(self.spec.classes), list(self.spec.backbones))

    def __call__(self, batch: pa.Table) -> pa.Table:
        ok = inference.ok_mask(batch)
        cols = self._base_columns(batch)
        if ok.any():
            self._model_columns(cols, ok, batch)
        return pa.Table.from_arrays([inference.as_array(cols.get(f.name), f.type, len(ok))
                                     for f in self.schema], schema=self.schema)

    def _base_columns(self, batch: pa.Table) -> dict:
        n = batch.num_rows
        cols = {c: batch.column(c) for c in ("path", "sha256", "bytes", "status", "error", "mask_fraction")}
        cols.update({
            "weights": [list(self.spec.weights)] * n, "gamma": [self.spec.gamma] * n,
            "model_sha256": [self.model_sha256] * n, "version": [__version__] * n,
            "run_id": [self.run_id] * n, "classified_at": [dt.datetime.now(dt.timezone.utc)] * n,
        })
        return cols

    def _model_columns(self, cols: dict, ok: np.ndarray, batch: pa.Table) -> None:
        probs, scores = {}, {}
        for b in self.spec.backbones:
            probs[b] = inference.unpack_rows(batch.column(inference.PROBS + b), ok)
            if self.ood[b] is not None:
                scores[b] = feature_distance.score(inference.unpack_rows(batch.column(inference.FEATURES + b), ok), self.ood[b])
        mf = batch.column("mask_fraction").to_numpy(zero_copy_only=False)[ok]
        img = None
        if self.image_stats is not None:
            img = field_stats.score(inference.unpack_rows(batch.column("image_stats"), ok), self.image_stats)
            cols["image_score"] = inference.scatter(ok, img)
        d = ensemble.apply(self.spec, probs, scores, mf, img)
        names = np.array(list(self.spec.classes) + [schema.REFER], dtype=object)
        scatter = inference.scatter
        cols["label"] = scatter(ok, names[d.label])          # label -1 → names[-1] = 'refer'
        cols["refer"] = scatter(ok, d.refer)
        cols["refer_reason"] = scatter(ok, np.asarray(d.reason, dtype=object))
        cols["confidence"] = scatter(ok, d.confidence)
        for i, c in enumerate(self.spec.classes):
            cols[schema.prob_column(c)] = scatter(ok, d.probs[:, i])
            for b in self.spec.backbones:
                cols[schema.backbone_prob_column(b, c)] = scatter(ok, probs[b][:, i])
        for b, s in scores.items():
            cols[schema.backbone_ood_column(b)] = scatter(ok, s)


class Classifier:
    """Both halves in one process (tests, the benchmark's bare loop): prepared rows → result rows."""

    def __init__(self, models: Models, run_id: str, device: str = "cpu"):
        self.runner = inference.ModelRunner(model_dirs(models), device)
        self.decider = Decider(models, run_id)
        self.image_size = self.runner.image_size

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.decider(self.runner(batch))


def model_dirs(models: Models) -> dict[str, str]:
    from ..rundir import RunDir

    return {b: RunDir(models.run_dir).model(b).root for b in models.spec.backbones}


def _decide(batch: pa.Table, decider: Decider) -> pa.Table:
    return decider(batch)


def build_dataset(plan: JobPlan):
    """read + decode + segment (tasks) → models (actor pool) → OOD + ensemble (tasks), lazily."""
    import ray.data

    cfg = plan.cfg
    n = max(plan.todo.num_rows, 1)
    blocks = [plan.todo.slice(i, cfg.batch_size) for i in range(0, n, cfg.batch_size)]
    layout = inference.actor_layout(cfg.gpus, cfg.cpu_workers)
    ds = inference.model_outputs(ray.data.from_arrow(blocks), plan.prep, model_dirs(plan.models), layout,
                                 cfg.batch_size, cfg.read_cpus, cfg.decode_tasks)
    # The decider (with the OOD statistics) goes to the object store once, shared by every task.
    return ds.map_batches(_decide, fn_kwargs={"decider": Decider(plan.models, plan.run["run_id"])},
                          batch_format="pyarrow", batch_size=None, num_cpus=cfg.read_cpus)


def execute(plan: JobPlan) -> list[str]:
    """Run the pipeline, write and publish parts, reconcile; returns the problems ([] = exactly once)."""
    out_schema = schema.classify_schema(list(plan.models.spec.classes), list(plan.models.spec.backbones))
    out_schema = out_schema.with_metadata({META_RUN_ID: plan.run["run_id"].encode(),
                                           META_MODEL: plan.models.model_sha256.encode()})
    plan.manifest["runs"].append(plan.run)
    writer = parts.PartWriter(plan.dst, plan.manifest, plan.run, out_schema, plan.cfg.rows_per_file)
    seen, counts = set(plan.skipped), {"skipped": len(plan.skipped), "errors": 0, "referred": 0, "duplicates": 0}
    with _progress(len(plan.listed), len(plan.skipped)) as bar:
        if plan.todo.num_rows:
            for batch in _batches(build_dataset(plan)):
                fresh = _first_time(batch, seen, counts)
                writer.add(fresh.filter(pc.not_equal(fresh.column("status"), inference.SKIP)))
                bar.update(batch.num_rows)
        writer.flush()
    plan.run.update(counts, finished_at=parts.utc_now())
    published = parts.read_results(plan.dst, ["path", "sha256"])
    problems = parts.reconcile(plan.listed, seen, published)
    plan.run["status"] = "complete" if not problems else "incomplete: " + "; ".join(problems)
    writer.publish()
    return problems


def _first_time(batch: pa.Table, seen: set, counts: dict) -> pa.Table:
    """Rows whose path this run hasn't had yet (a retried block can't write a path twice)."""
    keep = []
    for path in batch.column("path").to_pylist():
        keep.append(path not in seen)
        seen.add(path)
    counts["duplicates"] += keep.count(False)
    fresh = batch.filter(pa.array(keep, pa.bool_()))
    status = fresh.column("status").to_pylist()
    counts["skipped"] += status.count(inference.SKIP)
    counts["errors"] += status.count(schema.ERROR)
    counts["referred"] += sum(bool(r) for r in fresh.column("refer").to_pylist())
    return fresh


def _batches(ds):
    """The result blocks as they finish (a UsageError raised in a task reaches the CLI by type:
    errors.user_error_in)."""
    yield from ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=2)


def _progress(total: int, initial: int):
    """images/s and ETA on the driver (stderr); off with RAY_DATA_DISABLE_PROGRESS_BARS=1."""
    from tqdm import tqdm

    off = os.environ.get("RAY_DATA_DISABLE_PROGRESS_BARS") == "1"
    return tqdm(total=total, initial=initial, unit="img", desc="classify", disable=off, file=sys.stderr,
                mininterval=1.0 if sys.stderr.isatty() else 30.0, smoothing=0.1)


def run_job(run_dir: str, src: str, dst: str, job: JobConfig | None = None, run_id: str | None = None) -> JobPlan:
    """plan_job + execute; raises ClassifyIncomplete naming the difference when reconciliation fails."""
    plan = plan_job(run_dir, src, dst, job or JobConfig(), run_id)
    problems = execute(plan)
    if problems:
        raise ClassifyIncomplete(f"{dst}: not every input exactly once: " + "; ".join(problems))
    return plan
