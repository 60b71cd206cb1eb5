"""Training decides a backbone's input once (train.stage.model_preprocessing) and meta.json records it
once, under "preprocessing"; every reader goes through models.preprocessing.read."""
from __future__ import annotations

import pytest

from alle_dist import config
from alle_dist.errors import ModelIntegrityError
from alle_dist.models import preprocessing, registry
from alle_dist.rundir import RunDir
from alle_dist.train import stage as train_stage


def test_the_meta_a_checkpoint_carries_records_the_input_once(tmp_path):
    job_cfg = config.job_config(None, train={"backbone": "test_resnet", "pretrained": "none", "image_size": 48},
                                segment={"hsv_lower": (110, 20, 30)})
    prep = train_stage.model_preprocessing(job_cfg, "test_resnet")
    assert prep.image_size == 48 and prep.segment.hsv_lower == (110, 20, 30)
    assert prep.working_size == 224     # new models segment and compute statistics at 224² (the read path)
    assert (prep.mean, prep.std) == registry.default_normalisation("test_resnet")
    loop_cfg = train_stage.loop_config(RunDir(str(tmp_path)), job_cfg, "test_resnet", ["a", "b"], "n", "m", prep)
    meta = loop_cfg.meta
    assert not {"image_size", "mean", "std"} & set(meta) and "segment" not in meta["config"]
    assert preprocessing.read(meta) == prep == loop_cfg.prep


def test_unsegmented_training_records_no_segmentation():
    job_cfg = config.job_config(None, train={"backbone": "test_resnet", "segmented": False})
    assert train_stage.model_preprocessing(job_cfg, "test_resnet").segment is None


def test_the_working_size_is_recorded_and_a_record_without_one_is_the_original_path():
    prep = preprocessing.Preprocessing(64, (0.5,) * 3, (0.25,) * 3, None, working_size=224)
    meta = preprocessing.record({"architecture": "x"}, prep)
    assert meta["preprocessing"]["working_size"] == 224 and preprocessing.read(meta) == prep
    original = preprocessing.record({"architecture": "x"}, preprocessing.Preprocessing(64, (0.5,) * 3, (0.25,) * 3, None))
    assert "working_size" not in original["preprocessing"] and preprocessing.read(original).working_size is None
    meta["preprocessing"]["working_size"] = 0
    with pytest.raises(ModelIntegrityError, match="working_size must be a positive"):
        preprocessing.read(meta)


def test_every_backbone_gets_the_same_working_size_so_any_ensemble_shares_one_read():
    job_cfg = config.job_config(None, train={"backbone": "test_resnet", "image_size": 320})
    assert train_stage.model_preprocessing(job_cfg, "test_resnet").working_size == 224


def test_old_meta_still_reads_and_a_meta_without_any_record_is_refused():
    old = {"architecture": "x", "image_size": 64, "mean": [0.5] * 3, "std": [0.25] * 3,
           "config": {"train": {"segmented": False}}}
    assert preprocessing.read(old) == preprocessing.Preprocessing(64, (0.5,) * 3, (0.25,) * 3, None)
    with pytest.raises(ModelIntegrityError, match="no usable preprocessing record"):
        preprocessing.read({"architecture": "x"})
