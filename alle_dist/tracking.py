"""Experiment tracking in MLflow, opt-in: `--mlflow URI` on train / tune / evaluate, or MLFLOW_TRACKING_URI.

Off by default; mlflow is an extra (`pip install 'alle-dist[mlflow]'`) imported only when tracking is
on, so `--help` and an untracked run never load it. `open_tracker` checks everything before any work
(the package is there, an http(s) server answers its /health, the experiment can be opened): an
unreachable server is one line and exit 2 before training starts.

Runs are written through `MlflowClient` with explicit run ids (no global "active run"), so the
driver's relay thread (train's per-epoch metrics) and Ray Tune's callbacks can log safely.
Experiment: MLFLOW_EXPERIMENT_NAME, else "alle_dist"; every run is tagged with the stage and the run
directory, and the lineage hashes (manifest, model ids, ensemble sha256) as `alle_dist.*` tags.
"""
from __future__ import annotations

import logging
import os
import tempfile
import time
from contextlib import contextmanager

from .errors import ConfigError, UsageError

log = logging.getLogger("alle_dist.tracking")
EXTRA = "pip install 'alle-dist[mlflow]'"
URI_ENV, EXPERIMENT_ENV, DEFAULT_EXPERIMENT = "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "alle_dist"


def tracking_uri(flag: str | None) -> str | None:
    """--mlflow URI, else MLFLOW_TRACKING_URI, else None (tracking off)."""
    return flag or os.environ.get(URI_ENV) or None


def open_tracker(flag: str | None, stage: str, run_dir: str) -> "Tracker | None":
    """A checked Tracker, or None when tracking is off; UsageError (one line) when it can't be used."""
    uri = tracking_uri(flag)
    if uri is None:
        return None
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise ConfigError(f"--mlflow {uri}: the mlflow package is not installed; {EXTRA}, or drop --mlflow "
                          f"(and unset {URI_ENV})") from None
    if uri.startswith(("http://", "https://")):
        _check_server(uri)
    return Tracker(uri, stage, run_dir)


def _check_server(uri: str, timeout_s: float = 5.0) -> None:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s) as r:
            r.read(64)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise UsageError(f"--mlflow {uri}: the MLflow server does not answer ({reason}); start it "
                         f"(`mlflow server`), fix the URI, or drop --mlflow and unset {URI_ENV}") from None


class Tracker:
    """One stage's connection to MLflow: opens (or creates) the experiment, starts runs."""

    def __init__(self, uri: str, stage: str, run_dir: str):
        from mlflow.tracking import MlflowClient

        self.uri, self.stage, self.run_dir = uri, stage, run_dir
        name = os.environ.get(EXPERIMENT_ENV) or DEFAULT_EXPERIMENT
        try:   # the store is opened here: a refused store (e.g. MLflow 3's file store) is one line now
            self.client = MlflowClient(tracking_uri=uri)
            found = self.client.get_experiment_by_name(name)
            self.experiment_id = found.experiment_id if found else _create(self.client, name)
        except Exception as exc:  # noqa: BLE001 - any client failure here is the user's store or server
            raise UsageError(f"--mlflow {uri}: can't open the experiment {name!r} "
                             f"({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}); "
                             "check the URI and the store's permissions") from None

    @contextmanager
    def run(self, name: str, params: dict | None = None, tags: dict | None = None, parent: str | None = None):
        """A run (a child of `parent` when given) that ends FINISHED, or FAILED / KILLED on an exception."""
        tags = flatten({"alle_dist.stage": self.stage, "alle_dist.run_dir": self.run_dir, **(tags or {})})
        if parent:
            tags["mlflow.parentRunId"] = parent
        created = self.client.create_run(self.experiment_id, run_name=name, tags={k: str(v) for k, v in tags.items()})
        r = TrackedRun(self, created.info.run_id)
        r.log_params(params or {})
        status = "FINISHED"
        try:
            yield r
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        except BaseException:
            status = "FAILED"
            raise
        finally:
            self.client.set_terminated(r.run_id, status)

    def tune_callback(self, parent: str, name: str):
        """Ray Tune's MLflowLoggerCallback: one child run of `parent` per trial (its config as params, its
        results as metrics), logged from the driver."""
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        exp = self.client.get_experiment(self.experiment_id).name
        return MLflowLoggerCallback(tracking_uri=self.uri, experiment_name=exp, save_artifact=False,
                                    tags={"mlflow.parentRunId": parent, "alle_dist.stage": self.stage,
                                          "alle_dist.trials": name})


def _create(client, name: str) -> str:
    try:
        return client.create_experiment(name)
    except Exception:  # noqa: BLE001 - another job created it meanwhile
        return client.get_experiment_by_name(name).experiment_id


class TrackedRun:
    """One MLflow run: params, metrics (with a step), tags, artifacts from bytes, Tune child runs."""

    def __init__(self, tracker: Tracker, run_id: str):
        self.tracker, self.client, self.run_id = tracker, tracker.client, run_id

    def tune_callback(self, name: str):
        return self.tracker.tune_callback(self.run_id, name)

    def log_params(self, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in flatten(params).items()]
        for i in range(0, len(items), 100):   # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in flatten(metrics).items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i:i + 1000])

    def set_tags(self, tags: dict) -> None:
        for k, v in flatten(tags).items():
            self.client.set_tag(self.run_id, k, str(v))

    def log_files(self, files: dict[str, bytes], folder: str | None = None) -> None:
        """Artifacts from bytes (the sources may be on S3): {name: data} under `folder`."""
        with tempfile.TemporaryDirectory(prefix="alle-dist-mlflow-") as tmp:
            for name, data in files.items():
                path = os.path.join(tmp, name)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as fh:
                    fh.write(data)
            self.client.log_artifacts(self.run_id, tmp, folder)


def flatten(d: dict, prefix: str = "") -> dict:
    """{"train": {"lr": 1e-4}} → {"train.lr": 1e-4}; lists and tuples stay values."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out
