"""Stage `tune`, the Ray Tune search over the ensemble weights and γ: every candidate (the paper's grid
and a random search) is a real Ray Tune trial over the cached validation arrays (`tune.with_parameters`
puts them in the object store once); each trial scores its setting with tune.select."""
from __future__ import annotations

import numpy as np

from .. import config
from ..ensemble import split_probs
from ..ensemble.weighted import PAPER_GAMMAS, PAPER_WEIGHTS
from ..errors import ConfigError
from . import select
from .runner import run_tuner


def _trial(params: dict, data: split_probs.SplitProbs, temperatures, fixed_refer=None) -> dict:
    """One Ray Tune trial: weights either given (grid) or from raw uniform draws (search)."""
    point = params["point"]
    if "weights" in point:
        w, gamma, source = np.asarray(point["weights"], np.float64), point["gamma"], "paper_grid"
    else:
        w = np.asarray([params[f"w{i}"] for i in range(len(data.probs))], np.float64) + 1e-9
        w, gamma, source = w / w.sum(), params["gamma"], "random_search"
    w = tuple(np.round(w, 6) / np.round(w, 6).sum())
    return {**select.evaluate_setting(w, float(gamma), data, temperatures, fixed_refer),
            "weights": list(w), "gamma": float(gamma), "source": source, "index": point["i"]}


def search(data: split_probs.SplitProbs, temperatures, cfg: config.TuneConfig, callbacks: list | None = None) -> list[dict]:
    """Every trial's result: the paper's grid (two backbones) then `num_samples` random settings.

    One Tuner run (its fixed cost is seconds): the grid points and `num_samples` "random" entries go
    through one grid_search; BasicVariantGenerator draws fresh uniform weights and γ for each entry,
    which only the random entries (no "weights") use. `callbacks`: more Tune callbacks (MLflow's).
    """
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    grid = ([{"weights": list(w), "gamma": g} for w in PAPER_WEIGHTS for g in PAPER_GAMMAS]
            if len(data.probs) == 2 else [])
    points = [{"i": i, **g} for i, g in enumerate(grid + [{}] * cfg.num_samples)]
    if not points:
        raise ConfigError(f"tune.num_samples=0 with {len(data.probs)} backbone(s): nothing to try "
                              "(the paper's grid needs two); set num_samples > 0")
    space = {"point": tune.grid_search(points),
             "gamma": tune.uniform(*cfg.gamma_range)}
    space.update({f"w{i}": tune.uniform(0.0, 1.0) for i in range(len(data.probs))})
    trainable = tune.with_resources(tune.with_parameters(_trial, data=data, temperatures=temperatures,
                                                         fixed_refer=select.image_rule_refers(data, cfg)), {"cpu": 1})
    # Tune ignores TuneConfig(max_concurrent_trials) with a BasicVariantGenerator (it warns so): the
    # generator limits concurrency itself.
    results = run_tuner(trainable, space, BasicVariantGenerator(random_state=cfg.seed, max_concurrent=cfg.max_concurrent_trials),
                        "ensemble", callbacks=[trial_progress(len(points), cfg.objective), *(callbacks or [])])
    metrics = sorted(results, key=lambda m: m["index"])
    return [_keep(m, m["source"]) for m in metrics]


def trial_progress(total: int, objective: str):
    """A Tune callback (it runs on the driver): trials done / total and the best objective so far,
    as a bar on a terminal or a line every few seconds in a log (alle_dist.progress)."""
    from ray.tune import Callback

    from ..progress import Progress

    class TrialProgress(Callback):
        def __init__(self):
            self.bar, self.best = Progress("tune: trials", total, unit="trial", interval_s=5), None

        def on_trial_complete(self, iteration, trials, trial, **info):
            value = (trial.last_result or {}).get(objective)
            self.best = value if self.best is None or (value is not None and value > self.best) else self.best
            self.bar.update(1, postfix=f"best {objective} so far {self.best:.4f}" if self.best is not None else None)

        def on_experiment_end(self, trials, **info):
            self.bar.close()

    return TrialProgress()


def _keep(result: dict, source: str) -> dict:
    names = ("n", "coverage") + select.OBJECTIVES
    return {"source": source, "weights": result["weights"], "gamma": result["gamma"],
            "metrics": {k: result[k] for k in names}}
