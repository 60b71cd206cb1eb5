"""Stage `train`: Ray Train DDP fine-tuning of one backbone (or several), checkpoints that resume.

Core (Ray-free): `split_rows`, `run_name`, `loop_config`. Ray shell: `train_backbone` drives one
backbone: manifest → oversample (train split, train.balance) → segment + augment (train.augment) →
TorchTrainer running train.loop.train_loop (one worker per GPU; gloo CPU workers without GPUs) →
best / last model → the best model's outputs on every split and the referral statistics
(train.posttrain). Writes RUN/models/<backbone>/ (rundir.ModelDir).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import time

import numpy as np
import pyarrow as pa

from .. import schema
from ..errors import ConfigError
from ..imaging.model_input import WORKING_SIZE
from ..io import storage
from ..models import persistence
from ..models import preprocessing, provenance, registry
from ..rundir import ModelDir, RunDir
from ..prepare.manifest import recorded_id_of
from .loop import LoopConfig, TestHooks, train_loop

log = logging.getLogger("alle_dist.train")

# Test hook: a worker raises once at the start of this epoch, to exercise FailureConfig restarts.
# Read by the driver, passed in the loop config.
FAIL_ENV = "ALLE_DIST_FAIL_AT_EPOCH"
# Test hook: seconds each worker pauses after reporting an epoch, so a test can kill the job at a
# known point (after epoch 1's checkpoint is committed, before epoch 2's).
PAUSE_ENV = "ALLE_DIST_PAUSE_AFTER_EPOCH_S"


# ---------------------------------------------------------------- core (Ray-free)

def run_name(run_dir: str, backbone: str) -> str:
    """Stable Ray Train run name: the same RUN + backbone resumes the same run."""
    key = run_dir.rstrip("/") if storage.is_s3(run_dir) else os.path.abspath(run_dir)
    return f"train-{backbone}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def split_rows(table: pa.Table, split: str, limit: int | None, seed: int) -> pa.Table:
    """The ok rows of one split, in path order; a seeded random subset of `limit` rows if given."""
    mask = [s == split and st == schema.OK for s, st in
            zip(table.column("split").to_pylist(), table.column("status").to_pylist())]
    rows = table.filter(pa.array(mask)).sort_by("path")
    if limit is not None and rows.num_rows > limit:
        pick = np.sort(np.random.default_rng(seed).permutation(rows.num_rows)[:limit])
        rows = rows.take(pa.array(pick))
    return rows


def shuffled(rows: pa.Table, seed: int) -> pa.Table:
    """Oversampled rows come grouped by class: spread them so every shard and batch mixes classes."""
    return rows.take(pa.array(np.random.default_rng(seed).permutation(rows.num_rows)))


def versions() -> dict[str, str]:
    import ray
    import timm
    import torch

    from .. import __version__

    return {"alle_dist": __version__, "ray": ray.__version__, "torch": torch.__version__, "timm": timm.__version__}


# ---------------------------------------------------------------- driver (Ray shell)

def is_finished(out: ModelDir) -> bool:
    """Every output of a completed backbone is there (test_probs.parquet is written last)."""
    return all(storage.exists(u) for u in (out.meta, out.ood, out.probs(schema.VAL), out.probs(schema.TEST)))


def scaling_config(train_cfg):
    """One worker per GPU by default; without GPUs, 2 gloo CPU workers (fewer on a tiny cluster)."""
    from ray.train import ScalingConfig

    from ..runtime import cluster_cpus, cluster_gpus

    gpus, cpus = cluster_gpus(), cluster_cpus()
    gpw = train_cfg.gpus_per_worker if train_cfg.gpus_per_worker is not None else (1.0 if gpus else 0.0)
    if gpw > gpus:
        raise ConfigError(f"train.gpus_per_worker={gpw}: the cluster has {gpus} GPU(s); use --gpus-per-worker 0")
    workers = train_cfg.workers if train_cfg.workers is not None else (int(gpus // gpw) if gpw else max(1, min(2, cpus - 1)))
    # Every worker holds 1 CPU; Ray Data's read / segment / augment tasks need at least one more.
    if workers * gpw > gpus or workers >= cpus:
        raise ConfigError(f"train.workers={workers}: the cluster has {cpus} CPU(s) and {gpus} GPU(s); each "
                          f"worker takes 1 CPU (+{gpw} GPU) and Ray Data needs a CPU: use fewer --workers")
    res = {"CPU": 1, "GPU": gpw} if gpw else {"CPU": 1}
    return ScalingConfig(num_workers=workers, use_gpu=gpw > 0, resources_per_worker=res)


def latest_checkpoint_meta(out: ModelDir, name: str) -> dict | None:
    """Meta of the run's latest checkpoint, sha256-checked, before any worker starts (None: fresh run).

    A damaged checkpoint stops here with ModelIntegrityError instead of burning every worker restart.
    """
    from ray.train import Result

    fs, path = storage.resolve(out.checkpoints)
    if not storage.exists(storage.join(out.checkpoint_run(name), "checkpoint_manager_snapshot.json")):
        return None
    result = Result.from_path(f"{path}/{name}", storage_filesystem=fs)
    if result.checkpoint is None:
        return None
    with result.checkpoint.as_directory() as d:
        return persistence.read_checkpoint(d)[2]


def model_preprocessing(job_cfg, backbone: str, stain=None) -> preprocessing.Preprocessing:
    """The one place training decides a backbone's input: size (the backbone's default unless
    train.image_size), its normalisation, the HSV segmentation unless train.segmented is off, and the
    working resolution of segmentation and field statistics (imaging.model_input.WORKING_SIZE for every
    backbone, so that any ensemble's members share one read: AlexNet's 227² input is resized from it) and the
    stain normalisation `stain` (fit_stain: fitted on the training split when train.stain_norm is set)."""
    train_cfg = job_cfg.train
    size = train_cfg.image_size or registry.default_image_size(backbone)
    mean, std = registry.default_normalisation(backbone)
    return preprocessing.Preprocessing(size, mean, std, job_cfg.segment if train_cfg.segmented else None,
                                       working_size=WORKING_SIZE, stain=stain)


def fit_stain(train_cfg, manifest: pa.Table, source: str):
    """train.stain_norm's reference (imaging.stain.fit_reference) from a seeded sample of
    train.stain_fit_images fields of the train split; None when stain normalisation is off."""
    from ..imaging import stain
    from ..imaging.model_input import decode, resize_square
    from ..prepare.catalog import image_uri

    if train_cfg.stain_norm is None:
        return None
    pick = split_rows(manifest, schema.TRAIN, train_cfg.stain_fit_images, train_cfg.seed)
    # Fitted on the fields as the read path normalises them: at the working resolution.
    fields = (resize_square(decode(storage.read_bytes(image_uri(source, p)), WORKING_SIZE), WORKING_SIZE)
              for p in pick.column("path").to_pylist())
    try:
        ref = stain.fit_reference(fields, train_cfg.stain_norm)
    except ValueError as exc:
        raise ConfigError(f"train.stain_norm={train_cfg.stain_norm}: {exc}; train without --stain-norm") from None
    log.info("stain normalisation %s fitted on %d training fields", ref.method, ref.fitted_on)
    return ref


def loop_config(run: RunDir, job_cfg, backbone: str, classes: list[str], name: str, manifest_id: str,
                prep: preprocessing.Preprocessing, out: ModelDir | None = None) -> LoopConfig:
    """The worker's typed config: the recipe from job_cfg.train; the preprocessing and the manifest it is
    trained on (lineage) recorded in the meta every checkpoint carries. The segment section is left out
    of the recorded config: the preprocessing record owns it."""
    train_cfg = job_cfg.train
    recipe = {k: v for k, v in job_cfg.to_dict().items() if k != "segment"}
    meta = preprocessing.record({"architecture": backbone, "classes": classes, "pretrained": train_cfg.pretrained,
                                 "run_dir": run.root, "run_name": name, "lineage": {"manifest": manifest_id},
                                 "control": train_cfg.control, "config": json.loads(json.dumps(recipe)),
                                 "versions": versions()}, prep)
    return LoopConfig(backbone=backbone, classes=tuple(classes), prep=prep, pretrained=train_cfg.pretrained,
                      lr=train_cfg.lr, epochs=train_cfg.epochs, batch_size=train_cfg.batch_size, seed=train_cfg.seed,
                      compile=train_cfg.compile, meta=meta, hooks=_test_hooks(out or run.model(backbone), name))


def _test_hooks(out: ModelDir, name: str) -> TestHooks:
    """Fault injection from the environment (the resume tests set it for the driver)."""
    fail_at = os.environ.get(FAIL_ENV)
    marker = storage.join(out.checkpoint_run(name), f"injected_failure_{fail_at}")
    return TestHooks(fail_at_epoch=int(fail_at) if fail_at else None, fail_marker=marker,
                     pause_s=float(os.environ.get(PAUSE_ENV, 0)))


def fit(run: RunDir, job_cfg, backbone: str, classes: list[str], datasets: dict, manifest_id: str,
        prep: preprocessing.Preprocessing, out: ModelDir | None = None, tracked=None):
    """Run (or resume) the TorchTrainer of one backbone into `out` (default RUN/models/<backbone>);
    returns the Ray Train Result. A checkpoint made from another manifest is refused, not resumed.
    `tracked` (an MLflow run, alle_dist.tracking) gets each epoch's metrics, logged from the driver."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer

    from ..progress import Relay
    from .epoch_log import EpochLines

    out = out or run.model(backbone)
    name = run_name(run.root, out.root.rstrip("/").rsplit("/", 1)[-1])    # the folder: a control resumes apart
    previous = latest_checkpoint_meta(out, name)
    if previous:
        provenance.check_trained_on(out, previous, manifest_id, backbone, run.root)
        log.info("%s: resuming run %s after epoch %d", backbone, name, previous["epochs"][-1]["epoch"])
    fs, path = storage.resolve(out.checkpoints)
    on_metrics = (lambda m: tracked.log_metrics(m, step=int(m["epoch"]))) if tracked is not None else None
    with Relay(on_metrics) as relay:   # one line per epoch on the driver (train.epoch_log)
        run_config = RunConfig(
            name=name, storage_path=path, storage_filesystem=fs,
            failure_config=FailureConfig(max_failures=job_cfg.train.max_failures),
            # Keep the best (lowest validation loss) and, always, the latest checkpoint.
            checkpoint_config=CheckpointConfig(num_to_keep=2, checkpoint_score_attribute="val_loss",
                                               checkpoint_score_order="min"),
            callbacks=[EpochLines(relay.queue, backbone, job_cfg.train.epochs)])
        loop_cfg = loop_config(run, job_cfg, backbone, classes, name, manifest_id, prep, out)
        trainer = TorchTrainer(train_loop, train_loop_config=loop_cfg, scaling_config=scaling_config(job_cfg.train),
                               run_config=run_config, datasets=datasets)
        return trainer.fit()


