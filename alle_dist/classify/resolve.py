"""Classify, before any work: check the models (every hash) and plan what to read (Ray-free).

`resolve_models` loads ensemble.json and checks every model file in the driver, so a damaged or
tampered model stops the job before a worker starts; `model_root` verifies a model bundle first. What to read is planned in classify.planning.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from ..config import JobConfig
from ..ensemble import lineage
from ..ensemble import weighted
from ..errors import ConfigError
from ..models import field_stats, inference, preprocessing
from ..models import persistence
from ..rundir import RunDir


@dataclass(frozen=True)
class Models:
    """What the driver checks in RUN before any worker starts."""
    run_dir: str
    spec: weighted.EnsembleSpec
    metas: dict
    model_sha256: str             # one hash over every backbone's identity (weights + meta + OOD stats) + ensemble.json
    hashes: dict = field(default_factory=dict)


def model_root(run_dir: str | None, bundle_uri: str | None) -> str:
    """Where the models are: RUN itself, or a model bundle (`--model`) after alle_dist.bundle.verify (format,
    every file against SHA256SUMS). A bundle lays its models out as a run-directory subset, so
    `resolve_models` checks it exactly as it checks RUN, and gets the same model_sha256."""
    if bundle_uri is None:
        return run_dir
    from ..bundle import verify

    return verify(bundle_uri).root


def resolve_models(run_dir: str) -> Models:
    """Load the spec and check every model file's sha256 and the ensemble's lineage now, in the driver
    (ModelIntegrityError, StaleArtifactError)."""
    spec = weighted.load_spec(run_dir)
    lineage.check(RunDir(run_dir), weighted.read_doc(run_dir))
    metas, hashes = {}, {}
    for b in spec.backbones:
        meta = persistence.check_files(RunDir(run_dir).model(b).root)   # the weights' and OOD stats' sha256
        if tuple(meta["classes"]) != spec.classes:
            raise ConfigError(f"{RunDir(run_dir).model(b).root}: classes {meta['classes']} differ from "
                              f"the ensemble's {list(spec.classes)}; rerun `alle-dist tune`")
        metas[b], hashes[b] = meta, persistence.model_id(meta)   # covers weights, meta.json and OOD stats
    hashes[RunDir.ENSEMBLE] = lineage.ensemble_sha256(RunDir(run_dir))
    combined = hashlib.sha256("\n".join(f"{k} {v}" for k, v in sorted(hashes.items())).encode()).hexdigest()
    return Models(run_dir, spec, metas, combined, hashes)


def read_spec(models: Models, job_cfg: JobConfig) -> inference.ReadSpec:
    """The models' own preprocessing (models.preprocessing, read from their meta.json): segmented
    unless trained on originals; the largest input size (the Predictor resizes on the device for a
    backbone that wants less)."""
    preps = {b: preprocessing.read(m) for b, m in models.metas.items()}
    segs = {p.segment for p in preps.values()}
    if len(segs) > 1:
        raise ConfigError(f"{models.run_dir}: the ensemble's models were trained with different segmentation "
                          "settings; retrain them with one `segment:` config")
    working = {p.working_size for p in preps.values()}
    if len(working) > 1:   # one read per image serves every model: no silent mix of read paths
        older = sorted(b for b, p in preps.items() if p.working_size is None) or sorted(preps)
        raise ConfigError(f"{models.run_dir}: the ensemble's models read images differently (working sizes "
                          f"{sorted(working, key=str)}); retrain {', '.join(older)} with `alle-dist train --retrain`")
    stains = {p.stain for p in preps.values()}
    if len(stains) > 1:
        raise ConfigError(f"{models.run_dir}: the ensemble's models were trained with different stain "
                          "normalisations; retrain them with one --stain-norm")
    stats = any(field_stats.has_stats(load_ood_stats(models, b)) for b in models.spec.backbones)
    return inference.ReadSpec(image_size=max(p.image_size for p in preps.values()), segment=segs.pop(),
                              stain=stains.pop(), max_pixels=job_cfg.classify.max_pixels, image_stats=stats,
                              working_size=working.pop())


def load_ood_stats(models: Models, backbone: str) -> dict | None:
    """The backbone's OOD statistics (sha256 checked), or None when it has none (no OOD referral)."""
    return persistence.load_ood(RunDir(models.run_dir).model(backbone).root) if models.metas[backbone].get("ood") else None
