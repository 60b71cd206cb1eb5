"""Image statistics of whole fields (models/field_stats.py): the features, the Gaussian model, and how far
blurred, noisy, re-stained, empty and other unfamiliar versions of real held-out images score."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image
from alle_dist.models import field_stats
from alle_dist.testing import unfamiliar



@pytest.fixture(scope="module")
def real(leukemia_dir):
    """40 real images per class: the first 30 of each to fit, the other 10 held out."""
    imgs = []
    for c in ("Benign", "Early", "Pre", "Pro"):
        folder = leukemia_dir / "Original" / c
        imgs += [np.asarray(Image.open(folder / f).convert("RGB")) for f in sorted(os.listdir(folder))[:40]]
    fit_part = [x for i, x in enumerate(imgs) if i % 40 < 30]
    held = [x for i, x in enumerate(imgs) if i % 40 >= 30]
    stats = field_stats.fit(np.stack([field_stats.features(x) for x in fit_part]))
    return stats, held, field_stats.score(np.stack([field_stats.features(x) for x in held]), stats)


def test_features_are_finite_for_any_field():
    rng = np.random.default_rng(0)
    fields = {"blank": np.full((224, 224, 3), 235, np.uint8), "black": np.zeros((50, 80, 3), np.uint8),
              "noise": rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)}
    for name, rgb in fields.items():
        f = field_stats.features(rgb)
        assert f.shape == (len(field_stats.FEATURES),) and f.dtype == np.float32, name
        assert np.all(np.isfinite(f)), name


def test_model_is_the_standardised_mahalanobis_distance():
    rng = np.random.default_rng(1)
    train = rng.normal(size=(500, len(field_stats.FEATURES))) * np.arange(1, 21) + 100
    train[:, 3] = 7.0                                       # a constant feature must not divide by zero
    stats = field_stats.fit(train)
    assert all(k.startswith(field_stats.PREFIX) and v.dtype == np.float32 for k, v in stats.items())
    assert field_stats.has_stats({**stats, "means": 0}) and not field_stats.has_stats({"means": 0})
    x = train[:3] + 0.5
    z = (x - stats["image_mean"]) / stats["image_scale"]
    d = z - stats["image_means"][0]
    want = np.einsum("nd,de,ne->n", d, stats["image_precision"].astype(np.float64), d)
    np.testing.assert_allclose(field_stats.score(x, stats), want, rtol=1e-4)
    assert field_stats.score(np.zeros((0, len(field_stats.FEATURES))), stats).shape == (0,)
    # out-of-fold scores of every training row: in-distribution reference values, like fresh samples'
    cal = field_stats.calibration(stats)
    fresh = rng.normal(size=(500, len(field_stats.FEATURES))) * np.arange(1, 21) + 100
    fresh[:, 3] = 7.0
    fresh = field_stats.score(fresh, stats)
    assert cal.shape == (500,) and 0.8 < np.median(cal) / np.median(fresh) < 1.5
    assert field_stats.calibration(field_stats.fit(train[:20])) is None        # too few rows for 5 folds


def test_wrong_shapes_are_refused_with_the_feature_names():
    with pytest.raises(ValueError, match="sharpness"):
        field_stats.fit(np.zeros((10, 3)))
    with pytest.raises(ValueError, match="at least 2"):
        field_stats.fit(np.zeros((1, len(field_stats.FEATURES))))


def test_a_larger_scan_of_the_same_field_scores_like_the_original(real):
    stats, held, id_scores = real
    big = [np.asarray(Image.fromarray(x).resize((448, 448), Image.BICUBIC)) for x in held[:10]]
    scores = field_stats.score(np.stack([field_stats.features(x) for x in big]), stats)
    assert np.all(scores < np.quantile(id_scores, 0.5) + id_scores[:10] * 1.5)


@pytest.mark.parametrize("kind", ["stain_hue", "stain_swap", "unstained", "blank_field", "red_cells_only",
                                  "out_of_focus", "noise", "debris", "small_lymphocyte", "synthetic_smear"])
def test_unfamiliar_fields_score_beyond_every_held_out_real_image(real, kind):
    stats, held, id_scores = real
    items = unfamiliar.build(held, seed=0, kinds=[kind])
    scores = field_stats.score(np.stack([field_stats.features(x) for _, _, x in items]), stats)
    assert (scores > id_scores.max()).mean() >= 0.9, (kind, np.median(scores), id_scores.max())
