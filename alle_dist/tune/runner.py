"""The one way alle_dist runs Ray Tune: a Tuner over a trainable, in a temporary results folder that
is removed afterwards (the stage writes its own outputs), AWS keys hidden from trial runtime_envs,
and any failed trial raised as one error."""
from __future__ import annotations

import shutil
import tempfile
import uuid

from ..runtime import secrets_hidden_from_ray


def run_tuner(trainable, param_space: dict, search_alg, name: str, callbacks: list | None = None) -> list[dict]:
    """Every trial's final metrics (a dict each, in completion order); RuntimeError naming the first
    failure when any trial failed."""
    from ray import tune

    tmp = tempfile.mkdtemp(prefix=f"alle-dist-{name}-")
    try:
        tuner = tune.Tuner(
            trainable, param_space=param_space, tune_config=tune.TuneConfig(search_alg=search_alg),
            run_config=tune.RunConfig(name=f"{name}-{uuid.uuid4().hex[:8]}", storage_path=tmp, verbose=0,
                                      callbacks=callbacks or []))
        with secrets_hidden_from_ray():
            results = tuner.fit()
        errors = [r.error for r in results if r.error]
        if errors:
            raise RuntimeError(f"{len(errors)} {name} trial(s) failed; first: {errors[0]}")
        return [dict(r.metrics) for r in results]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
