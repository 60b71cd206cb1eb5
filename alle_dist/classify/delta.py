"""Opening and reading Delta tables safely (classify's DST and its runs table), local or on S3.

- `storage_options`: what deltalake needs for S3 besides the AWS chain: endpoint, region and the
  commit-safety flags (classify.store explains them), never a credential.
- `load_table` / `check_log`: a table whose newest `_delta_log` commit file is torn (0 bytes, or not
  JSON: a crash on a filesystem without atomic writes, a bad copy) is refused with one line. deltalake
  1.6 reads a 0-byte commit as one without actions, i.e. the table as of an older state, silently.
- `native_filesystem` / `read_results`: reading through pyarrow's own filesystem, never deltalake's
  Python file handler, whose use aborts short reader processes at exit (see native_filesystem).
- `write_failure`: a failed write in words (a full local disk says so).
"""
from __future__ import annotations

import json
import os
import shutil

import pyarrow as pa
import pyarrow.fs as pafs

from ..errors import StorageError
from ..io import storage


def storage_options(uri: str) -> dict[str, str] | None:
    """deltalake storage options for `uri`: endpoint, region and safety flags, never a credential."""
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


def load_table(uri: str, options: dict | None):
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


def native_filesystem(uri: str) -> pafs.FileSystem:
    """pyarrow's own filesystem rooted at the table `uri`, for `DeltaTable.to_pyarrow_dataset(filesystem=…)`.

    Not deltalake's default, a pyarrow PyFileSystem around its Python DeltaStorageHandler: Arrow's
    scan threads drop the scan's last reference to that Python object a moment after to_table()
    returns; when that races the interpreter's exit, Python (≤ 3.13) ends the thread with
    pthread_exit inside a C++ destructor and the process aborts ("terminate called without an
    active exception", exit 134; about half of the runs of a short reader script with deltalake
    1.6.6 + pyarrow 26). pyarrow's LocalFileSystem / S3FileSystem hold no Python object."""
    fs, path = storage.resolve(uri)
    return pafs.SubTreeFileSystem(path, fs)


def read_results(uri: str, columns: list[str] | None = None, version: int | None = None) -> pa.Table:
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