def publish(result, out: ModelDir) -> dict:
    """Best checkpoint → out/, latest → out/last/ (same bytes, sha256 checked); returns out's meta."""
    best = result.get_best_checkpoint("val_loss", "min") or result.checkpoint
    with result.checkpoint.as_directory() as d:
        last = persistence.copy_model(d, out.last.root, optimizer=None)
    with best.as_directory() as d:
        best_epoch = persistence.read_meta(d)["epochs"][-1]["epoch"]
        return persistence.copy_model(d, out.root, optimizer=None, epochs=last["epochs"], resumed_at=last["resumed_at"],
                                  best_epoch=best_epoch, last_epoch=last["epochs"][-1]["epoch"])


def train_backbone(run_dir: str, job_cfg, retrain: bool = False, tracker=None) -> dict:
    """Train (or resume, or skip when finished) `job_cfg.train.backbone`; returns its final meta. With a
    `tracker` (alle_dist.tracking) the training is one MLflow run: the recipe, every epoch, the model id."""
    from .. import config, fields
    from ..prepare.manifest import read_manifest
    from .posttrain import export_splits

    train_cfg, backbone, run = job_cfg.train, job_cfg.train.backbone, RunDir(run_dir)
    out = _out(run, train_cfg)
    table, source, classes = read_manifest(run)    # checks the manifest's identity
    manifest_id = recorded_id_of(table)
    if retrain and storage.exists(out.root):
        storage.delete(out.root)
    elif is_finished(out):
        meta = persistence.check_files(out.root)   # a damaged model is never "already trained"
        provenance.check_trained_on(out, meta, manifest_id, backbone, run.root)
        log.info("%s: already trained in %s (pass --retrain to train it again)", backbone, out.root)
        return meta
    splits = {s: split_rows(table, s, train_cfg.limit, train_cfg.seed) for s in schema.SPLITS}
    prep = model_preprocessing(job_cfg, backbone, fit_stain(train_cfg, table, source))
    config.save_resolved(out.file(ModelDir.TRAIN_CONFIG), job_cfg, run_dir=run.root, backbone=backbone)
    datasets = _datasets(out, job_cfg, prep, splits, source, classes)
    t0 = time.perf_counter()
    with _tracked(tracker, out, job_cfg, manifest_id) as tracked:
        result = fit(run, job_cfg, backbone, classes, datasets, manifest_id, prep, out, tracked)
        publish(result, out)
        log.info("%s: scoring the train, val and test splits with the best model", backbone)
        if train_cfg.control:
            from .control import export_control

            meta = export_control(out, splits, source, classes, _dataset_segment(job_cfg, prep), prep.image_size,
                                  train_cfg.control, prep.working_size, prep.stain)
        else:
            meta = export_splits(out, splits, source, classes)
        if tracked is not None:   # the final identity: meta.json with its referral statistics
            tracked.set_tags({"alle_dist.model_id": persistence.model_id(meta), "alle_dist.best_epoch": meta["best_epoch"]})
    log.info("%s: trained in %.0f s; best epoch %d", backbone, time.perf_counter() - t0, meta["best_epoch"])
    return meta


