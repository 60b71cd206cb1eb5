"""`alle-dist tune --tune-training`: Ray Tune over the training learning rate and batch size, each
trial a whole real training run (train.stage.train_backbone) in its own nested run directory."""
from __future__ import annotations

import dataclasses
import logging

from ..io import storage
from ..rundir import RunDir
from ..train.stage import train_backbone
from .runner import run_tuner

log = logging.getLogger("alle_dist.train")
_KEPT = ("val_loss", "val_acc", "best_epoch", "lr", "batch_size", "run_dir")


def _training_trial(params: dict, run_dir: str, job_cfg) -> dict:
    """One Tune trial = one whole train stage (train.stage.train_backbone) in its own run folder.

    `Tuner(trainer)` fails in Train V2, so this driver function runs the TorchTrainer itself; Tune
    sees its final metrics only (no early stopping across epochs)."""
    trial = RunDir(run_dir).tune_trial(params["i"])
    storage.write_bytes(trial.manifest, storage.read_bytes(RunDir(run_dir).manifest))
    train_cfg = dataclasses.replace(job_cfg.train, lr=float(params["lr"]), batch_size=int(params["batch_size"]))
    meta = train_backbone(trial.root, dataclasses.replace(job_cfg, train=train_cfg))
    best = min(meta["epochs"], key=lambda e: e["val_loss"])
    return {"val_loss": best["val_loss"], "val_acc": best["val_acc"], "best_epoch": best["epoch"],
            "lr": train_cfg.lr, "batch_size": train_cfg.batch_size, "run_dir": trial.root}


def tune_training(run_dir: str, job_cfg, tracked=None) -> dict:
    """Random search over the training learning rate and batch size, each trial a real training run.

    Trials hold 0.01 CPU themselves (the TorchTrainer inside takes the real resources) and run one
    at a time, since each training run sizes itself to the whole cluster. Writes RUN/tune_training.json.
    `tracked` (an MLflow run, alle_dist.tracking): every trial becomes a child run of it."""
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    cfg = job_cfg.tune
    space = {"i": tune.grid_search(list(range(cfg.training_samples))),
             "lr": tune.loguniform(*cfg.training_lr), "batch_size": tune.choice([16, 32, 64])}
    trainable = tune.with_resources(tune.with_parameters(_training_trial, run_dir=run_dir, job_cfg=job_cfg),
                                    {"cpu": 0.01})
    results = run_tuner(trainable, space, BasicVariantGenerator(random_state=cfg.seed, max_concurrent=1), "training",
                        callbacks=[tracked.tune_callback("training")] if tracked is not None else None)
    trials = sorted(({k: m[k] for k in _KEPT} for m in results), key=lambda t: t["val_loss"])
    doc = {"backbone": job_cfg.train.backbone, "metric": "val_loss (min)", "best": trials[0], "trials": trials}
    storage.write_json(RunDir(run_dir).tune_training, doc)
    log.info("best training setting for %s: lr=%.3g batch_size=%d (val_loss %.4f)", job_cfg.train.backbone,
             trials[0]["lr"], trials[0]["batch_size"], trials[0]["val_loss"])
    return doc
