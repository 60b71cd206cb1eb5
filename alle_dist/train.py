"""Train backbones: Ray Train DDP fine-tuning with the paper's recipe, checkpoints that resume.

Core (Ray-free): `split_rows`, `run_name`, `train_epoch`, `evaluate`, `replica_digest`. Ray shell: `train_loop` runs on each Train worker (one per
GPU; gloo CPU workers without GPUs), fed by Ray Data shards; `train_backbone` drives one backbone:
manifest → oversample (train split) → segment + augment → TorchTrainer → best / last model →
probabilities and OOD statistics with the best model (alle_dist.export). Writes RUN/models/<backbone>/.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import tempfile
import time

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from . import backbones, modelio, schema, storage
from .predict import to_model_input

log = logging.getLogger("alle_dist.train")

# Test hook: a worker raises once at the start of this epoch, to exercise FailureConfig restarts.
# Read by the driver, passed in the loop config.
FAIL_ENV = "ALLE_DIST_FAIL_AT_EPOCH"
# Test hook: seconds each worker pauses after reporting an epoch, so a test can kill the job at a
# known point (after epoch 1's checkpoint is committed, before epoch 2's).
PAUSE_ENV = "ALLE_DIST_PAUSE_AFTER_EPOCH_S"
DONE_FILES = (modelio.META_FILE, modelio.OOD_FILE, "val_probs.parquet", "test_probs.parquet")


# ---------------------------------------------------------------- core (Ray-free)

def model_dir(run_dir: str, backbone: str) -> str:
    return storage.join(run_dir, "models", backbone)


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


def train_epoch(model, opt, batches, image_size: int, mean, std, amp: bool) -> tuple[float, int]:
    """One pass over `batches` ({"image": uint8 NHWC, "label"} on the device): (summed loss, images)."""
    model.train()
    total, n = torch.zeros((), dtype=torch.float64, device=mean.device), 0
    for batch in batches:
        loss = train_step(model, opt, batch["image"], batch["label"], image_size, mean, std, amp)
        total += loss * len(batch["label"])  # summed on the device: no GPU sync per step
        n += len(batch["label"])
    return float(total), n


def train_step(model, opt, images, labels, image_size: int, mean, std, amp: bool) -> torch.Tensor:
    """One Adam step on a uint8 NHWC batch already on the device; returns the (detached) loss."""
    x = to_model_input(images, image_size, mean, std)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        loss = F.cross_entropy(model(x), labels)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


@torch.no_grad()
def evaluate(model, batches, image_size: int, mean, std, amp: bool) -> tuple[float, int, int]:
    """(summed cross-entropy, correct, images) over `batches`, without augmentation."""
    model.eval()
    total, correct, n = 0.0, 0, 0
    for batch in batches:
        x = to_model_input(batch["image"], image_size, mean, std)
        y = batch["label"]
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            logits = model(x).float()
        total += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
        n += len(y)
    return total, correct, n


def replica_digest(model: torch.nn.Module) -> str:
    """sha256 of the parameters: equal on every DDP rank when gradients are synchronised."""
    h = hashlib.sha256()
    for name, p in modelio.unwrap(model).named_parameters():
        h.update(name.encode())
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def versions() -> dict[str, str]:
    import ray
    import timm

    from . import __version__

    return {"alle_dist": __version__, "ray": ray.__version__, "torch": torch.__version__, "timm": timm.__version__}


# ---------------------------------------------------------------- Ray Train worker

def _all_sum(values: list[float], device) -> list[float]:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def _all_digests(model) -> list[str]:
    import torch.distributed as dist

    digest = replica_digest(model)
    if not (dist.is_available() and dist.is_initialized()):
        return [digest]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, digest)
    return out


def _setup(cfg: dict, device):
    """Model (restored from the Train checkpoint if there is one), optimizer, history, resume point."""
    import ray.train
    import ray.train.torch

    ckpt = ray.train.get_checkpoint()
    restored = None
    if ckpt is not None:
        with ckpt.as_directory() as d:
            restored = modelio.read_checkpoint(d)
    model = backbones.create(cfg["backbone"], len(cfg["classes"]), "none" if restored else cfg["pretrained"])
    if restored:
        model.load_state_dict(restored[0])
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(model)
    if cfg.get("compile") and device.type == "cuda":
        model = torch.compile(model)
    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    meta = restored[2] if restored else {}
    if restored:
        modelio.restore_optimizer(opt, restored[1], meta["optimizer"]["param_groups"])
    return model, opt, list(meta.get("epochs", [])), list(meta.get("resumed_at", []))


def _maybe_fail(cfg: dict, epoch: int, last_rank: bool) -> None:
    """The FAIL_ENV test hook: the last rank raises once at the start of that epoch (a marker file
    beside the checkpoints remembers that it did, across restarts and drivers)."""
    marker = cfg.get("fail_marker")
    if epoch != cfg.get("fail_at_epoch") or not last_rank or storage.exists(marker):
        return
    storage.write_bytes(marker, b"injected\n")
    raise RuntimeError(f"injected failure at epoch {epoch} ({FAIL_ENV})")


def train_loop(cfg: dict) -> None:
    """Ray Train worker: the paper's recipe (Adam, CE) with per-epoch validation and checkpoints."""
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    amp = device.type == "cuda"
    torch.backends.cudnn.benchmark = amp  # fixed input size: cuDNN picks its fastest algorithms once
    model, opt, history, resumed_at = _setup(cfg, device)
    start = history[-1]["epoch"] + 1 if history else 1
    if history and start <= cfg["epochs"]:
        resumed_at.append(start)
    mean = torch.tensor(cfg["mean"], device=device)
    std = torch.tensor(cfg["std"], device=device)
    train_shard, val_shard = ray.train.get_dataset_shard("train"), ray.train.get_dataset_shard("val")
    size, bs = cfg["image_size"], cfg["batch_size"]
    for epoch in range(start, cfg["epochs"] + 1):
        _maybe_fail(cfg, epoch, rank == world - 1)
        torch.manual_seed(cfg["seed"] * 1000 + epoch * 10 + rank)  # dropout etc.: reproducible per epoch
        t0 = time.perf_counter()
        batches = train_shard.iter_torch_batches(batch_size=bs, device=device, local_shuffle_buffer_size=4 * bs,
                                                 local_shuffle_seed=cfg["seed"] + epoch)
        tl, tn = train_epoch(model, opt, batches, size, mean, std, amp)
        train_s = time.perf_counter() - t0
        vl, vc, vn = evaluate(modelio.unwrap(model), val_shard.iter_torch_batches(batch_size=bs, device=device),
                              size, mean, std, amp)
        tl, tn, vl, vc, vn = _all_sum([tl, tn, vl, vc, vn], device)
        digests = _all_digests(model)
        entry = {"epoch": epoch, "train_loss": tl / max(tn, 1), "val_loss": vl / max(vn, 1),
                 "val_acc": vc / max(vn, 1), "train_images": int(tn), "val_images": int(vn),
                 "train_images_per_s": tn / max(train_s, 1e-9), "seconds": time.perf_counter() - t0,
                 "world_size": world, "replica_digests": digests}
        history.append(entry)
        metrics = {k: entry[k] for k in ("epoch", "train_loss", "val_loss", "val_acc")}
        if rank != 0:
            ray.train.report(metrics)
        else:
            with tempfile.TemporaryDirectory() as d:
                modelio.write_checkpoint(d, model, opt, {**cfg["meta"], "epochs": history, "resumed_at": resumed_at})
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        time.sleep(cfg.get("pause_s", 0.0))


