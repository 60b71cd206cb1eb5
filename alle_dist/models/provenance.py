"""What a model was made from, and what was made from it: the checks every stage runs before work.

A model's meta.json records the identity of the manifest (split) it was trained on; its cached
outputs (val/test_probs.parquet) record the identity of the model that made them. A mismatch means
an artifact is stale: the stage refuses with one line naming it and the command that rebuilds it
(errors.StaleArtifactError, exit 2) instead of computing numbers from mixed inputs.
"""
from __future__ import annotations

from ..errors import StaleArtifactError
from ..io import storage
from ..rundir import ModelDir
from . import persistence

META_MODEL_ID = b"alle_dist.model_id"   # Parquet metadata of a model's cached outputs


def trained_on(meta: dict) -> str | None:
    """The manifest identity a model's meta.json records (None: a model from before lineage)."""
    return (meta.get("lineage") or {}).get("manifest")


def check_trained_on(out: ModelDir, meta: dict, manifest_id: str, backbone: str, run_root: str) -> None:
    """Refuse a model (or checkpoint) trained on another manifest than RUN's current one."""
    if trained_on(meta) != manifest_id:
        raise StaleArtifactError(
            f"{out.root}: trained on another split or file set than {run_root}'s current manifest; retrain it "
            f"(`alle-dist train --run-dir {run_root} --backbone {backbone} --retrain`) or use the run dir it "
            "was trained in")


def check_outputs(out: ModelDir, split: str, table_meta: dict | None, backbone: str, run_root: str) -> None:
    """Refuse cached outputs that another version of the model made (its files changed since), or whose
    model's files are damaged now (persistence.check_files: tune and evaluate read them through here)."""
    made_by = (table_meta or {}).get(META_MODEL_ID, b"").decode()
    if made_by != persistence.model_id(persistence.check_files(out.root)):
        raise StaleArtifactError(
            f"{out.probs(split)}: made by another version of {backbone} (the model's files changed since "
            f"training); retrain it (`alle-dist train --run-dir {run_root} --backbone {backbone} --retrain`)")


def outputs_metadata(out: ModelDir) -> dict:
    """Parquet metadata binding a model's cached outputs to the model's identity."""
    return {META_MODEL_ID: persistence.model_id(persistence.read_meta(out.root)).encode()}


def exists(out: ModelDir) -> bool:
    return storage.exists(out.meta)
