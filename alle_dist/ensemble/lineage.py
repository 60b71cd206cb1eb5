"""The lineage of RUN/ensemble.json: the manifest and the exact models (their identities) it was tuned on.

tune records it; evaluate and classify check it before any work, so test-split numbers or bulk
labels never come from a split or a model that changed after tuning.
"""
from __future__ import annotations

import hashlib

from ..errors import StaleArtifactError
from ..io import storage
from ..models import persistence
from ..models import provenance
from ..prepare.manifest import recorded_id
from ..rundir import RunDir


def snapshot(run: RunDir, backbones) -> dict:
    """What the ensemble is made from: the manifest's identity (None in a run dir that ships models
    without their manifest, e.g. a model bundle) and every member's model identity, after checking each
    member was trained on that manifest (where there is one)."""
    manifest = recorded_id(run) if storage.exists(run.manifest) else None
    models = {}
    for b in backbones:
        out = run.model(b)
        meta = persistence.read_meta(out.root)
        if manifest is not None:
            provenance.check_trained_on(out, meta, manifest, b, run.root)
        models[b] = persistence.model_id(meta)
    return {"manifest": manifest, "models": models}


def check(run: RunDir, doc: dict) -> dict:
    """Refuse an ensemble spec whose recorded manifest or models differ from RUN's current ones
    (a run dir that ships only models + ensemble.json, without its manifest, is checked on the models);
    returns the current snapshot."""
    recorded = doc.get("lineage")
    rebuild = f"rerun `alle-dist tune --run-dir {run.root}`"
    if not recorded:
        raise StaleArtifactError(f"{run.ensemble}: no lineage record (written by an older alle_dist); {rebuild}")
    now = snapshot(run, recorded["models"])
    if now["manifest"] is not None and now["manifest"] != recorded["manifest"]:
        raise StaleArtifactError(f"{run.ensemble}: tuned on another split than {run.manifest}'s; {rebuild}")
    changed = [b for b, mid in recorded["models"].items() if now["models"][b] != mid]
    if changed:
        raise StaleArtifactError(f"{run.ensemble}: tuned on other versions of {', '.join(changed)} (retrained or "
                                 f"changed since); {rebuild}")
    return now


def ensemble_sha256(run: RunDir) -> str:
    return hashlib.sha256(storage.read_bytes(run.ensemble)).hexdigest()