# ---------------------------------------------------------------- driver (Ray shell)

def is_finished(out: str) -> bool:
    """Every output of a completed backbone is there (test_probs.parquet is written last)."""
    return all(storage.exists(storage.join(out, f)) for f in DONE_FILES)


def scaling_config(cfg):
    """One worker per GPU by default; without GPUs, 2 gloo CPU workers (fewer on a tiny cluster)."""
    from ray.train import ScalingConfig

    from .config import ConfigError
    from .runtime import cluster_cpus, cluster_gpus

    gpus, cpus = cluster_gpus(), cluster_cpus()
    gpw = cfg.gpus_per_worker if cfg.gpus_per_worker is not None else (1.0 if gpus else 0.0)
    if gpw > gpus:
        raise ConfigError(f"train.gpus_per_worker={gpw}: the cluster has {gpus} GPU(s); use --gpus-per-worker 0")
    workers = cfg.workers if cfg.workers is not None else (int(gpus // gpw) if gpw else max(1, min(2, cpus - 1)))
    # Every worker holds 1 CPU; Ray Data's read / segment / augment tasks need at least one more.
    if workers * gpw > gpus or workers >= cpus:
        raise ConfigError(f"train.workers={workers}: the cluster has {cpus} CPU(s) and {gpus} GPU(s); each "
                          f"worker takes 1 CPU (+{gpw} GPU) and Ray Data needs a CPU: use fewer --workers")
    res = {"CPU": 1, "GPU": gpw} if gpw else {"CPU": 1}
    return ScalingConfig(num_workers=workers, use_gpu=gpw > 0, resources_per_worker=res)


def _storage(out: str) -> tuple:
    fs, path = storage.resolve(storage.join(out, "checkpoints"))
    return fs, path


def latest_checkpoint_meta(out: str, name: str) -> dict | None:
    """Meta of the run's latest checkpoint, sha256-checked, before any worker starts (None: fresh run).

    A damaged checkpoint stops here with ModelIntegrityError instead of burning every worker restart.
    """
    from ray.train import Result

    fs, path = _storage(out)
    uri = storage.join(out, "checkpoints", name)
    if not storage.exists(storage.join(uri, "checkpoint_manager_snapshot.json")):
        return None
    result = Result.from_path(f"{path}/{name}", storage_filesystem=fs)
    if result.checkpoint is None:
        return None
    with result.checkpoint.as_directory() as d:
        return modelio.read_checkpoint(d)[2]


def _loop_config(run_dir: str, jcfg, backbone: str, classes: list[str], name: str) -> dict:
    cfg = jcfg.train
    size = cfg.image_size or backbones.default_image_size(backbone)
    mean, std = backbones.default_normalisation(backbone)
    meta = {"architecture": backbone, "classes": classes, "image_size": size, "mean": list(mean),
            "std": list(std), "pretrained": cfg.pretrained, "run_dir": str(run_dir), "run_name": name,
            "config": json.loads(json.dumps(jcfg.to_dict())), "versions": versions()}
    fail_at = os.environ.get(FAIL_ENV)
    marker = storage.join(model_dir(run_dir, backbone), "checkpoints", name, f"injected_failure_{fail_at}")
    return {"backbone": backbone, "classes": classes, "image_size": size, "mean": list(mean), "std": list(std),
            "pretrained": cfg.pretrained, "lr": cfg.lr, "epochs": cfg.epochs, "batch_size": cfg.batch_size,
            "seed": cfg.seed, "compile": cfg.compile, "meta": meta,
            "fail_at_epoch": int(fail_at) if fail_at else None, "fail_marker": marker,
            "pause_s": float(os.environ.get(PAUSE_ENV, 0))}


def fit(run_dir: str, jcfg, backbone: str, classes: list[str], datasets: dict):
    """Run (or resume) the TorchTrainer of one backbone; returns the Ray Train Result."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer

    out, name = model_dir(run_dir, backbone), run_name(run_dir, backbone)
    previous = latest_checkpoint_meta(out, name)
    if previous:
        log.info("%s: resuming run %s after epoch %d", backbone, name, previous["epochs"][-1]["epoch"])
    fs, path = _storage(out)
    run_config = RunConfig(
        name=name, storage_path=path, storage_filesystem=fs,
        failure_config=FailureConfig(max_failures=jcfg.train.max_failures),
        # Keep the best (lowest validation loss) and, always, the latest checkpoint.
        checkpoint_config=CheckpointConfig(num_to_keep=2, checkpoint_score_attribute="val_loss",
                                           checkpoint_score_order="min"))
    trainer = TorchTrainer(train_loop, train_loop_config=_loop_config(run_dir, jcfg, backbone, classes, name),
                           scaling_config=scaling_config(jcfg.train), run_config=run_config, datasets=datasets)
    return trainer.fit()


def publish(result, out: str) -> dict:
    """Best checkpoint → out/, latest → out/last/ (same bytes, sha256 checked); returns out's meta."""
    best = result.get_best_checkpoint("val_loss", "min") or result.checkpoint
    with result.checkpoint.as_directory() as d:
        last = modelio.copy_model(d, storage.join(out, "last"), optimizer=None)
    with best.as_directory() as d:
        best_epoch = modelio.read_meta(d)["epochs"][-1]["epoch"]
        return modelio.copy_model(d, out, optimizer=None, epochs=last["epochs"], resumed_at=last["resumed_at"],
                                  best_epoch=best_epoch, last_epoch=last["epochs"][-1]["epoch"])


def train_backbone(run_dir: str, jcfg, retrain: bool = False) -> dict:
    """Train (or resume, or skip when finished) `jcfg.train.backbone`; returns its final meta."""
    from . import augment, catalog, config
    from .export import export_splits

    cfg, backbone = jcfg.train, jcfg.train.backbone
    out = model_dir(run_dir, backbone)
    if retrain and storage.exists(out):
        storage.delete(out)
    elif is_finished(out):
        log.info("%s: already trained in %s (pass --retrain to train it again)", backbone, out)
        return modelio.read_meta(out)
    table, source, classes = catalog.read_manifest(run_dir)
    splits = {s: split_rows(table, s, cfg.limit, cfg.seed) for s in schema.SPLITS}
    balanced, record = augment.oversample(splits[schema.TRAIN], cfg.seed)
    storage.write_json(storage.join(out, "oversampling.json"), record)
    config.save_resolved(storage.join(out, "train_config.yaml"), jcfg, run_dir=str(run_dir), backbone=backbone)
    seg = jcfg.segment if cfg.segmented else None
    size = cfg.image_size or backbones.default_image_size(backbone)
    cols = ["image", "label"]
    datasets = {  # seed=None: Ray Train re-runs the pipeline each epoch, with fresh augmentations
        "train": augment.image_dataset(shuffled(balanced, cfg.seed), source, classes, image_size=size, seg=seg,
                                       aug=jcfg.augment, seed=None).select_columns(cols),
        "val": augment.image_dataset(splits[schema.VAL], source, classes, image_size=size, seg=seg,
                                     aug=None).select_columns(cols),
    }
    t0 = time.perf_counter()
    result = fit(run_dir, jcfg, backbone, classes, datasets)
    meta = publish(result, out)
    meta = export_splits(out, splits, source, classes, seg)
    log.info("%s: trained in %.0f s; best epoch %d", backbone, time.perf_counter() - t0, meta["best_epoch"])
    return meta


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-dir", required=True, metavar="RUN", help="prepared run directory (local or s3://)")
    p.add_argument("--backbone", default=None, help=f"{', '.join(backbones.ALL)}, 'all', or any timm model name")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="per worker (default 32)")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--image-size", type=int, default=None, help="default: the backbone's (224; AlexNet 227)")
    p.add_argument("--workers", type=int, default=None, help="Train workers (default: one per GPU, else 2 CPU)")
    p.add_argument("--gpus-per-worker", type=float, default=None)
    p.add_argument("--pretrained", default=None, help=backbones.PRETRAINED_HELP)
    p.add_argument("--limit", type=int, default=None, help="at most N images per split (smoke runs)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--max-failures", type=int, default=None, help="worker-group restarts from the last checkpoint")
    p.add_argument("--segmented", action=argparse.BooleanOptionalAction, default=None,
                   help="train on HSV-segmented images (default) or on the originals")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="torch.compile on GPU")
    p.add_argument("--retrain", action="store_true", help="train again even if this backbone is finished in RUN")


def main(args: argparse.Namespace) -> int:
    import dataclasses

    from . import config
    from .runtime import init_ray

    keys = ("backbone", "epochs", "batch_size", "lr", "image_size", "workers", "gpus_per_worker", "pretrained",
            "limit", "seed", "max_failures", "segmented", "compile")
    jcfg = config.job_config(args.config, train={k: getattr(args, k) for k in keys})
    names = backbones.expand(jcfg.train.backbone)
    for name in names:  # before any Ray start-up: a missing weights file fails in seconds
        backbones.check_pretrained(name, jcfg.train.pretrained)
    init_ray(args.num_cpus)
    for name in names:
        one = dataclasses.replace(jcfg, train=dataclasses.replace(jcfg.train, backbone=name))
        meta = train_backbone(args.run_dir, one, retrain=args.retrain)
        best = next(e for e in meta["epochs"] if e["epoch"] == meta["best_epoch"])
        print(f"{name}: best epoch {meta['best_epoch']} val_acc {best['val_acc']:.4f} "
              f"val_loss {best['val_loss']:.4f} → {model_dir(args.run_dir, name)}")
    return 0
