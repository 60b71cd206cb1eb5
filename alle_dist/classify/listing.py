"""The inputs of a bulk classification, listed at archive scale: a local folder, an S3 prefix, or an
input list (Parquet/CSV of URIs, e.g. from an S3 Inventory export), as a stream of pyarrow Tables
(INPUT_SCHEMA, at most `chunk_rows` rows each) so driver memory stays bounded at 10 million inputs.

Each input is keyed by its absolute URI: `file:///abs/path` (percent-encoded, see path_to_uri) or
`s3://bucket/key`. An input that exists but can't be classified (a dangling symlink, a FIFO, a file
that can't be opened, a name that isn't UTF-8) is an error row, never a crash or a silent loss.

Local folders — what is listed:
- hidden names (a dot-name file or folder anywhere under the root) are left out, uncounted;
- names without an image suffix are left out and counted by extension in `Listing.skipped`;
- a folder is entered once: a directory symlink whose target was already entered, or is the root
  or one of its ancestors (`ln -s .. loop`), is not followed (counted as LINK_SEEN). Any other
  directory symlink is followed, also one pointing outside the root: linking image folders into
  one input folder is a common way to assemble a job. A file symlink is an input under its own name.
"""
from __future__ import annotations

import os
import queue
import stat
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator
from urllib.parse import quote

import pyarrow as pa

from .. import schema
from ..errors import StorageError
from ..io import storage
from ..io.storage import path_to_uri, uri_to_path  # noqa: F401 - part of this module's API

# Inputs planned at once. Planning joins a chunk against the whole index, and the join's working
# set scales with the chunk: at 1 M stored rows, 100 000-row chunks peaked ~95 MB above 25 000-row
# ones (bench/classify_scale.py), at the same speed.
CHUNK_ROWS = 25_000
BATCH_ROWS = 10_000
S3_WORKERS = 16
# Key of Listing.skipped for a directory symlink not followed because its folder was already listed.
LINK_SEEN = "folder links to a folder already listed"
NO_EXT = "(no extension)"

INPUT_SCHEMA = pa.schema([
    pa.field("uri", pa.string(), nullable=False),     # file:///abs/path or s3://bucket/key
    pa.field("size", pa.int64()),                     # bytes; null when unknown or for error rows
    pa.field("mtime_ns", pa.int64()),                 # local files: st_mtime_ns
    pa.field("etag", pa.string()),                    # S3 objects: ETag without quotes
    pa.field("status", pa.string(), nullable=False),  # ok / error
    pa.field("error", pa.string()),                   # reason, for error rows
])


class Listing:
    """The inputs, produced lazily: iterate for pyarrow Tables of INPUT_SCHEMA (each ≤ chunk_rows
    rows; iterating again lists again). `skipped` counts the names left out by suffix, by lower-case
    extension (and LINK_SEEN); it is complete once iteration ends. With `dedupe` (an input list,
    which may name one input twice) each uri is kept once and `duplicates` counts the rest."""

    def __init__(self, source: str, chunks: Callable[[Counter], Iterator[pa.Table]], dedupe: bool = False):
        self.source = source
        self.skipped: Counter = Counter()
        self.duplicates = 0
        self._chunks = chunks
        self._dedupe = dedupe

    def __iter__(self) -> Iterator[pa.Table]:
        self.skipped.clear()
        self.duplicates = 0
        chunks = self._chunks(self.skipped)
        return self._deduped(chunks) if self._dedupe else chunks

    def _deduped(self, chunks: Iterator[pa.Table]) -> Iterator[pa.Table]:
        from .input_list import SeenUris   # only input lists are deduplicated

        seen = SeenUris()
        for table in chunks:
            keep = seen.first(table.column("uri"))
            self.duplicates += table.num_rows - int(keep.sum())
            if keep.any():
                yield table.filter(pa.array(keep))

    def skipped_summary(self) -> str:
        """'12 .webp, 3 .txt' (most frequent first); '' when nothing was skipped."""
        ranked = sorted(self.skipped.items(), key=lambda kv: (-kv[1], kv[0]))
        return ", ".join(f"{n} {ext}" for ext, n in ranked)


def list_inputs(src: str, *, suffixes: tuple[str, ...] = schema.IMAGE_SUFFIXES,
                chunk_rows: int = CHUNK_ROWS, workers: int = S3_WORKERS) -> Listing:
    """Every input under a local folder or an s3:// prefix. Checks the root now (StorageError, one
    line); lists when iterated. `workers`: concurrent S3 list requests."""
    if storage.is_s3(src):
        client = _s3_client(workers)
        bucket, prefix = _check_s3_root(client, src)
        return Listing(src, lambda skipped: _chunked(
            _walk_s3(client, bucket, prefix, suffixes, skipped, workers), chunk_rows))
    root = _check_local_root(src)
    return Listing(src, lambda skipped: _chunked(_walk_local(root, suffixes, skipped), chunk_rows))


