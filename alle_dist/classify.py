"""Classify images in bulk: image store → segmentation → both backbones + ensemble → Parquet, exactly once.

Core (Ray-free): `resolve_models(run_dir)`, `ModelRunner` (prepared rows → model outputs, the GPU
half), `Decider` (model outputs → result rows: OOD, ensemble, referral), `Classifier` (both).
Ray shell: `plan_job` (check models, list, skip what DST already holds) → `execute` (read + decode
tasks → one model actor per GPU, or CPU actors → decider tasks → the driver's exactly-once writer
→ reconciliation); `run_job` = both.
Design, row schema and failure behaviour: docs/classify.md.
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import sys
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import __version__, classify_io, ensemble, imagestats, modelio, ood, schema, storage
from .config import ClassifyConfig, ConfigError, JobConfig, SegmentConfig

# Parquet key-value metadata of every part (never anything from the environment: no credentials).
META_RUN_ID, META_MODEL = b"alle_dist.run_id", b"alle_dist.model_sha256"


# ---------------------------------------------------------------- the models (Ray-free)

@dataclass(frozen=True)
class Models:
    """What the driver checks in RUN before any worker starts."""
    run_dir: str
    spec: ensemble.EnsembleSpec
    metas: dict
    model_sha256: str             # one hash over every backbone's weights + OOD stats + ensemble.json
    hashes: dict = field(default_factory=dict)


def model_dir(run_dir: str, backbone: str) -> str:
    return storage.join(run_dir, "models", backbone)


def resolve_models(run_dir: str) -> Models:
    """Load the spec and check every model file's sha256 now (ModelIntegrityError), in the driver."""
    spec = ensemble.load_spec(run_dir)
    metas, hashes = {}, {}
    for b in spec.backbones:
        _, meta = modelio.load_state(model_dir(run_dir, b))   # reads + checks the weights' sha256
        if tuple(meta["classes"]) != spec.classes:
            raise ConfigError(f"{model_dir(run_dir, b)}: classes {meta['classes']} differ from "
                              f"ensemble.json's {list(spec.classes)}; rerun `alle-dist tune`")
        metas[b], hashes[b] = meta, meta["sha256"]
        if meta.get("ood"):
            hashes[f"{b}/{modelio.OOD_FILE}"] = meta["ood"]["sha256"]
    hashes[ensemble.SPEC_FILE] = hashlib.sha256(storage.read_bytes(ensemble.spec_uri(run_dir))).hexdigest()
    combined = hashlib.sha256("\n".join(f"{k} {v}" for k, v in sorted(hashes.items())).encode()).hexdigest()
    return Models(run_dir, spec, metas, combined, hashes)


def prep_spec(models: Models, src: str, job: JobConfig) -> classify_io.PrepSpec:
    """The models' own preprocessing: segmented unless trained on originals; the largest input size
    (the Predictor resizes on the device for a backbone that wants less)."""
    segmented = all(_train_cfg(m).get("segmented", True) for m in models.metas.values())
    size = max(int(m["image_size"]) for m in models.metas.values())
    seg = _segment_cfg(next(iter(models.metas.values())), job.segment) if segmented else None
    stats = any(imagestats.has_stats(load_ood_stats(models, b)) for b in models.spec.backbones)
    return classify_io.PrepSpec(src=src, image_size=size, segment=seg, max_pixels=job.classify.max_pixels,
                                image_stats=stats)


def _train_cfg(meta: dict) -> dict:
    cfg = meta.get("config") or {}
    return cfg.get("train", cfg) if isinstance(cfg, dict) else {}


def _segment_cfg(meta: dict, default: SegmentConfig) -> SegmentConfig:
    """The segmentation the models were trained with, when meta.json records it."""
    cfg = meta.get("config") or {}
    seg = cfg.get("segment") if isinstance(cfg, dict) else None
    return SegmentConfig(**seg) if isinstance(seg, dict) else default


def load_ood_stats(models: Models, backbone: str) -> dict | None:
    """The backbone's OOD statistics (sha256 checked), or None when it has none (no OOD referral)."""
    return modelio.load_ood(model_dir(models.run_dir, backbone)) if models.metas[backbone].get("ood") else None


