"""Predictor: uint8 images in, logits / probabilities / penultimate features out, as the model computes them."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from alle_dist import errors
from alle_dist.models import persistence
from alle_dist.models import registry
from alle_dist.models.predictor import Predictor


META = {"architecture": "test_resnet", "classes": ["a", "b", "c", "d"], "image_size": 64,
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("model")
    persistence.save_model(str(d), registry.create("test_resnet", 4, "none"), META)
    return str(d)


def _images(n, size, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_outputs_match_the_model_on_normalised_input(model_dir):
    pred = Predictor(model_dir)
    assert pred.classes == META["classes"] and pred.image_size == 64 and pred.backbone == "test_resnet"
    imgs = _images(5, 64)
    out = pred(imgs)
    assert out["logits"].shape == (5, 4) and out["features"].shape == (5, pred.model.num_features)
    assert all(v.dtype == np.float32 for v in out.values())
    np.testing.assert_allclose(out["probs"].sum(1), 1.0, atol=1e-5)
    # Reference: normalise by hand on the CPU and call the model's own forward.
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(META["mean"]).view(1, 3, 1, 1)) / torch.tensor(META["std"]).view(1, 3, 1, 1)
    model, _ = persistence.load_model(model_dir)
    with torch.no_grad():
        np.testing.assert_allclose(out["logits"], model(x).numpy(), rtol=1e-4, atol=1e-5)


def test_other_sizes_are_resized_and_tensors_accepted(model_dir):
    pred = Predictor(model_dir)
    big = _images(3, 128, seed=1)
    out = pred(torch.from_numpy(big))
    assert out["probs"].shape == (3, 4)
    resized = torch.nn.functional.interpolate(torch.from_numpy(big).permute(0, 3, 1, 2).float(), size=(64, 64),
                                              mode="bilinear", antialias=True)
    same = pred(resized.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy())
    np.testing.assert_allclose(out["probs"], same["probs"], atol=0.02)   # uint8 rounding only


def test_wrong_input_is_refused(model_dir):
    pred = Predictor(model_dir)
    with pytest.raises(ValueError, match="uint8"):
        pred(np.zeros((2, 64, 64, 3), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        pred(np.zeros((64, 64, 3), np.uint8))


def test_damaged_model_is_refused_on_load(model_dir, tmp_path):
    import shutil

    d = tmp_path / "m"
    shutil.copytree(model_dir, d)
    w = d / persistence.WEIGHTS_FILE
    w.write_bytes(w.read_bytes()[:-8] + b"\x00" * 8)
    with pytest.raises(errors.ModelIntegrityError):
        Predictor(str(d))