# ---- chunks -------------------------------------------------------------------------------------

def _chunked(rows: Iterable[tuple], chunk_rows: int) -> Iterator[pa.Table]:
    """Tables of ≤ chunk_rows rows. Rows turn into Arrow batches every BATCH_ROWS rows, because a
    Python tuple with its strings costs ~5x its Arrow form: at most BATCH_ROWS rows live as objects."""
    step = min(chunk_rows, BATCH_ROWS)
    buf: list[tuple] = []
    batches: list[pa.RecordBatch] = []
    for row in rows:
        buf.append(row)
        if len(buf) == step:
            batches.append(_batch(buf))
            buf = []
            if len(batches) * step >= chunk_rows:
                yield pa.Table.from_batches(batches, schema=INPUT_SCHEMA)
                batches = []
    if buf:
        batches.append(_batch(buf))
    if batches:
        yield pa.Table.from_batches(batches, schema=INPUT_SCHEMA)


def _batch(rows: list[tuple]) -> pa.RecordBatch:
    cols = zip(*rows)
    return pa.RecordBatch.from_arrays([pa.array(c, type=f.type) for c, f in zip(cols, INPUT_SCHEMA)],
                                      schema=INPUT_SCHEMA)


def _ok(uri: str, size: int, mtime_ns: int | None = None, etag: str | None = None) -> tuple:
    return (uri, size, mtime_ns, etag, schema.OK, None)


def _error(uri: str, reason: str) -> tuple:
    return (uri, None, None, None, schema.ERROR, reason)


def _ext(name: str) -> str:
    ext = os.path.splitext(name)[1].lower() or NO_EXT
    # A non-UTF-8 name's extension must still print in the CLI's warning.
    return ext.encode("utf-8", "backslashreplace").decode("utf-8")


# ---- local folders ------------------------------------------------------------------------------

def _check_local_root(src: str) -> str:
    path = uri_to_path(src) if src.startswith("file://") else os.path.abspath(os.path.expanduser(src))
    if os.path.isfile(path):
        raise StorageError(f"{src}: is a file, not a folder; pass the folder that holds the images "
                           "(or an s3:// prefix, or --input-list FILE for a list of files)")
    if not os.path.isdir(path):
        raise StorageError(f"{src}: no such folder; check the path")
    try:
        os.scandir(path).close()
    except OSError as exc:
        raise StorageError(f"{src}: can't be listed ({exc.strerror}); check its permissions") from None
    return path