def _tracked(tracker, out: ModelDir, job_cfg, manifest_id: str):
    """The MLflow run of one backbone's training (a no-op context without a tracker)."""
    import contextlib

    if tracker is None:
        return contextlib.nullcontext()
    recipe = {k: v for k, v in job_cfg.to_dict().items() if k in ("train", "augment", "segment")}
    name = out.root.rstrip("/").rsplit("/", 1)[-1]
    return tracker.run(f"train {name}", params=recipe, tags={"alle_dist.backbone": name,
                                                             "alle_dist.lineage.manifest": manifest_id})


def _dataset_segment(job_cfg, prep: preprocessing.Preprocessing):
    """The segmentation the image stream runs: the model's, or for a shortcut control (which may be
    trained on originals) the mask it removes."""
    return prep.segment or (job_cfg.segment if job_cfg.train.control else None)


def _datasets(out: ModelDir, job_cfg, prep: preprocessing.Preprocessing, splits: dict, source: str,
              classes: list[str]) -> dict:
    """The oversampled, augmented train stream and the plain val stream (Ray Data); the oversampling
    record is written beside the model."""
    from . import augment, balance

    train_cfg = job_cfg.train
    balanced, record = balance.oversample(splits[schema.TRAIN], train_cfg.seed)
    storage.write_json(out.file(ModelDir.OVERSAMPLING), record)
    log.info("%s: %d epochs on %d training images (%d after oversampling), %d for validation", train_cfg.backbone,
             train_cfg.epochs, splits[schema.TRAIN].num_rows, balanced.num_rows, splits[schema.VAL].num_rows)
    seg, cols = _dataset_segment(job_cfg, prep), ["image", "label"]
    common = {"image_size": prep.image_size, "seg": seg, "control": train_cfg.control,
              "working_size": prep.working_size, "stain": prep.stain}
    return {  # seed=None: Ray Train re-runs the pipeline each epoch, with fresh augmentations
        "train": augment.image_dataset(shuffled(balanced, train_cfg.seed), source, classes, aug=job_cfg.augment,
                                       seed=None, **common).select_columns(cols),
        "val": augment.image_dataset(splits[schema.VAL], source, classes, aug=None, **common).select_columns(cols),
    }


