"""Ray start-up shared by every stage: attach to a cluster or start a local one, safe Data defaults."""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager

log = logging.getLogger("alle_dist")


def init_ray(num_cpus: int | None = None, quiet: bool = True) -> None:
    """Connect to RAY_ADDRESS (a submitted job, a cluster) or start a private local Ray.

    A local Ray listens on 127.0.0.1 only and has no dashboard: anyone who reaches Ray's ports can
    run code (docs/security.md).
    """
    import ray

    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            # Inside `ray job submit`: num_cpus may not be given when connecting.
            ray.init(log_to_driver=not quiet)
        else:
            # address="local" never attaches to a cluster some other `ray start` left behind.
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                     log_to_driver=not quiet, configure_logging=True,
                     logging_level=logging.WARNING if quiet else logging.INFO)
    configure_data_context()


def configure_data_context(no_progress_timeout_s: float | None = None) -> None:
    """Ray Data defaults of this project: never drop blocks, fail fast on a stall."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    # A non-zero value lets Ray Data drop whole blocks of good rows silently: bad files become
    # error rows instead, so this stays 0.
    ctx.max_errored_blocks = 0
    timeout = no_progress_timeout_s or float(os.environ.get("ALLE_DIST_NO_PROGRESS_TIMEOUT_S", 600))
    ctx.execution_no_progress_timeout_s = timeout
    if os.environ.get("RAY_DATA_DISABLE_PROGRESS_BARS") == "1":
        ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    # A UDF's own exception (e.g. a StorageError for an S3 403) reaches the driver as itself, not as
    # an opaque UserCodeException: errors.user_error_in finds it by type.
    ctx.raise_original_map_exception = True


def cluster_cpus() -> int:
    import ray
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def cluster_gpus() -> int:
    import ray
    return int(ray.cluster_resources().get("GPU", 0))


# Credentials that must never reach a runtime_env (Ray logs runtime_envs in runtime_env_agent.log).
SECRET_ENV_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")


@contextmanager
def secrets_hidden_from_ray():
    """Hide AWS keys from the driver's environment while Ray Tune starts trials.

    Tune copies these variables from the driver into every trial actor's runtime_env, and Ray's
    runtime-env agent writes that runtime_env, keys included, to its log. Trial processes inherit
    the variables from their raylet anyway (or use an instance role), so they lose nothing.
    """
    saved = {k: os.environ.pop(k) for k in SECRET_ENV_VARS if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)
