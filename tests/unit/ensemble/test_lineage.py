"""Every artifact knows what it was made from, and every stage checks the chain before work (issue 11):
attacks on a run directory — a model changed behind the ensemble, a meta.json edited behind its hash,
a new split under trained models — each end in a one-line refusal that names the rebuild."""
from __future__ import annotations

import json

import pytest

from alle_dist import config
from alle_dist.classify import resolve
from alle_dist.tune import stage as tune_stage
from alle_dist.errors import ModelIntegrityError, StaleArtifactError
from alle_dist.evaluate import stage as eval_stage
from alle_dist.models import persistence
from alle_dist.rundir import RunDir
from alle_dist.train import stage as train_job
from helpers_probs import BACKBONES, corrections_case, write_manifest
from helpers_run import make_run_dir


def _retrain_stand_in(run: RunDir, backbone: str) -> None:
    """A legitimately rewritten model (valid hashes, a new identity): what `train --retrain` leaves."""
    meta = persistence.read_meta(run.model(backbone).root)
    persistence.write_meta(run.model(backbone).root, {**meta, "retrained": True})


def test_evaluate_refuses_an_ensemble_tuned_on_other_models(tmp_path):
    run_dir, _, _ = corrections_case(tmp_path)
    eval_stage.evaluate_run(str(run_dir), config.EvaluateConfig())           # the chain holds
    _retrain_stand_in(RunDir(str(run_dir)), BACKBONES[0])
    with pytest.raises(StaleArtifactError, match=r"tuned on other versions of densenet201.*alle-dist tune"):
        eval_stage.evaluate_run(str(run_dir), config.EvaluateConfig())


def test_tune_refuses_outputs_made_by_another_version_of_the_model(tmp_path):
    run_dir, _, _ = corrections_case(tmp_path)
    _retrain_stand_in(RunDir(str(run_dir)), BACKBONES[1])
    with pytest.raises(StaleArtifactError, match=r"val_probs.parquet: made by another version of resnet50.*--retrain"):
        tune_stage.load_validation(str(run_dir), config.TuneConfig())


def test_a_new_split_under_trained_models_is_refused_by_every_later_stage(tmp_path):
    run_dir, src, paths = corrections_case(tmp_path)
    write_manifest(run_dir, src, [{"path": p, "label": "Pre", "split": "train"} for p in paths])   # new split
    for stage in (lambda: tune_stage.load_validation(str(run_dir), config.TuneConfig()),
                  lambda: eval_stage.evaluate_run(str(run_dir), config.EvaluateConfig())):
        with pytest.raises(StaleArtifactError, match=r"models/densenet201: trained on another split"):
            stage()


def test_train_refuses_a_finished_model_of_another_split(tmp_path):
    run_dir, src, paths = corrections_case(tmp_path)
    (tmp_path / "run" / "models" / "densenet201" / "ood.safetensors").write_bytes(b"present")
    write_manifest(run_dir, src, [{"path": p, "label": "Pre", "split": "train"} for p in paths])
    jcfg = config.job_config(train={"backbone": "densenet201"})
    with pytest.raises(StaleArtifactError, match=r"trained on another split.*--retrain"):
        train_job.train_backbone(str(run_dir), jcfg)


def test_classify_refuses_a_meta_edited_behind_its_hash_and_a_changed_model(tmp_path):
    run = RunDir(str(make_run_dir(tmp_path / "run")))
    before = resolve.resolve_models(run.root).model_sha256
    meta_file = run.model("test_resnet").meta
    meta = json.loads(open(meta_file).read())
    with open(meta_file, "w") as f:                       # every image "Pre": the first wave's attack
        json.dump({**meta, "mean": [0.0, 0.0, 0.0], "std": [10.0, 10.0, 10.0]}, f)
    with pytest.raises(ModelIntegrityError, match="edited after it was written"):
        resolve.resolve_models(run.root)
    persistence.write_meta(run.model("test_resnet").root, {**meta, "mean": [0.0, 0.0, 0.0]})
    with pytest.raises(StaleArtifactError, match="tuned on other versions of test_resnet"):
        resolve.resolve_models(run.root)
    # Rerun tune (here: record the new lineage) and the identity the output table checks has changed.
    from alle_dist.ensemble import lineage, weighted
    weighted.save_spec(run.root, weighted.load_spec(run.root), lineage=lineage.snapshot(run, ("test_resnet", "test_efficientnet")))
    assert resolve.resolve_models(run.root).model_sha256 != before
