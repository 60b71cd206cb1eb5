"""Grad-CAM over the tiny timm models and the AlexNet wrapper: shape, range, a real map, model untouched."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from alle_dist.models import registry as backbones
from alle_dist.testing import synthetic
from alle_dist.models import gradcam as G

SIZE = 64


@pytest.fixture(scope="module")
def smears() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 2)
    return np.stack([synthetic.draw_smear(synthetic.CLASSES[c], rng, SIZE) for c in y]), y


def _fitted(name: str, smears, size: int) -> torch.nn.Module:
    """The classifier fitted for a few Adam steps on the smears (the body stays random, so this is
    cheap even for AlexNet): a random classifier's class evidence can be negative everywhere (Grad-CAM
    then is all zero, correctly); a fitted one has positive evidence for the class it predicts."""
    torch.manual_seed(0)
    model = backbones.create(name, 4, pretrained="none").eval()
    images, y = smears
    mean, std = (torch.tensor(v) for v in backbones.normalisation(model))
    with torch.no_grad():
        feats = model.forward_head(model.forward_features(
            G.to_model_input(torch.from_numpy(images), size, mean, std)), pre_logits=True)
    head = model.get_classifier()
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(30):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(head(feats), torch.from_numpy(y)).backward()
        opt.step()
    return model


# AlexNet's random body (61 M parameters: too many to fit in a unit test) leaves the fitted class
# evidence negative over the whole 3 x 3 map of some images, where Grad-CAM is zero by definition.
@pytest.mark.parametrize("name,size,layer,share", [("test_resnet", SIZE, "layer4", 1.0),
                                                   ("test_efficientnet", SIZE, "bn2", 1.0),
                                                   pytest.param("alexnet", 127, "net.features", 0.5,
                                                                marks=pytest.mark.slow)])
def test_heatmaps_real_and_model_unchanged(name, size, layer, share, smears):
    model = _fitted(name, smears, size)
    model.train()                                   # the caller's mode must come back
    before = {k: v.clone() for k, v in model.state_dict().items()}  # BN running stats included
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}

    assert dict(model.named_modules())[layer] is G.target_layer(model, size)
    mean, std = backbones.normalisation(model)
    cams = G.heatmaps(model, smears[0], None, mean, std, size)

    assert cams.shape == (len(smears[0]), size, size) and cams.dtype == np.float32
    assert cams.min() >= 0.0 and cams.max() <= 1.0
    assert np.mean([c.max() - c.min() > 0.5 for c in cams]) >= share   # maps with a peak, not constant
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    for n, p in model.named_parameters():                        # no gradient leaked, none lost
        assert p.requires_grad and (p.grad is None if grads[n] is None else torch.equal(grads[n], p.grad))


def test_targets_choose_the_class(smears):
    model = _fitted("test_resnet", smears, SIZE)
    images = smears[0][:2]
    a = G.heatmaps(model, images, [0, 0], image_size=SIZE)
    b = G.heatmaps(model, images, [3, 3], image_size=SIZE)
    assert not np.allclose(a, b)


def test_overlay_blends_a_jet_map():
    rgb = np.full((40, 50, 3), 128, np.uint8)
    cam = np.zeros((8, 8), np.float32)
    cam[:, 4:] = 1.0                                         # right half hot (red), left cold (blue)
    out = G.overlay(rgb, cam)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    left, right = out[:, :10].reshape(-1, 3).mean(0), out[:, -10:].reshape(-1, 3).mean(0)
    assert left[2] > left[0] and right[0] > right[2]         # blue on the cold side, red on the hot one


def test_wrong_images_are_one_line_errors():
    model = backbones.create("test_resnet", 4, pretrained="none")
    with pytest.raises(ValueError, match="uint8 N x H x W x 3"):
        G.heatmaps(model, np.zeros((2, 32, 32, 3), np.float32))


def test_maps_equal_grad_cam_computed_through_the_whole_network(smears):
    """The graph starts at the target layer (cheap): the maps are Grad-CAM's all the same, here
    computed from scratch with the gradient taken through the full network."""
    import cv2

    model = _fitted("test_resnet", smears, SIZE)
    images, targets = smears[0][:4], [0, 1, 2, 3]
    mean, std = (torch.tensor(v) for v in backbones.normalisation(model))
    seen = {}
    hook = G.target_layer(model, SIZE).register_forward_hook(lambda _m, _i, out: seen.setdefault("a", out))
    logits = model(G.to_model_input(torch.from_numpy(images), SIZE, mean, std))
    hook.remove()
    a = seen["a"]
    grad = torch.autograd.grad(logits[torch.arange(4), torch.tensor(targets)].sum(), a)[0]
    raw = torch.relu((grad.mean((2, 3), keepdim=True) * a).sum(1)).detach().numpy()
    want = [cv2.resize((m - m.min()) / (1e-7 + (m - m.min()).max()), (SIZE, SIZE)) for m in raw]
    got = G.heatmaps(model, images, targets, *backbones.normalisation(model), SIZE)
    assert np.allclose(got, np.clip(want, 0, 1), atol=1e-5)
