"""DST's side: the layout of DST/_alle_dist/ and what every Delta table of alle_dist shares.

DST is the classification table (classify.store). alle_dist keeps its own files beside the rows,
under DST/_alle_dist/, which Delta readers never see (they follow the log), pyarrow's dataset
discovery skips (`_` prefix) and VACUUM leaves alone:

  _alle_dist/runs/                   classify's run records (a Delta table; classify.store)
  _alle_dist/reviews/                review decisions keyed by (uri, sha256) (a Delta table;
                                     schema.REVIEWS_SCHEMA; review.reviews writes it, prepare reads it)
  _alle_dist/batches/<batch_id>.json review batches: what was picked, why, from which version (review)
  _alle_dist/<stage>_config.yaml     a stage's resolved config (classify_config.yaml)

`SideDir` is the one owner of those names, as rundir.RunDir is of the run directory's. The Delta
helpers below serve every table here and DST itself; deltalake is imported where it is used, so this
module stays importable by `--help`:
- `storage_options`: what deltalake needs for S3 besides the AWS chain: endpoint, region and the
  commit-safety flags (classify.store explains them), never a credential.
- `load` / `check_log`: a table whose newest `_delta_log` commit file is torn (0 bytes, or not JSON: a
  crash on a filesystem without atomic writes, a bad copy) is refused with one line. deltalake 1.6
  reads a 0-byte commit as one without actions, i.e. the table as of an older state, silently.
- `native_filesystem` / `read_results`: reading through pyarrow's own filesystem, never deltalake's
  Python file handler, whose use aborts short reader processes at exit (see native_filesystem).
- `commit_with_retry`: one MERGE against the latest version, redone after a concurrent commit.
- `write_failure`: a failed write in words (a full local disk says so).
"""
from __future__ import annotations

import json
import os
import random
import shutil
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

from .errors import StorageError
from .io import storage

SIDE_DIR = "_alle_dist"              # alle_dist's own files inside DST; invisible to Delta readers
T = TypeVar("T")


@dataclass(frozen=True)
class SideDir:
    """DST/_alle_dist/ of one classification table DST (local path or s3:// URI)."""
    dst: str

    RUNS = "runs"
    REVIEWS = "reviews"
    BATCHES = "batches"

    def file(self, name: str) -> str:
        return storage.join(self.dst.rstrip("/"), SIDE_DIR, name)

    @property
    def runs(self) -> str:
        return self.file(self.RUNS)

    @property
    def reviews(self) -> str:
        return self.file(self.REVIEWS)

    def batch(self, batch_id: str) -> str:
        return self.file(f"{self.BATCHES}/{batch_id}.json")

    def config(self, stage: str) -> str:
        return self.file(f"{stage}_config.yaml")


def storage_options(uri: str) -> dict[str, str] | None:
    """deltalake storage options for `uri`: endpoint, region and safety flags, never a credential
    (classify.store's docstring says why conditional_put=etag and no unsafe rename)."""
    if not storage.is_s3(uri):
        return None
    opts = {"conditional_put": "etag", "AWS_S3_ALLOW_UNSAFE_RENAME": "false",
            "AWS_REGION": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        opts["AWS_ENDPOINT_URL"] = endpoint
        if endpoint.startswith("http://"):
            opts["AWS_ALLOW_HTTP"] = "true"   # object_store refuses plain HTTP otherwise
    return opts


def load(uri: str, options: dict | None):
    """The Delta table at `uri`, or None where there is none.

    Not DeltaTable.is_deltatable: in deltalake 1.6 it holds the GIL during its S3 requests, which
    stalls every other Python thread of the process (and deadlocks an in-process S3 server).
    """
    from deltalake import DeltaTable
    from deltalake.exceptions import DeltaError, TableNotFoundError

    try:
        table = DeltaTable(uri, storage_options=options)
    except TableNotFoundError:
        return None
    except (DeltaError, OSError) as exc:
        check_log(uri, _newest_version(uri))   # a torn commit deltalake refused: the same words
        raise StorageError(f"{uri}: can't be read as a Delta table ({storage.first_line(exc)}); check the "
                           "path, the network and the AWS credentials") from None
    check_log(uri, table.version())
    return table


def _newest_version(uri: str) -> int | None:
    import pyarrow.fs as pafs

    try:
        fs, base = storage.resolve(storage.join(uri, "_delta_log"))
        names = [i.base_name for i in fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))]
    except OSError:
        return None
    versions = [int(n[:20]) for n in names if len(n) == 25 and n.endswith(".json") and n[:20].isdigit()]
    return max(versions, default=None)


