"""Stain normalisation (imaging.stain) agrees with torchstain, is recorded with the model and applied
at one point of the one preprocessing path; the optical-density jitter gives the field back at 1 / 0."""
from __future__ import annotations

import numpy as np
import pytest

from alle_dist import config
from alle_dist.config import SegmentConfig
from alle_dist.imaging import stain
from alle_dist.imaging.model_input import preprocess, resize_square
from alle_dist.models import preprocessing
from alle_dist.testing import synthetic
from alle_dist.train import stage as train_stage


@pytest.fixture(scope="module")
def fields():
    rng = np.random.default_rng(0)
    return [synthetic.draw_smear(c, rng, 96) for c in synthetic.CLASSES for _ in range(3)]


def test_the_normalisers_agree_with_torchstain(fields):
    from torchstain.numpy.normalizers import NumpyMacenkoNormalizer, NumpyReinhardNormalizer

    mac = stain.fit_reference(fields, "macenko")
    ts = NumpyMacenkoNormalizer()
    ts.HERef, ts.maxCRef = np.array(mac.values[:2]).T, np.array(mac.values[2])
    for rgb in fields[:4]:   # the same constants and steps: equal but for float rounding at a truncation
        diff = np.abs(ts.normalize(rgb, stains=False)[0].astype(int) - stain.normalise(rgb, mac))
        assert np.mean(diff <= 1) > 0.999
    rein = stain.fit_reference(fields, "reinhard")
    tr = NumpyReinhardNormalizer()
    tr.fit(fields[0])
    assert np.allclose(stain._reinhard_fit(fields[0]), (tr.target_means, tr.target_stds), atol=0.2)
    tr.target_means, tr.target_stds = np.array(rein.values[0]), np.array(rein.values[1])
    for rgb in fields[:4]:   # torchstain's LAB is its own (OpenCV's here): within a grey level on average
        assert np.abs(tr.normalize(rgb).astype(int) - stain.normalise(rgb, rein)).mean() < 1.0


def test_reinhard_undoes_a_stain_shift(fields):
    ref = stain.fit_reference(fields, "reinhard")
    assert ref.fitted_on == len(fields) and ref == stain.StainReference.from_dict(ref.to_dict())
    for rgb in fields[:4]:
        shifted = stain.hed_jitter(rgb, (1.4, 0.7, 1.0), (0, 0, 0))
        before = np.abs(shifted.mean((0, 1)) - rgb.mean((0, 1))).sum()
        after = np.abs(stain.normalise(shifted, ref).mean((0, 1)) - stain.normalise(rgb, ref).mean((0, 1))).sum()
        assert after < 0.2 * before


def test_macenko_puts_a_field_on_the_reference_stain_vectors(fields):
    # Macenko re-expresses each field's own two stains in the reference's vectors. How well that undoes
    # a shift depends on how well two vectors describe the field (on the real smears: often not well,
    # docs/referral.md), so the property checked is the mapping itself.
    ref = stain.fit_reference(fields, "macenko")
    assert ref == stain.StainReference.from_dict(ref.to_dict())
    vectors = np.array(ref.values[:2])
    for rgb in fields[:4]:
        fit = stain._macenko_fit(stain.normalise(stain.hed_jitter(rgb, (1.2, 0.8, 1.0), (0, 0, 0)), ref))
        assert np.abs(np.sum(np.array(fit[:2]) * vectors, axis=1)).min() > 0.95   # cosines to the reference


def test_a_blank_field_is_left_as_it_is_and_none_is_off(fields):
    blank = np.full((64, 64, 3), 235, np.uint8)
    for method in stain.METHODS:
        assert stain.normalise(blank, stain.fit_reference(fields, method)) is blank
    assert stain.normalise(fields[0], None) is fields[0]
    with pytest.raises(ValueError, match="no training field"):
        stain.fit_reference([blank], "macenko")


def test_hed_jitter_is_the_identity_at_one_and_zero(fields):
    rgb = fields[0]
    assert np.abs(stain.hed_jitter(rgb, (1, 1, 1), (0, 0, 0)).astype(int) - rgb).max() <= 1
    assert np.abs(stain.hed_jitter(rgb, (1.3, 1, 1), (0, 0, 0)).astype(int) - rgb).mean() > 2


def test_preprocess_normalises_before_segmenting(fields):
    ref = stain.fit_reference(fields, "macenko")
    rgb, seg = stain.hed_jitter(fields[1], (0.7, 1.2, 1), (0, 0, 0)), SegmentConfig()
    for working in (None, 48):        # the original path and the working path
        got = preprocess(rgb, 48, seg, working, ref)
        want = preprocess(stain.normalise(rgb if working is None else resize_square(rgb, working), ref), 48, seg, working)
        assert np.array_equal(got.image, want.image) and got.mask_fraction == want.mask_fraction


def test_the_reference_is_recorded_with_the_model_and_read_back(fields):
    ref = stain.fit_reference(fields, "reinhard")
    job_cfg = config.job_config(None, train={"backbone": "test_resnet", "image_size": 48, "stain_norm": "reinhard"})
    prep = train_stage.model_preprocessing(job_cfg, "test_resnet", ref)
    meta = preprocessing.record({"architecture": "test_resnet"}, prep)
    assert meta["preprocessing"]["stain"]["method"] == "reinhard"
    assert preprocessing.read(meta) == prep and preprocessing.read(meta).stain == ref
    old = preprocessing.record({"architecture": "x"}, preprocessing.Preprocessing(48, (0.5,) * 3, (0.2,) * 3, None))
    assert "stain" not in old["preprocessing"]  # off leaves meta.json as models before stain normalisation
    assert preprocessing.read(old).stain is None
    with pytest.raises(config.ConfigError, match="train.stain_norm"):
        config.TrainConfig(stain_norm="vahadane")
