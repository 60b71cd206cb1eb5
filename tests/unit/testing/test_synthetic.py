"""The synthetic smear set: deterministic, segmentable, and learnable by a tiny CNN."""
from __future__ import annotations

import cv2
import numpy as np
import torch
from alle_dist.config import SegmentConfig
from alle_dist.imaging import hsv
from alle_dist.io.images import decode_rgb
from alle_dist.testing import synthetic



def test_generate_is_deterministic_and_laid_out_by_class(tmp_path):
    a = synthetic.generate(str(tmp_path / "a"), n_per_class=2, seed=4)
    synthetic.generate(str(tmp_path / "b"), n_per_class=3, seed=4)
    files = sorted(p.relative_to(a).as_posix() for p in (tmp_path / "a").rglob("*.jpg"))
    assert files == [f"{c}/{c}-{i:04d}.jpg" for c in synthetic.CLASSES for i in range(2)]
    for rel in files:  # a larger set keeps the smaller set's files
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    assert decode_rgb((tmp_path / "a" / files[0]).read_bytes()).shape == (224, 224, 3)
    other = synthetic.draw_smear("Pre", np.random.default_rng([5, 2, 0]))
    assert not np.array_equal(other, decode_rgb((tmp_path / "a" / "Pre/Pre-0000.jpg").read_bytes()))


def test_segmentation_keeps_the_blast_and_drops_red_cells():
    for k, cls in enumerate(synthetic.CLASSES):
        img = synthetic.draw_smear(cls, np.random.default_rng([0, k, 0]))
        masked, mask = hsv.segment_image(img, SegmentConfig())
        assert 0.01 < hsv.mask_fraction(mask) < 0.2, cls
        hue = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)[..., 0]
        kept, dropped = img[mask > 0].mean(0), img[mask == 0].mean(0)
        assert kept.sum() < dropped.sum() - 150                 # stained (dark) cells kept, pale field dropped
        assert np.median(hue[mask > 0]) >= 120                  # violet / magenta


def _tensors(n: int, start: int):
    xs, ys = [], []
    for k, cls in enumerate(synthetic.CLASSES):
        for i in range(start, start + n):
            img = hsv.segment_image(synthetic.draw_smear(cls, np.random.default_rng([0, k, i]), 128))[0]
            xs.append(cv2.resize(img, (40, 40), interpolation=cv2.INTER_AREA))
            ys.append(k)
    return torch.tensor(np.stack(xs)).permute(0, 3, 1, 2).float() / 255, torch.tensor(ys)


def test_a_tiny_cnn_learns_the_four_classes():
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead on a shared 2-core box
    (x, y), (xt, yt) = _tensors(16, 0), _tensors(12, 500)
    conv = [torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveMaxPool2d(1)]
    model = torch.nn.Sequential(*conv, torch.nn.Flatten(), torch.nn.Linear(32, 4))
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(20):
        for idx in torch.randperm(len(x)).split(16):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    with torch.no_grad():
        acc = (model(xt).argmax(1) == yt).float().mean().item()
    torch.set_num_threads(threads)
    assert acc >= 0.75, f"held-out accuracy {acc:.2f}"