def check_log(uri: str, version: int | None) -> None:
    """Refuse a table whose newest commit file is torn: deltalake 1.6 reads a 0-byte commit as one
    without actions and skips nothing else, so the table would silently read as an older state and
    the next MERGE would build on it (rows of inputs no longer listed would vanish)."""
    if version is None:
        return
    commit = storage.join(uri, "_delta_log", f"{version:020d}.json")
    try:
        data = storage.read_bytes(commit)
    except FileNotFoundError:   # a log cleaned up down to a checkpoint: deltalake checked that
        return
    if _is_commit(data):
        return
    raise StorageError(
        f"{commit}: the Delta table's newest commit is torn ({len(data)} bytes, not a complete JSON commit), so "
        f"the table would read as an older state; nothing was done. Restore that file from a backup, or, if no "
        f"job is writing to {uri}, delete that one file (the table then reads as version {version - 1}; run "
        "classify again to redo what that commit held)")


def _is_commit(data: bytes) -> bool:
    try:
        actions = [json.loads(line) for line in data.splitlines() if line.strip()]
    except (ValueError, UnicodeDecodeError):
        return False
    return bool(actions) and all(isinstance(a, dict) and a for a in actions)


def commit_with_retry(table, commit: Callable[[], T], where: str, max_attempts: int,
                      on_conflict: Callable[[], None] = lambda: None) -> T:
    """`commit()` (one MERGE into `table`) against the table's latest version, redone when a concurrent
    writer's commit made deltalake refuse ours (CommitFailedError: a MERGE reads the whole table, so
    any concurrent data commit conflicts). The MERGE must be idempotent; retries back off
    exponentially with jitter. StorageError (one line) after `max_attempts` conflicts, or at once on
    an I/O failure (nothing of the batch committed)."""
    from deltalake.exceptions import CommitFailedError, DeltaError

    for attempt in range(max_attempts):
        try:
            table.update_incremental()
            return commit()
        except CommitFailedError:
            on_conflict()
            time.sleep(min(2.0, 0.05 * 2 ** attempt) * random.uniform(0.5, 1.5))
        except (OSError, DeltaError) as exc:   # disk full, network after the client's retries: nothing committed
            raise StorageError(f"{where}: commit failed ({write_failure(where, exc)}); nothing of this "
                               "batch was committed; fix the cause and rerun") from None
    raise StorageError(f"{where}: {max_attempts} commits in a row conflicted with concurrent "
                       "writers; rerun (what was committed is kept)")


def read_current(uri: str, columns: list[str] | None = None):
    """(the current version's rows as Arrow, the version), or None where there is no table."""
    table = load(uri, storage_options(uri))
    if table is None:
        return None
    return table.to_pyarrow_dataset(filesystem=native_filesystem(uri)).to_table(columns=columns), table.version()


def native_filesystem(uri: str) -> "pyarrow.fs.FileSystem":
    """pyarrow's own filesystem rooted at the table `uri`, for `DeltaTable.to_pyarrow_dataset(filesystem=…)`.

    Not deltalake's default, a pyarrow PyFileSystem around its Python DeltaStorageHandler: Arrow's
    scan threads drop the scan's last reference to that Python object a moment after to_table()
    returns; when that races the interpreter's exit, Python (≤ 3.13) ends the thread with
    pthread_exit inside a C++ destructor and the process aborts ("terminate called without an
    active exception", exit 134; about half of the runs of a short reader script with deltalake
    1.6.6 + pyarrow 26). pyarrow's LocalFileSystem / S3FileSystem hold no Python object."""
    import pyarrow.fs as pafs

    fs, path = storage.resolve(uri)
    return pafs.SubTreeFileSystem(path, fs)


def read_results(uri: str, columns: list[str] | None = None, version: int | None = None) -> "pyarrow.Table":
    """The current rows of a classify DST (or those of `version`): docs/classify.md's reader."""
    from deltalake import DeltaTable

    table = DeltaTable(storage.absolute(uri).rstrip("/"), version=version, storage_options=storage_options(uri))
    return table.to_pyarrow_dataset(filesystem=native_filesystem(uri)).to_table(columns=columns)


def _nearly_full(path: str) -> bool:
    """The local device holding `path` has less than 1 MiB (or 1 %) free."""
    while path and not os.path.exists(path):
        path = os.path.dirname(path)
    try:
        usage = shutil.disk_usage(path or "/")
    except OSError:
        return False
    return usage.free < max(1 << 20, usage.total // 100)


def write_failure(uri: str, exc: BaseException) -> str:
    """A failed write's cause in words: deltalake says "Generic LocalFileSystem error" for ENOSPC."""
    text = storage.first_line(exc)
    if storage.is_s3(uri):
        return text
    if any(k in text for k in ("No space left", "os error 28", "ENOSPC")) or _nearly_full(uri):
        return f"no space left on the device holding {uri}: {text}"
    return text
