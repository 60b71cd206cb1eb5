"""Ray start-up shared by every stage: attach to a cluster or start a local one, safe Data defaults,
and what reaches the user's terminal (alle_dist's own lines; Ray's only when asked for)."""
from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager

from .constants import SECRET_ENV_VARS

log = logging.getLogger("alle_dist")

# Ray's own log level: WARNING unless the command line asked for INFO or DEBUG (configure_logging).
_ray_level = logging.WARNING


def configure_logging(level: str | None = None) -> None:
    """alle_dist's messages at `level` (INFO when None), Ray's at `level` (WARNING when None).

    At WARNING Ray prints no INFO blocks, banners or progress bars and the workers' output is not
    forwarded (init_ray); alle_dist's one-line progress (alle_dist.progress) stays.
    """
    global _ray_level
    _ray_level = getattr(logging, level) if level else logging.WARNING
    handler = _StderrHandler()
    handler.setFormatter(_Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    handler.addFilter(_Redact())
    root = logging.getLogger()
    if not any(getattr(h, "_alle_dist", False) for h in root.handlers):
        handler._alle_dist = True
        root.addHandler(handler)
    root.setLevel(_ray_level)
    for name in _WIRE_LOGGERS:   # their DEBUG lines are signed requests: headers, credentials
        logging.getLogger(name).setLevel(max(_ray_level, logging.INFO))
    log.setLevel(getattr(logging, level) if level else logging.INFO)
    if ray_is_quiet():
        # Tune's newer console output prints its experiment table and a results path (a temporary
        # folder, deleted when the stage ends) even at verbose=0; the classic engine at verbose=0
        # prints nothing. alle_dist shows trials itself (tune.stage.trial_progress).
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    _quiet_ray_loggers()


class _StderrHandler(logging.StreamHandler):
    """Writes to sys.stderr as it is at each message, not as it was when logging was configured: a
    caller that swaps stderr (a test's capture, a job runner's redirect) and later closes the old
    one must not leave a handler writing into a closed file ("--- Logging error ---")."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:   # StreamHandler.setStream assigns; the stream is always sys.stderr
        pass


# HTTP-level loggers kept at INFO or above even under --log-level DEBUG: botocore's DEBUG prints
# every signed request (access key id, signature, session token), which a job log must not hold.
_WIRE_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3", "aiobotocore", "s3fs", "fsspec")


class _Redact(logging.Filter):
    """Second line of defence: the credentials in this process's environment are masked in any
    line that still carries them (a library's message, an exception text)."""

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = [v for v in (os.environ.get(k) for k in SECRET_ENV_VARS) if v and len(v) >= 8]
        message = record.getMessage()
        if any(v in message for v in secrets):
            for v in secrets:
                message = message.replace(v, "***")
            record.msg, record.args = message, None
        return True


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        return line if record.levelno < logging.WARNING else line.replace(" ", f" {record.levelname.lower()}: ", 1)


class _DropAdvice(logging.Filter):
    """Drops Ray's hint to set RAY_AUTH_MODE=disabled: docs/security.md says never to do that."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "=disabled" not in record.getMessage()


def _quiet_ray_loggers() -> None:
    _add_filter_once("ray._private.authentication.authentication_token_setup", _DropAdvice)
    if "ray.data" in sys.modules:   # else configure_data_context does it once Ray Data is imported
        _set_ray_data_console_level()


def _add_filter_once(logger: str, cls: type) -> None:
    # A filter on the logger that emits the record (filters don't see records propagated from children).
    target = logging.getLogger(logger)
    if not any(isinstance(f, cls) for f in target.filters):
        target.addFilter(cls())


def _set_ray_data_console_level() -> None:
    """Ray Data logs to the console through its own handler (INFO, progress blocks every few
    seconds); its file handler in the session's log folder keeps everything."""
    from ray.data._internal.logging import SessionFileHandler

    for h in logging.getLogger("ray.data").handlers:
        if not isinstance(h, SessionFileHandler):
            h.setLevel(_ray_level)


def ray_is_quiet() -> bool:
    return _ray_level > logging.INFO


def init_ray(num_cpus: int | None = None) -> None:
    """Connect to RAY_ADDRESS (a submitted job, a cluster) or start a private local Ray.

    A local Ray listens on 127.0.0.1 only and has no dashboard: anyone who reaches Ray's ports can
    run code (docs/security.md). Token authentication stays on (Ray's default); only Ray's hint to
    turn it off is dropped (_DropAdvice).
    """
    import ray

    if not ray.is_initialized():
        _start_ray(num_cpus)
    configure_data_context()


# Start-up attempts before giving up. Ray waits a fixed 30 s for a new node's raylet to register
# (ray/_private/node.py), which a machine under heavy load can miss; another attempt usually makes it.
START_ATTEMPTS_ENV = "ALLE_DIST_RAY_START_ATTEMPTS"


def _start_ray(num_cpus: int | None) -> None:
    import ray

    quiet = ray_is_quiet()
    attempts = max(1, int(os.environ.get(START_ATTEMPTS_ENV, "2")))
    for attempt in range(1, attempts + 1):
        try:
            if os.environ.get("RAY_ADDRESS"):
                # Inside `ray job submit`: num_cpus may not be given when connecting.
                ray.init(log_to_driver=not quiet, logging_level=_ray_level)
            else:
                # address="local" never attaches to a cluster some other `ray start` left behind.
                ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                         log_to_driver=not quiet, configure_logging=True, logging_level=_ray_level)
            return
        except Exception as exc:  # noqa: BLE001 - Ray raises bare Exception for a start-up timeout
            ray.shutdown()        # the processes this attempt started
            timeout = _is_timeout(exc)
            if not timeout or attempt == attempts:
                raise _start_failed(exc, timeout, attempts) from None
            log.warning("Ray start-up timed out (attempt %d of %d); trying again", attempt, attempts)


def _is_timeout(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, TimeoutError) or any(k in text for k in ("timed out", "timeout", "failed to connect"))


def _start_failed(exc: BaseException, timeout: bool, attempts: int):
    from .errors import RayStartError

    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    where = f"the Ray cluster at {os.environ['RAY_ADDRESS']}" if os.environ.get("RAY_ADDRESS") else "a local Ray"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    if timeout:
        return RayStartError(f"{where} did not start in time after {attempts} attempt(s) ({first}; load average "
                             f"{load:.1f} on {os.cpu_count()} CPUs); run the same command again when the machine is "
                             f"less busy, or allow more attempts with {START_ATTEMPTS_ENV}=N")
    return RayStartError(f"{where} could not be started ({first}); check `ray status`, RAY_ADDRESS and the "
                         "Ray logs (/tmp/ray/session_latest/logs)")


def configure_data_context(no_progress_timeout_s: float | None = None) -> None:
    """Ray Data defaults of this project: never drop blocks, fail fast on a stall."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    # A non-zero value lets Ray Data drop whole blocks of good rows silently: bad files become
    # error rows instead, so this stays 0.
    ctx.max_errored_blocks = 0
    timeout = no_progress_timeout_s or float(os.environ.get("ALLE_DIST_NO_PROGRESS_TIMEOUT_S", 600))
    ctx.execution_no_progress_timeout_s = timeout
    if os.environ.get("RAY_DATA_DISABLE_PROGRESS_BARS") == "1" or ray_is_quiet():
        ctx.enable_progress_bars = False   # alle_dist.progress draws one bar of its own
        _add_filter_once("ray.data._internal.progress", _DropProgressHint)
    _set_ray_data_console_level()
    ctx.print_on_execution_start = False
    # A UDF's own exception (e.g. a StorageError for an S3 403) reaches the driver as itself, not as
    # an opaque UserCodeException: errors.user_error_in finds it by type.
    ctx.raise_original_map_exception = True


class _DropProgressHint(logging.Filter):
    """Ray Data's "Progress bars disabled. To enable, ..." when alle_dist turned them off on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Progress bars disabled" not in record.getMessage()


def cluster_cpus() -> int:
    import ray
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def num_blocks(n_items: int, tasks: int | None = None) -> int:
    """Ray Data blocks for `n_items` inputs read by `tasks` concurrent tasks (default: the cluster's
    CPUs): a few blocks per task, so one slow file (an S3 object, a huge image) doesn't hold up the rest."""
    return max(1, min(n_items, (tasks or cluster_cpus()) * 4))


def cluster_gpus() -> int:
    import ray
    return int(ray.cluster_resources().get("GPU", 0))




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
