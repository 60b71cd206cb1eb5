"""Input lists: the inputs of a bulk classification named by a Parquet or CSV file (a `uri` column,
or `bucket` + `key` as in an S3 Inventory export), read in chunks as listing.Listing tables
(listing.INPUT_SCHEMA) without listing any store.

A list is written by people and tools, so it may spell one local file several ways
(`file:///data//x.jpg`, `file:///data/./x.jpg`, `/data/x.jpg`) and name one input twice: file URIs
are brought to the one spelling a folder listing gives (`canonical_file_uri`), so one file keeps one
row, and each uri is classified once (`SeenUris`; Listing.duplicates counts the rest). S3 keys are
taken literally: `a//b.jpg` and `a/b.jpg` are two objects.
"""
from __future__ import annotations

import functools
import hashlib
import os
from collections import Counter
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import schema
from ..errors import StorageError
from ..io import storage
from ..io.storage import path_to_uri, uri_to_path
from .listing import CHUNK_ROWS, INPUT_SCHEMA, Listing, _ext


# ---- reading a list ---------------------------------------------------------------------------------

def read_input_list(path: str, *, suffixes: tuple[str, ...] = schema.IMAGE_SUFFIXES,
                    chunk_rows: int = CHUNK_ROWS) -> Listing:
    """The inputs named by a Parquet (.parquet/.pq) or CSV (.csv/.csv.gz, with a header) file, read
    in batches without listing any store: a `uri` column (s3://…, file:///… or an absolute path), or
    `bucket` + `key` columns (an S3 Inventory export; keys taken literally), optionally `size` and
    `etag`/`e_tag`; names case-insensitive. The suffix filter applies; hidden names are kept (the
    list is explicit). Checks the file's columns now; a bad row raises StorageError when read."""
    fs, inner = storage.resolve(path)
    name = inner.lower()
    if name.endswith((".parquet", ".pq")):
        batches = _parquet_batches
    elif name.endswith((".csv", ".csv.gz")):
        batches = _csv_batches
    else:
        raise StorageError(f"{path}: an input list must be a .parquet or .csv file")
    try:
        cols = _columns(path, batches(fs, inner, None, chunk_rows, names_only=True))
    except (OSError, pa.ArrowInvalid) as exc:
        raise StorageError(f"{path}: can't be read as an input list ({storage.first_line(exc)})") from None

    def chunks(skipped: Counter) -> Iterator[pa.Table]:
        row0 = 0
        for batch in batches(fs, inner, cols, chunk_rows):
            for start in range(0, batch.num_rows, chunk_rows):   # CSV blocks may exceed chunk_rows
                part = batch.slice(start, chunk_rows)
                yield _list_table(path, part, cols, suffixes, skipped, row0)
                row0 += part.num_rows
    return Listing(path, chunks, dedupe=True)


def _columns(path: str, names: list[str]) -> dict[str, str]:
    """{role: the file's column name} for the roles uri / bucket / key / size / etag."""
    lower = {n.lower(): n for n in names}
    cols = {role: lower[n] for role, n in (("uri", "uri"), ("bucket", "bucket"), ("key", "key"),
                                          ("size", "size"), ("etag", "etag"), ("etag", "e_tag"))
            if n in lower}
    if "uri" not in cols and not ("bucket" in cols and "key" in cols):
        raise StorageError(f"{path}: an input list needs a `uri` column, or `bucket` and `key` "
                           f"columns (found: {', '.join(names) or 'none'})")
    return cols


def _parquet_batches(fs, inner: str, cols, chunk_rows: int, names_only: bool = False):
    import pyarrow.dataset as ds

    data = ds.dataset(inner, filesystem=fs, format="parquet")
    if names_only:
        return data.schema.names
    # The scanner's defaults (read-ahead of 16 batches, pre-buffered row groups, threads) hold far
    # more than one chunk: with them peak RSS grew ~40 MB per million URIs, without ~4.
    return data.to_batches(columns=list(cols.values()), batch_size=chunk_rows, batch_readahead=1,
                           fragment_readahead=1, use_threads=False,
                           fragment_scan_options=ds.ParquetFragmentScanOptions(pre_buffer=False))


def _csv_batches(fs, inner: str, cols, chunk_rows: int, names_only: bool = False):
    import pyarrow.csv as pcsv

    stream = fs.open_input_stream(inner, compression="detect")
    if names_only:
        with stream:
            return pcsv.open_csv(stream).schema.names
    # Keys and URIs stay strings (a key "0123" is not a number); size is an integer.
    types = {c: (pa.int64() if role == "size" else pa.string()) for role, c in cols.items()}
    convert = pcsv.ConvertOptions(include_columns=list(cols.values()), column_types=types)
    return pcsv.open_csv(stream, read_options=pcsv.ReadOptions(block_size=8 << 20), convert_options=convert)