def _out(run: RunDir, train_cfg) -> ModelDir:
    return run.control_model(train_cfg.backbone, train_cfg.control) if train_cfg.control else run.model(train_cfg.backbone)


def main(args: argparse.Namespace) -> int:
    import dataclasses

    from .. import config, fields
    from ..runtime import init_ray
    from ..tracking import open_tracker

    job_cfg = config.job_config(args.config, train=fields.overrides(args, config.TrainConfig),
                                segment=fields.overrides(args, config.SegmentConfig),
                                augment={"recipe": getattr(args, "augment_recipe", None)})
    RunDir(args.run_dir).check_ready("train")   # a wrong RUN fails in a second, before Ray starts
    names = registry.expand(job_cfg.train.backbone)
    for name in names:  # before any Ray start-up: a missing weights file fails in seconds
        registry.check_pretrained(name, job_cfg.train.pretrained)
    tracker = open_tracker(getattr(args, "mlflow", None), "train", args.run_dir)   # unreachable: fails now
    jobs = {name: dataclasses.replace(job_cfg, train=dataclasses.replace(job_cfg.train, backbone=name)) for name in names}
    # Finished backbones first, without Ray: their files are hashed (a damaged model is refused now)
    done = {n: train_backbone(args.run_dir, backbone_cfg) for n, backbone_cfg in jobs.items()
            if not args.retrain and is_finished(_out(RunDir(args.run_dir), backbone_cfg.train))}
    if len(done) < len(jobs):
        init_ray(args.num_cpus)
    for name, backbone_cfg in jobs.items():
        meta = done.get(name) or train_backbone(args.run_dir, backbone_cfg, retrain=args.retrain, tracker=tracker)
        best = next(e for e in meta["epochs"] if e["epoch"] == meta["best_epoch"])
        print(f"{name}: best epoch {meta['best_epoch']} val_acc {best['val_acc']:.4f} "
              f"val_loss {best['val_loss']:.4f} → {_out(RunDir(args.run_dir), backbone_cfg.train).root}")
    return 0
