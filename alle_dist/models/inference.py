"""The one inference path: image bytes → model input → every backbone's outputs.

Post-training export (train.posttrain) and bulk classification (classify.pipeline) both run it, so the
images a model is judged on after training and the images it classifies in production go through
the same code: no train/serve skew by construction.

Core (Ray-free): `read_batch` (read, sha256, decode, image statistics, segmentation + resize: a
read task), `ModelRunner` (read rows → probabilities and penultimate features per backbone).
Ray shell: `model_outputs(ds, ...)` puts the read tasks and a pool of model actors behind a dataset.
Between the two, images travel as raw uint8 bytes (4x smaller than float32); model outputs travel
as float32 bytes per row (`pack_rows` / `unpack_rows`).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from .. import schema
from ..config import SegmentConfig
from ..constants import MAX_PIXELS
from ..errors import ConfigError, DecodeError, InputError, StorageError
from ..imaging.model_input import from_bytes
from ..imaging.stain import StainReference
from ..io import storage
from . import field_stats

# Internal status of an input already classified with these bytes: it flows to the driver (so the
# run can be reconciled) but is never written.
SKIP = "skip"
PROBS, FEATURES = "_probs_", "_features_"   # model-output columns: PROBS + backbone, FEATURES + backbone
# Columns a read task adds; every other input column passes through unchanged (e.g. a label, a path).
READ_COLUMNS = ("uri", "sha256", "bytes", "status", "error", "mask_fraction", "image_stats", "image")


# ---------------------------------------------------------------- reading and preparing (read tasks)

@dataclass(frozen=True)
class ReadSpec:
    """How the read tasks turn an input's bytes into model input (the model's own preprocessing)."""
    image_size: int
    segment: SegmentConfig | None = SegmentConfig()   # None: the models were trained unsegmented
    stain: StainReference | None = None               # the models' stain normalisation (None: off)
    max_pixels: int = MAX_PIXELS
    image_stats: bool = True      # compute field_stats features (False: the models have no image statistics)
    working_size: int | None = None   # the models' (Preprocessing.working_size); None: the original path
    listed: bool = True           # the inputs come from a listing (False: an input list, nothing was listed)


def read_input(uri: str, listed: bool = True) -> bytes:
    """The bytes of one input, named by its absolute URI (file:///abs/path or s3://bucket/key);
    InputError when this file alone is the problem.

    A file gone or unreadable since listing (or never there, for an input list's entry: `listed`
    False) is that file's problem. An S3 403 is not: it means the credentials or the bucket policy
    are wrong for every file, so it fails the job (StorageError).
    """
    try:
        if uri.startswith("file://"):   # Python's open takes any name, also one that is not UTF-8
            with open(os.fsencode(storage.uri_to_path(uri)), "rb") as f:
                return f.read()
        return storage.read_bytes(uri)
    except FileNotFoundError:
        raise InputError("vanished between listing and reading (not found)" if listed
                         else "not found (no such file or object)") from None
    except pa.ArrowInvalid as exc:   # a path pyarrow refuses: this input's problem, never the job's
        raise InputError(f"can't be read: {storage.first_line(exc)}") from None
    except OSError as exc:
        text = str(exc)
        if storage.is_s3(uri) and any(k in text for k in ("ACCESS_DENIED", "AccessDenied", "HTTP status 403")):
            raise StorageError(f"{uri}: access denied (HTTP 403); check the AWS credentials "
                               "and the bucket policy (s3:GetObject)") from None
        if storage.is_s3(uri) and "NoSuchKey" not in text and "does not exist" not in text:
            raise  # throttling or network after all retries: fail the job; a rerun resumes
        raise InputError(f"can't be read: {storage.first_line(exc)}") from None


def read_one(spec: ReadSpec, uri: str, size: int | None, done_sha256: str | None) -> dict:
    """One read row (see READ_COLUMNS); `image` is the raw HxWx3 uint8 bytes, b'' unless ok;
    `image_stats` the whole field's field_stats features as float32 bytes (None unless ok)."""
    row = {"uri": uri, "sha256": None, "bytes": size, "status": schema.OK, "error": None,
           "mask_fraction": None, "image_stats": None, "image": b""}
    try:
        data = read_input(uri, spec.listed)
        row["bytes"], row["sha256"] = len(data), hashlib.sha256(data).hexdigest()
        if done_sha256 is not None and row["sha256"] == done_sha256:
            row["status"] = SKIP
            return row
        prepared = from_bytes(data, spec.image_size, spec.segment, spec.working_size, spec.max_pixels, spec.stain)
        del data
        if spec.image_stats:   # of the whole field, as training computes them
            row["image_stats"] = field_stats.features_of(prepared.field).tobytes()
        row["image"], row["mask_fraction"] = prepared.image.tobytes(), prepared.mask_fraction
    except (InputError, DecodeError) as exc:
        row["status"], row["error"] = schema.ERROR, str(exc)
    return row


_PREPARED_TYPES = {"uri": pa.string(), "sha256": pa.string(), "bytes": pa.int64(), "status": pa.string(),
                   "error": pa.string(), "mask_fraction": pa.float32(), "image_stats": pa.binary(),
                   "image": pa.binary()}


def read_batch(batch: pa.Table, spec: ReadSpec) -> pa.Table:
    """The read task: rows (uri[, bytes, done_sha256, ...]) → read rows; never raises for one bad
    file. Input columns other than those three pass through (training's export carries `path`, `label`)."""
    n = batch.num_rows
    col = lambda c: batch.column(c).to_pylist() if c in batch.column_names else [None] * n  # noqa: E731
    rows = [read_one(spec, u, s, d) for u, s, d in zip(col("uri"), col("bytes"), col("done_sha256"))]
    out = pa.table({c: pa.array([r[c] for r in rows], t) for c, t in _PREPARED_TYPES.items()})
    for name in batch.column_names:
        if name not in out.column_names and name != "done_sha256":
            out = out.append_column(name, batch.column(name))
    return out


def images_of(batch: pa.Table, image_size: int) -> np.ndarray:
    """The ok rows' images as one N x S x S x 3 uint8 array (one copy out of Arrow)."""
    ok = [v for v, s in zip(batch.column("image").to_pylist(), batch.column("status").to_pylist())
          if s == schema.OK]
    out = np.empty((len(ok), image_size, image_size, 3), np.uint8)
    for i, v in enumerate(ok):
        out[i] = np.frombuffer(v, np.uint8).reshape(image_size, image_size, 3)
    return out


def ok_mask(batch: pa.Table) -> np.ndarray:
    return np.asarray(batch.column("status").to_pylist(), dtype=object) == schema.OK


def pack_rows(ok: np.ndarray, matrix: np.ndarray) -> pa.Array:
    """One float32 row of `matrix` per ok row, as bytes (null elsewhere): compact in the object store."""
    rows = iter(np.ascontiguousarray(matrix, np.float32))
    return pa.array([next(rows).tobytes() if k else None for k in ok], pa.binary())


def unpack_rows(column, ok: np.ndarray) -> np.ndarray:
    """The ok rows of a pack_rows column as one float32 matrix."""
    vals = [v for v, k in zip(column.to_pylist(), ok) if k]
    return np.frombuffer(b"".join(vals), np.float32).reshape(len(vals), -1)


def scatter(ok: np.ndarray, values: np.ndarray) -> list:
    """Values of the ok rows spread over all rows; None elsewhere."""
    out = [None] * len(ok)
    for i, v in zip(np.flatnonzero(ok), np.asarray(values).tolist()):
        out[i] = v
    return out


def as_array(values, type_: pa.DataType, n: int) -> pa.Array:
    if values is None:
        return pa.nulls(n, type_)
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values.cast(type_)
    return pa.array(values, type_)




# ---------------------------------------------------------------- the models (model actors)

class ModelRunner:
    """Read rows → the same rows without images, plus every backbone's probabilities and
    penultimate features (float32 bytes per ok row, PROBS / FEATURES + backbone). Error and skip
    rows pass through with nulls."""

    def __init__(self, model_dirs: dict[str, str], device: str = "cpu"):
        from .predictor import Predictor

        self.predictors = {b: Predictor(d, device) for b, d in model_dirs.items()}
        self.image_size = max(p.image_size for p in self.predictors.values())

    def __call__(self, batch: pa.Table) -> pa.Table:
        ok = ok_mask(batch)
        images = images_of(batch, self.image_size)
        out = batch.drop_columns(["image"])   # image_stats travel on to the caller
        for b, predictor in self.predictors.items():
            res = predictor(images) if ok.any() else {"probs": images[:0, 0, 0], "features": images[:0, 0, 0]}
            out = out.append_column(PROBS + b, pack_rows(ok, res["probs"]))
            out = out.append_column(FEATURES + b, pack_rows(ok, res["features"]))
        return out


class _ModelActor:
    """One per GPU (or CPU worker): the models load once per actor, batches stream through."""

    def __init__(self, model_dirs: dict[str, str], device: str, threads: int):
        import torch

        torch.set_num_threads(max(1, threads))
        self.runner = ModelRunner(model_dirs, device)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.runner(batch)


@dataclass(frozen=True)
class ActorLayout:
    """How many model actors, on which device, with what resources each (see actor_layout)."""
    actors: int
    device: str                 # "cuda" or "cpu"
    resources: dict             # num_gpus / num_cpus per actor
    threads: int                # torch threads per actor


def actor_layout(gpus: int | None, cpu_workers: int | None) -> ActorLayout:
    """One actor per GPU; without GPUs, CPU actors that leave at least half the CPUs to the read
    tasks (reads never starve). `gpus` None = every GPU of the cluster."""
    from ..runtime import cluster_cpus, cluster_gpus

    have = cluster_gpus()
    gpus = have if gpus is None else gpus
    if gpus > have:   # an actor asking for a GPU the cluster lacks would wait forever
        raise ConfigError(f"--gpus {gpus}: the Ray cluster has {have} GPU(s); use --gpus {have} (0 = CPU actors)")
    if gpus > 0:
        return ActorLayout(gpus, "cuda", {"num_gpus": 1, "num_cpus": 1}, 1)
    cpus = cluster_cpus()
    actors = cpu_workers or max(1, cpus // 2)
    per_actor = min(1.0, cpus / (2 * actors))
    return ActorLayout(actors, "cpu", {"num_cpus": per_actor}, max(1, int(per_actor)))


def model_outputs(ds, spec: ReadSpec, model_dirs: dict[str, str], layout: ActorLayout,
                  batch_size: int, read_cpus: float = 0.5, read_tasks: int | None = None):
    """Rows (uri[, bytes, done_sha256, passthrough...]) → read tasks → model actors, lazily."""
    import ray.data

    read_compute = ray.data.TaskPoolStrategy(size=read_tasks) if read_tasks else None
    ds = ds.map_batches(read_batch, fn_kwargs={"spec": spec}, batch_format="pyarrow", batch_size=None,
                        num_cpus=read_cpus, compute=read_compute)
    return ds.map_batches(
        _ModelActor, fn_constructor_kwargs={"model_dirs": model_dirs, "device": layout.device,
                                            "threads": layout.threads},
        batch_format="pyarrow", batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=layout.actors), **layout.resources)
