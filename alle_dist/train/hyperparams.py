"""`alle-dist tune --tune-training`: Ray Tune over the training learning rate and batch size, each
trial a whole real training run (train.job.train_backbone) in its own nested run directory."""
from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
import uuid

from ..io import storage
from ..rundir import RunDir
from ..runtime import secrets_hidden_from_ray
from .job import train_backbone

log = logging.getLogger("alle_dist.train")


def _training_trial(config: dict, run_dir: str, job) -> dict:
    """One Tune trial = one whole train stage (train.job.train_backbone) in its own run folder.

    `Tuner(trainer)` fails in Train V2, so this driver function runs the TorchTrainer itself; Tune
    sees its final metrics only (no early stopping across epochs)."""
    trial = RunDir(run_dir).tune_trial(config["i"])
    storage.write_bytes(trial.manifest, storage.read_bytes(RunDir(run_dir).manifest))
    trial_run = trial.root
    tcfg = dataclasses.replace(job.train, lr=float(config["lr"]), batch_size=int(config["batch_size"]))
    meta = train_backbone(trial_run, dataclasses.replace(job, train=tcfg))
    best = min(meta["epochs"], key=lambda e: e["val_loss"])
    return {"val_loss": best["val_loss"], "val_acc": best["val_acc"], "best_epoch": best["epoch"],
            "lr": tcfg.lr, "batch_size": tcfg.batch_size, "run_dir": trial_run}


def tune_training(run_dir: str, job) -> dict:
    """Random search over the training learning rate and batch size, each trial a real training run.

    Trials hold 0.01 CPU themselves (the TorchTrainer inside takes the real resources) and run one
    at a time, since each training run sizes itself to the whole cluster. Writes RUN/tune_training.json."""
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    cfg = job.tune
    space = {"i": tune.grid_search(list(range(cfg.training_samples))),
             "lr": tune.loguniform(*cfg.training_lr), "batch_size": tune.choice([16, 32, 64])}
    trainable = tune.with_resources(tune.with_parameters(_training_trial, run_dir=run_dir, job=job), {"cpu": 0.01})
    tmp = tempfile.mkdtemp(prefix="alle-dist-tune-training-")
    try:
        tuner = tune.Tuner(trainable, param_space=space, tune_config=tune.TuneConfig(
            search_alg=BasicVariantGenerator(random_state=cfg.seed, max_concurrent=1)),
            run_config=tune.RunConfig(name=f"training-{uuid.uuid4().hex[:8]}", storage_path=tmp, verbose=0))
        with secrets_hidden_from_ray():
            results = tuner.fit()
        errors = [r.error for r in results if r.error]
        if errors:
            raise RuntimeError(f"{len(errors)} training trial(s) failed; first: {errors[0]}")
        trials = sorted(({k: r.metrics[k] for k in ("val_loss", "val_acc", "best_epoch", "lr", "batch_size", "run_dir")}
                         for r in results), key=lambda t: t["val_loss"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    doc = {"backbone": job.train.backbone, "metric": "val_loss (min)", "best": trials[0], "trials": trials}
    storage.write_json(RunDir(run_dir).tune_training, doc)
    log.info("best training setting for %s: lr=%.3g batch_size=%d (val_loss %.4f)", job.train.backbone,
             trials[0]["lr"], trials[0]["batch_size"], trials[0]["val_loss"])
    return doc
