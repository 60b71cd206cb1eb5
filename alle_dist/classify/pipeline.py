"""Classify images in bulk: image store → the one inference path → ensemble + referral → result rows.

Core (Ray-free): `Decider` (model outputs → result rows: OOD, ensemble, referral), `Classifier`
(inference.ModelRunner + Decider in one process). Ray shell: `build_dataset` (read + decode tasks →
one model actor per GPU, or CPU actors → decider tasks) over one wave of inputs to read. The driver
loop that plans, runs waves and commits is classify.run. Design and failure behaviour: docs/classify.md.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from .. import schema
from ..config import ClassifyConfig
from ..ensemble import weighted
from ..models import feature_distance, field_stats, inference
from .resolve import Models, load_ood_stats
from .rows import RowMaker

PASSED = ("uri", "sha256", "bytes", "mtime_ns", "etag", "status", "error", "mask_fraction")


class Decider:
    """The CPU half: model outputs → result rows (schema.classify_schema): OOD scores, the weighted
    ensemble and the referral rule. Kept off the GPU actor: OOD scoring is float64 matrix work.
    Rows of inputs whose bytes DST already holds keep status inference.SKIP (the driver drops them)."""

    def __init__(self, models: Models, run_id: str):
        self.spec = models.spec
        self.rows = RowMaker(models.spec, models.model_sha256, run_id)
        self.ood = {b: load_ood_stats(models, b) for b in self.spec.backbones}
        # One image-statistics model: every backbone of a run fits the same one on the same training split.
        self.image_stats = next((s for s in self.ood.values() if field_stats.has_stats(s)), None)
        self.schema = self.rows.schema

    def __call__(self, batch: pa.Table) -> pa.Table:
        ok = inference.ok_mask(batch)
        cols = {c: batch.column(c) for c in PASSED if c in batch.column_names}
        if ok.any():
            self._model_columns(cols, ok, batch)
        return self.rows.complete(cols, batch.num_rows)

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
        d = weighted.apply(self.spec, probs, scores, mf, img)
        names = np.array(list(self.spec.classes) + [schema.REFER], dtype=object)
        scatter = inference.scatter
        cols["label"] = scatter(ok, names[d.label])          # label -1 → names[-1] = 'refer'
        cols["predicted_class"] = scatter(ok, names[np.argmax(d.probs, axis=1)])   # also when referred
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
    """Both halves in one process (tests, the benchmark's bare loop): read rows → result rows."""

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


def build_dataset(todo: pa.Table, models: Models, prep: inference.ReadSpec, cfg: ClassifyConfig, decider: Decider):
    """read + decode + segment (tasks) → models (actor pool) → OOD + ensemble (tasks), lazily, over
    `todo` (classify.planning.TODO_SCHEMA). The input blocks are put in the object store by the driver,
    which owns them: a lost node's blocks are rebuilt from them."""
    import ray.data

    blocks = [todo.slice(i, cfg.batch_size) for i in range(0, max(todo.num_rows, 1), cfg.batch_size)]
    layout = inference.actor_layout(cfg.gpus, cfg.cpu_workers)
    ds = inference.model_outputs(ray.data.from_arrow(blocks), prep, model_dirs(models), layout,
                                 cfg.batch_size, cfg.read_cpus, cfg.decode_tasks)
    return ds.map_batches(_decide, fn_kwargs={"decider": decider},
                          batch_format="pyarrow", batch_size=None, num_cpus=cfg.read_cpus)
