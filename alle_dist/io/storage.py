"""Local paths and s3:// URIs behind one small API, on pyarrow.fs.

Credentials and endpoint come from the standard AWS chain and environment (AWS_ENDPOINT_URL
included); nothing here logs or stores them.
"""
from __future__ import annotations

import json
import os
import posixpath
import socket
import uuid
from functools import lru_cache
from urllib.parse import quote, unquote_to_bytes, urlparse, urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ..errors import StorageError


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def join(root: str, *parts: str) -> str:
    root = str(root)
    if is_s3(root):
        return posixpath.join(root.rstrip("/"), *parts)
    return os.path.join(root, *parts)


def absolute(uri: str) -> str:
    """An s3:// URI as given; a local path made absolute, so a recorded source still resolves when a
    later stage runs from another directory (or as a `ray job submit` job in its own working dir)."""
    return str(uri) if is_s3(uri) else os.path.abspath(os.path.expanduser(str(uri)))


def path_to_uri(path: str) -> str:
    """`file://` URI of a local path: absolute, its raw bytes percent-encoded (so any name, even one
    that is not UTF-8, gives a valid UTF-8 URI that uri_to_path turns back into the same path)."""
    return "file://" + quote(os.fsencode(os.path.abspath(path)), safe="/")


def uri_to_path(uri: str) -> str:
    """The local path of a `file://` URI (the inverse of path_to_uri)."""
    parts = urlsplit(uri)
    if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
        raise StorageError(f"{uri}: not a local file:/// URI")
    return os.fsdecode(unquote_to_bytes(parts.path))


def to_uri(location: str) -> str:
    """The absolute URI of a local path or an s3:// URI (what classification rows are keyed by)."""
    return str(location) if is_s3(location) or str(location).startswith("file://") else path_to_uri(location)


def from_uri(uri: str) -> str:
    """What `resolve` and `read_bytes` take for a URI: the local path of a file:// URI, s3:// as is."""
    return uri_to_path(uri) if str(uri).startswith("file://") else str(uri)


def _check_reachable(endpoint: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds, naming the endpoint, when nothing listens there: the retry strategy that rides
    out S3 throttling would otherwise spend ~90 s on a refused connection before any error."""
    parsed = urlparse(endpoint if "//" in endpoint else "//" + endpoint)
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    try:
        socket.create_connection((parsed.hostname, port), timeout=timeout_s).close()
    except OSError as exc:
        raise StorageError(f"S3 endpoint {endpoint} is unreachable ({exc.strerror or exc}); check "
                           "AWS_ENDPOINT_URL and that the S3 service is up") from None


@lru_cache(maxsize=8)
def _s3(endpoint: str | None, region: str | None) -> pafs.S3FileSystem:
    kwargs: dict = {"retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=10)}
    if endpoint:
        _check_reachable(endpoint)
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "https"
    if region:
        kwargs["region"] = region
    return pafs.S3FileSystem(**kwargs)


def s3_filesystem() -> pafs.S3FileSystem:
    """The S3 filesystem for the current environment (AWS_ENDPOINT_URL honoured)."""
    return _s3(*_endpoint_region())


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or an s3:// URI."""
    uri = str(uri)
    if is_s3(uri):
        return s3_filesystem(), uri[len("s3://"):].rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def list_files(root: str, suffixes: tuple[str, ...] | None = None) -> list[tuple[str, int]]:
    """Every file under `root`, recursively: (path relative to root with '/', size), sorted."""
    fs, base = resolve(root)
    try:
        info = fs.get_file_info(base)
        if info.type == pafs.FileType.NotFound:
            raise StorageError(f"{root}: no such folder or prefix; check the path (and, for s3://, "
                               "the bucket name and AWS_ENDPOINT_URL)")
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
    except StorageError:
        raise
    except OSError as exc:
        raise StorageError(f"{root}: can't be listed ({first_line(exc)}); check the bucket, "
                           "the network and the AWS credentials") from None
    out = []
    for fi in infos:
        if fi.type != pafs.FileType.File:
            continue
        rel = posixpath.relpath(fi.path.replace(os.sep, "/"), base.replace(os.sep, "/"))
        if any(p.startswith(".") for p in rel.split("/")):
            continue  # hidden files and folders (.DS_Store, ._x.jpg, .ipynb_checkpoints)
        if suffixes is None or rel.lower().endswith(suffixes):
            out.append((rel, fi.size))
    return sorted(out)


def list_images(root: str) -> list[str]:
    """The relative paths of every image file (schema.IMAGE_SUFFIXES) under `root`, sorted."""
    from ..schema import IMAGE_SUFFIXES

    return [rel for rel, _ in list_files(root, IMAGE_SUFFIXES)]


def read_bytes(uri: str) -> bytes:
    if is_s3(uri) and odd_key(str(uri)[len("s3://"):].partition("/")[2]):
        return _read_s3_literally(str(uri))
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def odd_key(key: str) -> bool:
    """An S3 key that pyarrow's S3 filesystem can't address as written: it refuses an empty segment
    ("a//b.jpg": ArrowInvalid) and normalises "." and ".." segments away (another object, or none).
    S3 keys are plain strings: such keys are real, distinct objects."""
    return any(seg in ("", ".", "..") for seg in key.split("/"))


def _read_s3_literally(uri: str) -> bytes:
    """An object read by its exact key through boto3 (errors as OSError, like pyarrow's)."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, key = uri[len("s3://"):].partition("/")
    try:
        return _boto3_s3(*_endpoint_region()).get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchKey", "404", "NotFound"):
            raise FileNotFoundError(f"{uri}: NoSuchKey") from None
        if code in ("AccessDenied", "403"):
            raise PermissionError(f"{uri}: AccessDenied (HTTP status 403)") from None
        raise OSError(f"{uri}: {first_line(exc)}") from None
    except BotoCoreError as exc:
        raise OSError(f"{uri}: {first_line(exc)}") from None


@lru_cache(maxsize=8)
def _boto3_s3(endpoint: str | None, region: str):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, region_name=region,
                        config=Config(retries={"max_attempts": 10, "mode": "standard"}))


def _endpoint_region() -> tuple[str | None, str]:
    return (os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3") or None,
            os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1")


def write_bytes(uri: str, data: bytes) -> None:
    """Write all or nothing: a temporary file renamed into place (an S3 PUT is atomic already)."""
    fs, path = resolve(uri)
    if is_s3(uri):
        with fs.open_output_stream(path) as f:
            f.write(data)
        return
    fs.create_dir(os.path.dirname(path), recursive=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with fs.open_output_stream(tmp) as f:
        f.write(data)
    os.replace(tmp, path)


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def delete(uri: str) -> None:
    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif info.type == pafs.FileType.File:
        fs.delete_file(path)


def read_json(uri: str):
    return json.loads(read_bytes(uri))


def write_json(uri: str, obj) -> None:
    write_bytes(uri, (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode())


def read_parquet(uri: str) -> pa.Table:
    fs, path = resolve(uri)
    return pq.read_table(path, filesystem=fs)


def write_parquet(table: pa.Table, uri: str) -> None:
    """Write a whole table atomically (see write_bytes)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    write_bytes(uri, sink.getvalue().to_pybytes())


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (or its type name): for one-line errors."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
