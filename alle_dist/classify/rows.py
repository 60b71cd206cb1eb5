"""Result rows (schema.classify_schema) of one run: the provenance every row carries, the readable
`path` of a uri, and any partial table (error rows, decided rows) completed to the full schema."""
from __future__ import annotations

import datetime as dt
import os

import pyarrow as pa
import pyarrow.compute as pc

from .. import __version__, schema
from ..io import storage


def path_of(uri: str) -> str:
    """The readable form of a uri: the local path of a file:// URI (bytes that are not UTF-8 shown as
    backslash escapes), an s3:// URI as it is."""
    if not uri.startswith("file://"):
        return uri
    return os.fsencode(storage.uri_to_path(uri)).decode("utf-8", "backslashreplace")


def paths(uris: pa.ChunkedArray | pa.Array) -> pa.Array:
    return pa.array([path_of(u) for u in uris.to_pylist()], pa.string())


class RowMaker:
    """The run's constant columns (weights by backbone, γ, thresholds, model, version, run) and the
    completion of partial tables to the result schema."""

    def __init__(self, spec, model_sha256: str, run_id: str):
        self.schema = schema.classify_schema(list(spec.classes), list(spec.backbones))
        self.constants = {
            "weights": pa.array([dict(zip(spec.backbones, map(float, spec.weights)))], schema.WEIGHTS_TYPE),
            "gamma": pa.array([spec.gamma], pa.float32()),
            "thresholds": pa.array([spec.referral.thresholds()], schema.THRESHOLDS_TYPE),
            "model_sha256": pa.array([model_sha256], pa.string()),
            "version": pa.array([__version__], pa.string()),
            "run_id": pa.array([run_id], pa.string()),
        }

    def complete(self, cols: dict, n: int) -> pa.Table:
        """A result table of n rows from `cols` (name → Arrow array or list); the run's constants,
        `path` from `uri` and `classified_at` = now where not given; nulls elsewhere."""
        cols = dict(cols)
        cols.setdefault("path", paths(cols["uri"]))
        zeros = pa.array([0] * n, pa.int32()) if n else pa.array([], pa.int32())
        for name, one in self.constants.items():
            cols.setdefault(name, one.take(zeros))
        now = pa.scalar(dt.datetime.now(dt.timezone.utc), pa.timestamp("us", tz="UTC"))
        cols.setdefault("classified_at", pa.repeat(now, n))
        return pa.Table.from_arrays([_array(cols.get(f.name), f.type, n) for f in self.schema], schema=self.schema)


def _array(values, type_: pa.DataType, n: int):
    if values is None:
        return pa.nulls(n, type_)
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values if values.type == type_ else pc.cast(values, type_)
    return pa.array(values, type_)
