"""Feature-distance statistics (models/feature_distance.py), the OOD image set (testing/unfamiliar.py) and referral of unfamiliar real images."""
from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
from PIL import Image
from alle_dist.ensemble import weighted
from alle_dist.imaging.hsv import mask_fraction, segment_image
from alle_dist.models import feature_distance
from alle_dist.referral import signals
from alle_dist.testing import unfamiliar



def test_fit_score_matches_mahalanobis_formula_and_is_safetensors_ready():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(300, 5)) + np.repeat(np.eye(5)[:3] * 4, 100, axis=0)
    labels = np.repeat(np.arange(3), 100)
    stats = feature_distance.fit(feats, labels, 3, normalize=False)
    assert all(v.dtype == np.float32 for v in stats.values()) and set(stats) == {"means", "precision", "normalize"}
    x = rng.normal(size=(4, 5))
    d = x[:, None, :] - stats["means"][None].astype(np.float64)
    want = np.einsum("ncd,de,nce->nc", d, stats["precision"].astype(np.float64), d).min(1)
    np.testing.assert_allclose(feature_distance.score(x, stats), want, rtol=1e-5)
    # statistics saved before `normalize` existed score raw features
    legacy = {k: v for k, v in stats.items() if k != "normalize"}
    np.testing.assert_allclose(feature_distance.score(x, legacy), want, rtol=1e-5)


def test_more_dimensions_than_samples_and_far_points_score_higher():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(4, 256)) * 3
    labels = np.repeat(np.arange(4), 25)
    feats = centres[labels] + rng.normal(size=(100, 256))        # 100 samples, 256 dims: singular sample cov
    stats = feature_distance.fit(feats, labels, 4)
    assert np.all(np.isfinite(stats["precision"]))
    near = feature_distance.score(centres[[0, 1]] + rng.normal(size=(2, 256)), stats)
    far = feature_distance.score(rng.normal(size=(2, 256)) * 3, stats)          # a direction no class has
    assert far.min() > near.max()


def _real_images(leukemia_dir, per_class: int) -> list[np.ndarray]:
    out = []
    for c in ("Benign", "Early", "Pre", "Pro"):
        folder = leukemia_dir / "Original" / c
        for f in sorted(os.listdir(folder))[:per_class]:
            out.append(np.asarray(Image.open(folder / f).convert("RGB")))
    return out


def test_oodset_is_deterministic_and_changes_the_image(leukemia_dir):
    imgs = _real_images(leukemia_dir, 1)[:2]
    a, b = unfamiliar.build(imgs, seed=3), unfamiliar.build(imgs, seed=3)
    assert [k for k, _, _ in a] == [k for k in unfamiliar.KINDS for _ in imgs]
    for (ka, ia, xa), (_, _, xb) in zip(a, b):
        assert xa.dtype == np.uint8 and xa.shape == imgs[ia].shape
        assert np.array_equal(xa, xb), ka
        assert np.abs(xa.astype(int) - imgs[ia]).mean() > 2, ka
    # blank and red-cells-only fields keep (almost) nothing through the HSV segmentation
    for kind in ("blank_field", "red_cells_only"):
        for _, i, x in unfamiliar.build(imgs, kinds=[kind]):
            assert mask_fraction(segment_image(x)[1]) < 0.2 * mask_fraction(segment_image(imgs[i])[1])
    with pytest.raises(ValueError, match="unknown OOD kind"):
        unfamiliar.build(imgs, kinds=["nope"])


def _colour_features(rgb: np.ndarray) -> np.ndarray:
    """A cheap stand-in for a network's features: H, S, V histograms (tests the referral plumbing)."""
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    return np.concatenate([np.histogram(hsv[..., i], 16, (0, 256))[0] / hsv[..., i].size for i in range(3)])


def test_referral_of_unfamiliar_real_images(leukemia_dir):
    """Fit on in-distribution real images (feature statistics on 'train', thresholds on 'val'), then
    stain-shifted, blank, red-cells-only and unstained versions of held-out images are referred."""
    imgs = _real_images(leukemia_dir, 14)
    y = np.repeat(np.arange(4), 14)
    train, val, test = np.arange(56) % 14 < 6, (np.arange(56) % 14 >= 6) & (np.arange(56) % 14 < 12), np.arange(56) % 14 >= 12
    feats = np.stack([_colour_features(x) for x in imgs])
    mf = np.array([mask_fraction(segment_image(x)[1]) for x in imgs])
    stats = feature_distance.fit(feats[train], y[train], 4)
    probs = np.full((56, 4), 0.25)
    probs[np.arange(56), y] = 0.97                                      # a confident "network"
    probs /= probs.sum(1, keepdims=True)
    rule_fit = signals.fit_referral({"m": probs[val]}, {"m": feature_distance.score(feats[val], stats)}, mf[val], 0.95,
                                     signals=("ood_score", "mask_low"))
    spec = weighted.EnsembleSpec(("m",), ("Benign", "Early", "Pre", "Pro"), (1.0,), 0.5, (), rule_fit)
    kinds = ["stain_hue", "blank_field", "red_cells_only", "unstained"]
    items = unfamiliar.build([imgs[i] for i in np.flatnonzero(test)], seed=0, kinds=kinds)
    x = [it[2] for it in items]
    d = weighted.apply(spec, {"m": np.full((len(x), 4), 0.25) + np.eye(4)[np.arange(len(x)) % 4] * 0.7},
                       {"m": feature_distance.score(np.stack([_colour_features(i) for i in x]), stats)},
                       np.array([mask_fraction(segment_image(i)[1]) for i in x]))
    assert d.refer.mean() >= 0.9, list(zip([k for k, _, _ in items], d.reason))
    assert all(r in ("unfamiliar", "empty_field", "empty_field+unfamiliar") for r in np.array(d.reason)[d.refer])
    held_out = weighted.apply(spec, {"m": probs[test]}, {"m": feature_distance.score(feats[test], stats)}, mf[test])
    assert held_out.refer.mean() <= 0.25                                # most in-distribution images are kept
