"""Training input: recorded oversampling, torchvision augmentation, the Ray Data image stream."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pytest
import torch
from alle_dist import schema
from alle_dist.config import AugmentConfig, SegmentConfig
from alle_dist.testing.synthetic import CLASSES, draw_smear, generate
from alle_dist.train import augment
from alle_dist.train import balance



def _train_rows(counts: dict[str, int]) -> pa.Table:
    paths = [f"{c}/{c}-{i:04d}.jpg" for c, n in counts.items() for i in range(n)]
    labels = [p.split("/")[0] for p in paths]
    return pa.table({"path": paths, "label": labels, "status": [schema.OK] * len(paths)})


def test_oversample_balances_records_and_is_deterministic():
    rows = _train_rows({"Benign": 7, "Early": 20, "Pre": 19, "Pro": 3})
    out, rec = balance.oversample(rows, seed=1)
    assert Counter(out.column("label").to_pylist()) == {c: 20 for c in CLASSES}
    assert rec["counts_before"] == {"Benign": 7, "Early": 20, "Pre": 19, "Pro": 3}
    assert rec["counts_after"] == {c: 20 for c in CLASSES} and rec["seed"] == 1
    # The record says exactly which files came back how often, each within its own class.
    assert sum(rec["repeated"].values()) == out.num_rows - rows.num_rows == 13 + 1 + 17
    extra = Counter(out.column("path").to_pylist()) - Counter(rows.column("path").to_pylist())
    assert dict(extra) == rec["repeated"]
    assert all(v in (5, 6) for p, v in rec["repeated"].items() if p.startswith("Pro/"))  # 17 over 3 files
    assert balance.oversample(rows, seed=1)[0].equals(out)
    assert balance.oversample(rows, seed=2)[1]["repeated"] != rec["repeated"]


def test_transform_changes_the_image_but_not_its_shape_or_dtype():
    img = draw_smear("Pro", np.random.default_rng(0), 96)
    tf = augment.train_transform(AugmentConfig(image_size=96), 96)
    a, b = augment.augment_image(img, tf, seed=5), augment.augment_image(img, tf, seed=5)
    c = augment.augment_image(img, tf, seed=6)
    assert a.shape == img.shape and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c) and not np.array_equal(a, img)
    state = torch.random.get_rng_state()
    augment.augment_image(img, tf, seed=7)
    assert torch.equal(state, torch.random.get_rng_state())  # per-image seeding leaves global RNG alone


def test_scale_xy_scales_each_axis_independently():
    img = torch.zeros(3, 64, 64, dtype=torch.uint8)
    img[:, 24:40, 24:40] = 255                                     # a 16x16 square
    t = augment.RandomScaleXY(1.0, 1.0, 64)
    out = t.transform(img, {"sx": 1.5, "sy": 0.75})
    ys, xs = np.nonzero(out[0].numpy() > 127)
    assert out.shape == (3, 64, 64) and (xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) == (24, 12)


@pytest.mark.ray
def test_image_dataset_yields_model_ready_rows(ray_local, tmp_path):
    src = generate(str(tmp_path / "syn"), n_per_class=2, size=96)
    rows = pa.table({"path": [f"{c}/{c}-{i:04d}.jpg" for c in CLASSES for i in range(2)] + ["Pro/missing.jpg"],
                     "label": [c for c in CLASSES for _ in range(2)] + ["Pro"],
                     "status": [schema.OK] * 8 + [schema.ERROR]})
    kw = dict(image_size=64, seg=SegmentConfig(), aug=AugmentConfig(image_size=64), seed=3)
    first = augment.image_dataset(rows, src, list(CLASSES), **kw).take_batch(100)
    again = augment.image_dataset(rows, src, list(CLASSES), **kw).take_batch(100)
    plain = augment.image_dataset(rows, src, list(CLASSES), image_size=64, seg=None, aug=None).take_batch(100)
    assert first["image"].shape == (8, 64, 64, 3) and first["image"].dtype == np.uint8   # error row skipped
    assert first["label"].dtype == np.int64 and sorted(first["label"].tolist()) == [0, 0, 1, 1, 2, 2, 3, 3]
    order = np.argsort(first["path"]), np.argsort(again["path"])
    assert np.array_equal(first["image"][order[0]], again["image"][order[1]])             # same seed, same images
    assert first["mask_fraction"].dtype == np.float32 and (first["mask_fraction"] < 0.5).all()
    assert (plain["mask_fraction"] == 1.0).all() and plain["image"].mean() > first["image"].mean()