def _dir_id(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _ancestor_ids(root: str) -> set[tuple[int, int]]:
    """The root and every folder above it: a link to any of them would list the root again."""
    ids, path = set(), os.path.realpath(root)
    while True:
        ids.add(_dir_id(path))
        parent = os.path.dirname(path)
        if parent == path:
            return ids
        path = parent


def _walk_local(root: str, suffixes, skipped: Counter) -> Iterator[tuple]:
    """Rows of every entry under root, depth first with an explicit stack (no recursion limit)."""
    seen = _ancestor_ids(root)
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = os.scandir(folder)
        except OSError as exc:   # the folder's files are unknown: one row says so
            yield _error(path_to_uri(folder), f"folder can't be listed ({exc.strerror})")
            continue
        base = path_to_uri(folder).rstrip("/") + "/"   # quoted once per folder, not per file
        with entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if _is_dir(entry):
                    key = _dir_id(entry.path)
                    if key in seen:
                        skipped[LINK_SEEN] += 1
                    else:
                        seen.add(key)
                        stack.append(entry.path)
                elif entry.name.lower().endswith(suffixes):
                    yield _file_row(entry, base)
                else:
                    skipped[_ext(entry.name)] += 1


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()   # follows symlinks; False for a dangling one
    except OSError:
        return False            # e.g. a symlink loop: _file_row reports it


_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def _file_row(entry: os.DirEntry, base: str) -> tuple:
    uri = base + quote(os.fsencode(entry.name), safe="")
    try:
        entry.path.encode("utf-8")
    except UnicodeEncodeError:
        return _error(uri, "file name is not valid UTF-8; rename it (e.g. with convmv)")
    try:
        st = entry.stat()   # follows symlinks
    except FileNotFoundError:
        return _error(uri, "dangling symlink: its target does not exist")
    except OSError as exc:
        return _error(uri, f"can't be inspected ({exc.strerror})")
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a regular file")
        return _error(uri, f"{kind}, not an image file")
    # Permission bits don't say whether this process can read it (root, ACLs, FUSE): open it.
    try:
        os.close(os.open(entry.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC))
    except OSError as exc:
        return _error(uri, f"can't be opened ({exc.strerror}); check its permissions")
    return _ok(uri, st.st_size, st.st_mtime_ns)


# ---- S3 -----------------------------------------------------------------------------------------

def _s3_client(workers: int):
    import boto3
    from botocore.config import Config

    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
    if endpoint:
        storage._check_reachable(endpoint)   # seconds, not minutes of retries, on a dead endpoint
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    config = Config(max_pool_connections=max(workers, 10), retries={"max_attempts": 10, "mode": "standard"})
    return boto3.client("s3", endpoint_url=endpoint or None, region_name=region, config=config)


def _split_s3(src: str) -> tuple[str, str]:
    bucket, _, key = src[len("s3://"):].partition("/")
    if not bucket:
        raise StorageError(f"{src}: no bucket name; write s3://bucket/prefix")
    return bucket, key.strip("/")


def _s3_fail(src: str, exc: Exception) -> StorageError:
    code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
    if code == "NoSuchBucket":
        return StorageError(f"{src}: no such bucket; check the bucket name and AWS_ENDPOINT_URL")
    if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
        return StorageError(f"{src}: access denied ({code}); check the AWS credentials and the "
                            "bucket policy")
    return StorageError(f"{src}: can't be listed ({storage.first_line(exc)}); check the bucket, "
                        "the network and the AWS credentials")


def _check_s3_root(client, src: str) -> tuple[str, str]:
    """(bucket, prefix ending in '/' or ''), after one request shows there is something to list."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = _split_s3(src)
    prefix = key + "/" if key else ""
    try:
        if client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1).get("KeyCount", 0):
            return bucket, prefix
        is_object = bool(key) and _exists(client, bucket, key)
    except (BotoCoreError, ClientError) as exc:
        raise _s3_fail(src, exc) from None
    if is_object:
        raise StorageError(f"{src}: is an object, not a prefix; pass the prefix that holds the images "
                           "(or --input-list FILE for a list of objects)")
    raise StorageError(f"{src}: no objects under this prefix; check the prefix (and AWS_ENDPOINT_URL)")


def _exists(client, bucket: str, key: str) -> bool:
    from botocore.exceptions import ClientError

    try:
        client.head_object(Bucket=bucket, Key=key)
        return True
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise


def _walk_s3(client, bucket: str, root: str, suffixes, skipped: Counter, workers: int) -> Iterator[tuple]:
    """Rows of every key under root. Each "folder" (common prefix) is listed by its own task in a
    thread pool, so listing runs `workers` requests at a time on a tree of folders. The tasks talk
    to this generator through one bounded queue (memory stays bounded when the consumer is slow)
    and only this generator submits tasks and counts them (no shared bookkeeping)."""
    msgs: queue.Queue = queue.Queue(maxsize=4 * workers)
    stop = threading.Event()
    pool = ThreadPoolExecutor(workers, thread_name_prefix="alle-s3-list")
    pending = 1
    pool.submit(_list_level, client, bucket, root, msgs, stop)
    try:
        while pending:
            kind, payload = msgs.get()
            if kind == "error":
                raise _s3_fail(f"s3://{bucket}/{root}", payload)
            if kind == "done":
                pending -= 1
            elif kind == "prefixes":
                for prefix in payload:
                    if not _hidden(prefix[:-1].rpartition("/")[2]):
                        pending += 1
                        pool.submit(_list_level, client, bucket, prefix, msgs, stop)
            else:
                yield from _s3_rows(bucket, payload, suffixes, skipped)
    finally:
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)


def _hidden(segment: str) -> bool:
    """A hidden name (.DS_Store, .git): it starts with a dot. Not the segments "." and "..": in an S3
    key they are plain characters ("odd/./x.jpg" is its own object), listed like any other."""
    return segment.startswith(".") and segment not in (".", "..")


def _s3_rows(bucket: str, objects: list[tuple], suffixes, skipped: Counter) -> Iterator[tuple]:
    for key, size, etag in objects:
        name = key.rpartition("/")[2]
        if not name or name.startswith("."):   # a "folder" marker object, a hidden file
            continue
        if name.lower().endswith(suffixes):
            yield _ok(f"s3://{bucket}/{key}", size, etag=etag.strip('"') if etag else None)
        else:
            skipped[_ext(name)] += 1


def _list_level(client, bucket: str, prefix: str, msgs: queue.Queue, stop: threading.Event) -> None:
    """One folder's keys (page by page) and sub-folders, then "done"; or "error"."""
    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/")
        for page in pages:
            if stop.is_set():
                return
            subs = [p["Prefix"] for p in page.get("CommonPrefixes", ())]
            if subs:
                _put(msgs, stop, ("prefixes", subs))
            objs = [(o["Key"], o["Size"], o.get("ETag")) for o in page.get("Contents", ())]
            if objs:
                _put(msgs, stop, ("objects", objs))
        _put(msgs, stop, ("done", None))
    except Exception as exc:  # noqa: BLE001 - handed to the consumer, which raises it as one line
        _put(msgs, stop, ("error", exc))


def _put(msgs: queue.Queue, stop: threading.Event, item) -> None:
    # A consumer that stopped early (error, closed generator) must not leave tasks blocked forever.
    while not stop.is_set():
        try:
            msgs.put(item, timeout=0.2)
            return
        except queue.Full:
            continue
