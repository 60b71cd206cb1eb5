"""classify.resolve.read_spec: one read per image serves every model of the ensemble, so their
recorded preprocessing must agree on how an image is read (segmentation, working size)."""
from __future__ import annotations

import pytest

from alle_dist.classify import resolve
from alle_dist.config import JobConfig, SegmentConfig
from alle_dist.ensemble.weighted import EnsembleSpec
from alle_dist.errors import ConfigError
from alle_dist.models import preprocessing


def _models(working: dict[str, int | None]) -> resolve.Models:
    metas = {b: preprocessing.record({"architecture": b}, preprocessing.Preprocessing(
        64 if b == "small" else 96, (0.5,) * 3, (0.25,) * 3, SegmentConfig(), w)) for b, w in working.items()}
    spec = EnsembleSpec(backbones=tuple(working), classes=("a", "b"), weights=[1 / len(working)] * len(working), gamma=0.0)
    return resolve.Models("RUN", spec, metas, "sha")


def test_the_read_spec_carries_the_models_working_size():
    spec = resolve.read_spec(_models({"small": 224, "large": 224}), JobConfig())
    assert spec.working_size == 224 and spec.image_size == 96
    assert resolve.read_spec(_models({"small": None, "large": None}), JobConfig()).working_size is None


def test_models_of_the_original_and_the_working_read_path_are_not_mixed():
    with pytest.raises(ConfigError, match=r"read images differently .*retrain small with `alle-dist train --retrain`"):
        resolve.read_spec(_models({"small": None, "large": 224}), JobConfig())