PROBS, FEATURES = "_probs_", "_features_"   # model-output columns between the actors and the deciders


class ModelRunner:
    """The GPU half: prepared rows → the same rows without images, plus every backbone's
    probabilities and penultimate features (float32 bytes per ok row). Error and skip rows pass."""

    def __init__(self, models: Models, device: str = "cpu"):
        from .predict import Predictor

        self.predictors = {b: Predictor(model_dir(models.run_dir, b), device) for b in models.spec.backbones}
        self.image_size = max(p.image_size for p in self.predictors.values())

    def __call__(self, batch: pa.Table) -> pa.Table:
        ok = classify_io.ok_mask(batch)
        images = classify_io.images_of(batch, self.image_size)
        out = batch.drop_columns(["image"])   # image_stats travel on to the deciders
        for b, predictor in self.predictors.items():
            res = predictor(images) if ok.any() else {"probs": images[:0, 0, 0], "features": images[:0, 0, 0]}
            out = out.append_column(PROBS + b, classify_io.pack_rows(ok, res["probs"]))
            out = out.append_column(FEATURES + b, classify_io.pack_rows(ok, res["features"]))
        return out


class Decider:
    """The CPU half: model outputs → result rows (schema.classify_schema): OOD scores, the weighted
    ensemble and the referral rule. Kept off the GPU actor: OOD scoring is float64 matrix work."""

    def __init__(self, models: Models, run_id: str):
        self.spec, self.run_id, self.model_sha256 = models.spec, run_id, models.model_sha256
        self.ood = {b: load_ood_stats(models, b) for b in self.spec.backbones}
        # One image-statistics model: every backbone of a run fits the same one on the same training split.
        self.image_stats = next((s for s in self.ood.values() if imagestats.has_stats(s)), None)
        self.schema = schema.classify_schema(list(self.spec.classes), list(self.spec.backbones))

    def __call__(self, batch: pa.Table) -> pa.Table:
        ok = classify_io.ok_mask(batch)
        cols = self._base_columns(batch)
        if ok.any():
            self._model_columns(cols, ok, batch)
        return pa.Table.from_arrays([classify_io.as_array(cols.get(f.name), f.type, len(ok))
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
            probs[b] = classify_io.unpack_rows(batch.column(PROBS + b), ok)
            if self.ood[b] is not None:
                scores[b] = ood.score(classify_io.unpack_rows(batch.column(FEATURES + b), ok), self.ood[b])
        mf = batch.column("mask_fraction").to_numpy(zero_copy_only=False)[ok]
        img = None
        if self.image_stats is not None:
            img = imagestats.score(classify_io.unpack_rows(batch.column("image_stats"), ok), self.image_stats)
            cols["image_score"] = classify_io.scatter(ok, img)
        d = ensemble.apply(self.spec, probs, scores, mf, img)
        names = np.array(list(self.spec.classes) + [schema.REFER], dtype=object)
        scatter = classify_io.scatter
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
        self.runner, self.decider = ModelRunner(models, device), Decider(models, run_id)
        self.image_size = self.runner.image_size

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.decider(self.runner(batch))


# ---------------------------------------------------------------- the Ray shell

class _ModelActor:
    """One per GPU (or CPU worker): the models load once per actor, batches stream through."""

    def __init__(self, models: Models, device: str, threads: int):
        import torch

        torch.set_num_threads(max(1, threads))
        self.runner = ModelRunner(models, device)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.runner(batch)


def _decide(batch: pa.Table, decider: Decider) -> pa.Table:
    return decider(batch)


@dataclass
class JobPlan:
    src: str
    dst: str
    models: Models
    prep: classify_io.PrepSpec
    cfg: ClassifyConfig
    listed: set
    todo: pa.Table
    skipped: list
    manifest: dict
    run: dict


def plan_job(run_dir: str, src: str, dst: str, job: JobConfig, run_id: str | None = None) -> JobPlan:
    """Check the models, list SRC, and drop what DST already holds (Ray-free; fails before any work)."""
    models = resolve_models(run_dir)
    manifest = classify_io.load_manifest(dst)
    _check_same_models(dst, manifest, models)
    listing = storage.list_files(src, schema.IMAGE_SUFFIXES)
    done = classify_io.done_index(dst)
    todo, skipped = classify_io.plan(listing, done, job.classify.verify_sha256)
    src = storage.absolute(src)   # recorded in DST/_manifest.json: the rows' paths are relative to it
    run = {"run_id": run_id or classify_io.new_run_id(), "src": src, "started_at": classify_io.utc_now(),
           "inputs": len(listing), "status": "running"}
    return JobPlan(src, dst, models, prep_spec(models, src, job), job.classify,
                   {p for p, _ in listing}, todo, skipped, manifest, run)


def _check_same_models(dst: str, manifest: dict, models: Models) -> None:
    prev = manifest.get("model_sha256")
    if prev and prev != models.model_sha256:
        raise ConfigError(f"{dst}: holds results of another model ({prev[:12]}…, this run dir is "
                          f"{models.model_sha256[:12]}…); classify into a new --output")
    manifest.update({"model_sha256": models.model_sha256, "models": models.hashes,
                     "backbones": list(models.spec.backbones), "classes": list(models.spec.classes)})


def build_dataset(plan: JobPlan):
    """read + decode + segment (tasks) → models (actor pool) → OOD + ensemble (tasks), lazily."""
    import ray.data

    cfg = plan.cfg
    n = max(plan.todo.num_rows, 1)
    blocks = [plan.todo.slice(i, cfg.batch_size) for i in range(0, n, cfg.batch_size)]
    read_compute = ray.data.TaskPoolStrategy(size=cfg.decode_tasks) if cfg.decode_tasks else None
    ds = ray.data.from_arrow(blocks).map_batches(
        classify_io.prepare_batch, fn_kwargs={"spec": plan.prep}, batch_format="pyarrow",
        batch_size=None, num_cpus=cfg.read_cpus, compute=read_compute)
    actors, device, actor_res, threads = _actor_layout(cfg)
    ds = ds.map_batches(
        _ModelActor, fn_constructor_kwargs={"models": plan.models, "device": device, "threads": threads},
        batch_format="pyarrow", batch_size=cfg.batch_size,
        compute=ray.data.ActorPoolStrategy(size=actors), **actor_res)
    # The decider (with the OOD statistics) goes to the object store once, shared by every task.
    return ds.map_batches(_decide, fn_kwargs={"decider": Decider(plan.models, plan.run["run_id"])},
                          batch_format="pyarrow", batch_size=None, num_cpus=cfg.read_cpus)


def _actor_layout(cfg: ClassifyConfig) -> tuple[int, str, dict, int]:
    """(actors, device, resources per actor, torch threads): one actor per GPU; without GPUs, CPU
    actors that leave at least half the CPUs to the read tasks (reads never starve)."""
    from .runtime import cluster_cpus, cluster_gpus

    gpus = cfg.gpus if cfg.gpus is not None else cluster_gpus()
    if gpus > cluster_gpus():   # an actor asking for a GPU the cluster lacks would wait forever
        raise ConfigError(f"--gpus {gpus}: the Ray cluster has {cluster_gpus()} GPU(s); use --gpus "
                          f"{cluster_gpus()} (0 = CPU actors)")
    if gpus > 0:
        return gpus, "cuda", {"num_gpus": 1, "num_cpus": 1}, 1
    cpus = cluster_cpus()
    actors = cfg.cpu_workers or max(1, cpus // 2)
    per_actor = min(1.0, cpus / (2 * actors))
    return actors, "cpu", {"num_cpus": per_actor}, max(1, int(per_actor))


def execute(plan: JobPlan) -> list[str]:
    """Run the pipeline, write and publish parts, reconcile; returns the problems ([] = exactly once)."""
    out_schema = schema.classify_schema(list(plan.models.spec.classes), list(plan.models.spec.backbones))
    out_schema = out_schema.with_metadata({META_RUN_ID: plan.run["run_id"].encode(),
                                           META_MODEL: plan.models.model_sha256.encode()})
    plan.manifest["runs"].append(plan.run)
    writer = classify_io.PartWriter(plan.dst, plan.manifest, plan.run, out_schema, plan.cfg.rows_per_file)
    seen, counts = set(plan.skipped), {"skipped": len(plan.skipped), "errors": 0, "referred": 0, "duplicates": 0}
    with _progress(len(plan.listed), len(plan.skipped)) as bar:
        if plan.todo.num_rows:
            for batch in _batches(build_dataset(plan)):
                fresh = _first_time(batch, seen, counts)
                writer.add(fresh.filter(pc.not_equal(fresh.column("status"), classify_io.SKIP)))
                bar.update(batch.num_rows)
        writer.flush()
    plan.run.update(counts, finished_at=classify_io.utc_now())
    published = classify_io.read_results(plan.dst, ["path", "sha256"])
    problems = classify_io.reconcile(plan.listed, seen, published)
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
    counts["skipped"] += status.count(classify_io.SKIP)
    counts["errors"] += status.count(schema.ERROR)
    counts["referred"] += sum(bool(r) for r in fresh.column("refer").to_pylist())
    return fresh


_USER_ERRORS = {"alle_dist.storage.StorageError": storage.StorageError, "alle_dist.config.ConfigError": ConfigError}


def _batches(ds):
    """The result blocks as they finish; an S3 403 inside a read task surfaces as StorageError.

    Ray Data re-raises a task's error as RayTaskError(UserCodeException) whose cause chain is gone
    (only the remote traceback text survives), so the user error is recovered from that text.
    """
    try:
        yield from ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=2)
    except Exception as exc:  # noqa: BLE001 - re-raised unless it carries a user error
        for line in reversed(str(exc).splitlines()):
            name, _, msg = line.partition(": ")
            if name.strip() in _USER_ERRORS and msg:
                raise _USER_ERRORS[name.strip()](msg.strip()) from None
        raise


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


class ClassifyIncomplete(RuntimeError):
    """The final reconciliation found inputs missing or duplicated (the message names them)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-dir", required=True, metavar="RUN", help="run directory with models/ and ensemble.json")
    p.add_argument("--input", required=True, metavar="SRC", help="folder or s3://bucket/prefix of images (recursive)")
    p.add_argument("--output", required=True, metavar="DST", help="folder or s3:// prefix for *.parquet + _manifest.json")
    p.add_argument("--batch-size", type=int, default=None, help="images per model call (default: classify.batch_size, 64)")
    p.add_argument("--gpus", type=int, default=None, help="GPU actors (default: every GPU; 0 = CPU actors)")
    p.add_argument("--cpu-workers", type=int, default=None, help="CPU model actors without GPUs (default: CPUs/2)")
    p.add_argument("--decode-tasks", type=int, default=None, help="concurrent read + decode tasks (default: as CPUs allow)")
    p.add_argument("--rows-per-file", type=int, default=None, help="result rows per Parquet part (default 100000)")
    p.add_argument("--trust-size", action="store_true",
                   help="on a rerun, skip inputs on path + size alone instead of re-reading them to confirm sha256")


def main(args: argparse.Namespace) -> int:
    from . import config
    from .runtime import init_ray

    overrides = {"batch_size": args.batch_size, "gpus": args.gpus, "cpu_workers": args.cpu_workers,
                 "decode_tasks": args.decode_tasks, "rows_per_file": args.rows_per_file,
                 "verify_sha256": False if args.trust_size else None}
    job = config.job_config(args.config, classify=overrides)
    plan = plan_job(args.run_dir, args.input, args.output, job)   # user errors before Ray starts
    init_ray(args.num_cpus)
    print(f"classify: {len(plan.listed)} inputs, {len(plan.skipped)} done already (path+size), "
          f"run {plan.run['run_id']}", file=sys.stderr)
    problems = execute(plan)
    config.save_resolved(storage.join(args.output, "classify_config.yaml"), job, run_dir=args.run_dir,
                         input=args.input, output=args.output, run_id=plan.run["run_id"])
    r = plan.run
    print(f"classify: {r['inputs']} inputs: {r.get('rows_written', 0)} rows written, {r['skipped']} skipped "
          f"(done before), {r['errors']} errors, {r['referred']} referred → {args.output}")
    for p in problems:
        print(f"classify: error: {p}", file=sys.stderr)
    return 1 if problems else 0
