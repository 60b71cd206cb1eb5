"""Classify, before any work: check the models (every hash) and plan what to read (Ray-free).

`resolve_models` loads ensemble.json and checks every model file in the driver, so a damaged or
tampered model stops the job before a worker starts. `plan_job` lists SRC and drops what DST holds.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import pyarrow as pa

from ..config import ClassifyConfig, JobConfig
from ..ensemble import lineage as ens_lineage
from ..ensemble import rule as ensemble
from ..errors import ConfigError
from ..io import storage
from ..models import field_stats, inference, preprocessing
from ..models import files as model_files
from ..rundir import RunDir
from .. import schema
from . import parts


@dataclass(frozen=True)
class Models:
    """What the driver checks in RUN before any worker starts."""
    run_dir: str
    spec: ensemble.EnsembleSpec
    metas: dict
    model_sha256: str             # one hash over every backbone's identity (weights + meta + OOD stats) + ensemble.json
    hashes: dict = field(default_factory=dict)


def resolve_models(run_dir: str) -> Models:
    """Load the spec and check every model file's sha256 and the ensemble's lineage now, in the driver
    (ModelIntegrityError, StaleArtifactError)."""
    spec = ensemble.load_spec(run_dir)
    ens_lineage.check(RunDir(run_dir), storage.read_json(RunDir(run_dir).ensemble))
    metas, hashes = {}, {}
    for b in spec.backbones:
        _, meta = model_files.load_state(RunDir(run_dir).model(b).root)   # reads + checks the weights' sha256
        if tuple(meta["classes"]) != spec.classes:
            raise ConfigError(f"{RunDir(run_dir).model(b).root}: classes {meta['classes']} differ from "
                              f"the ensemble's {list(spec.classes)}; rerun `alle-dist tune`")
        metas[b], hashes[b] = meta, model_files.model_id(meta)   # covers weights, meta.json and OOD stats
    hashes[RunDir.ENSEMBLE] = hashlib.sha256(storage.read_bytes(RunDir(run_dir).ensemble)).hexdigest()
    combined = hashlib.sha256("\n".join(f"{k} {v}" for k, v in sorted(hashes.items())).encode()).hexdigest()
    return Models(run_dir, spec, metas, combined, hashes)


def prep_spec(models: Models, src: str, job: JobConfig) -> inference.PrepSpec:
    """The models' own preprocessing (models.preprocessing, read from their meta.json): segmented
    unless trained on originals; the largest input size (the Predictor resizes on the device for a
    backbone that wants less)."""
    preps = [preprocessing.read(m) for m in models.metas.values()]
    segs = {p.segment for p in preps}
    if len(segs) > 1:
        raise ConfigError(f"{models.run_dir}: the ensemble's models were trained with different segmentation "
                          "settings; retrain them with one `segment:` config")
    stats = any(field_stats.has_stats(load_ood_stats(models, b)) for b in models.spec.backbones)
    return inference.PrepSpec(src=src, image_size=max(p.image_size for p in preps), segment=segs.pop(),
                              max_pixels=job.classify.max_pixels, image_stats=stats)


def load_ood_stats(models: Models, backbone: str) -> dict | None:
    """The backbone's OOD statistics (sha256 checked), or None when it has none (no OOD referral)."""
    return model_files.load_ood(RunDir(models.run_dir).model(backbone).root) if models.metas[backbone].get("ood") else None


@dataclass
class JobPlan:
    src: str
    dst: str
    models: Models
    prep: inference.PrepSpec
    cfg: ClassifyConfig
    listed: set
    todo: pa.Table
    skipped: list
    manifest: dict
    run: dict


def plan_job(run_dir: str, src: str, dst: str, job: JobConfig, run_id: str | None = None) -> JobPlan:
    """Check the models, list SRC, and drop what DST already holds (Ray-free; fails before any work)."""
    models = resolve_models(run_dir)
    manifest = parts.load_manifest(dst)
    _check_same_models(dst, manifest, models)
    listing = storage.list_files(src, schema.IMAGE_SUFFIXES)
    done = parts.done_index(dst)
    todo, skipped = parts.plan(listing, done, job.classify.verify_sha256)
    src = storage.absolute(src)   # recorded in DST/_manifest.json: the rows' paths are relative to it
    run = {"run_id": run_id or parts.new_run_id(), "src": src, "started_at": parts.utc_now(),
           "inputs": len(listing), "status": "running"}
    return JobPlan(src, dst, models, prep_spec(models, src, job), job.classify,
                   {p for p, _ in listing}, todo, skipped, manifest, run)


def _check_same_models(dst: str, manifest: dict, models: Models) -> None:
    prev = manifest.get("model_sha256")
    if prev and prev != models.model_sha256:
        raise ConfigError(f"{dst}: holds results of another model ({prev[:12]}…, this run dir is "
                          f"{models.model_sha256[:12]}…); classify into a new --output")
    manifest.update({"model_sha256": models.model_sha256, "models": models.hashes,
                     "backbones": list(models.spec.backbones), "classes": list(models.spec.classes)})