def _list_table(src: str, batch: pa.RecordBatch, cols: dict, suffixes, skipped: Counter,
                row0: int) -> pa.Table:
    if "uri" in cols:
        uris = _checked_uris(src, batch.column(cols["uri"]).cast(pa.string()), row0)
    else:
        bucket, key = (batch.column(cols[r]).cast(pa.string()) for r in ("bucket", "key"))
        uris = pc.binary_join_element_wise("s3:/", bucket, key, "/")   # s3:/ + / + bucket + / + key
        _raise_on_null(src, uris, row0, "an empty bucket or key")
    lower = pc.utf8_lower(uris)
    keep = functools.reduce(pc.or_, [pc.ends_with(lower, s) for s in suffixes])
    for uri in uris.filter(pc.invert(keep)).to_pylist():
        skipped[_ext(uri.rpartition("/")[2])] += 1
    n = int(pc.sum(keep).as_py() or 0)
    size = (batch.column(cols["size"]).cast(pa.int64()).filter(keep) if "size" in cols
            else pa.nulls(n, pa.int64()))
    etag = (pc.replace_substring(batch.column(cols["etag"]).cast(pa.string()).filter(keep), '"', "")
            if "etag" in cols else pa.nulls(n, pa.string()))
    return pa.Table.from_arrays([uris.filter(keep), size, pa.nulls(n, pa.int64()), etag,
                                 pa.array([schema.OK] * n, pa.string()), pa.nulls(n, pa.string())],
                                schema=INPUT_SCHEMA)


def _raise_on_null(src: str, uris: pa.Array, row0: int, what: str) -> None:
    if uris.null_count:
        row = row0 + pc.index(pc.is_null(uris), True).as_py() + 1
        raise StorageError(f"{src}: row {row} has {what}; every row must name one input")


def _checked_uris(src: str, uris: pa.Array, row0: int) -> pa.Array:
    """s3:// URIs as given (keys are literal); absolute paths and file:/// URIs in the one spelling a
    folder listing gives (`canonical_file_uri`); anything else an error."""
    _raise_on_null(src, uris, row0, "an empty uri")
    is_path = pc.starts_with(uris, "/")
    is_file = pc.starts_with(uris, "file:///")
    good = pc.or_(pc.or_(pc.starts_with(uris, "s3://"), is_file), is_path)
    if not pc.all(good).as_py():
        i = pc.index(good, False).as_py()
        raise StorageError(f"{src}: row {row0 + i + 1}: {uris[i].as_py()!r} is a relative path or has an "
                           "unknown scheme; use s3://bucket/key, file:///abs/path or an absolute path")
    # Per-row Python only where the spelling may differ: paths, and URIs with %-escapes or other
    # characters than a-z A-Z 0-9 _ . ~ - /, or a `//`, `/./` or `/../` segment.
    plain = pc.and_(pc.match_substring_regex(uris, r"^file:///[A-Za-z0-9_.~/-]*$"),
                    pc.invert(pc.match_substring_regex(pc.utf8_slice_codeunits(uris, 7), r"//|/\.\.?(/|$)")))
    fix = pc.fill_null(pc.or_(is_path, pc.and_(is_file, pc.invert(plain))), False)
    if pc.any(fix).as_py():
        uris = pa.array([canonical_file_uri(u) if f else u for u, f in zip(uris.to_pylist(), fix.to_pylist())],
                        pa.string())
    return uris


def canonical_file_uri(uri_or_path: str) -> str:
    """The one URI of a local file, as a folder listing spells it: the path (percent-decoded) made
    absolute and normalised lexically (`//` and `/./` dropped, `x/..` resolved as text; symlinks are
    not resolved, a file reached through a linked folder keeps that name), then percent-encoded by
    storage.path_to_uri."""
    path = uri_to_path(uri_or_path) if uri_or_path.startswith("file://") else uri_or_path
    return path_to_uri("/" + os.path.normpath(path).lstrip("/"))


class SeenUris:
    """The URIs seen so far, as 16-byte BLAKE2b digests in a few sorted numpy arrays of doubling size
    (~16 bytes per URI, membership by binary search), so duplicates across listing chunks are found
    without holding the URIs themselves: ~160 MB at 10 million inputs."""

    def __init__(self):
        self._levels: list[np.ndarray] = []

    def first(self, uris: pa.ChunkedArray | pa.Array) -> np.ndarray:
        """A mask of the uris seen neither before nor earlier in `uris`; remembers them."""
        digests = np.array([hashlib.blake2b(u.encode(), digest_size=16).digest() for u in uris.to_pylist()],
                           dtype="S16")
        keep = np.zeros(len(digests), bool)
        keep[np.unique(digests, return_index=True)[1]] = True
        for level in self._levels:
            at = np.minimum(np.searchsorted(level, digests), len(level) - 1)
            keep &= level[at] != digests
        if keep.any():
            self._push(np.sort(digests[keep]))
        return keep

    def _push(self, new: np.ndarray) -> None:
        while self._levels and len(self._levels[-1]) <= 2 * len(new):
            new = np.sort(np.concatenate([self._levels.pop(), new]))
        self._levels.append(new)
