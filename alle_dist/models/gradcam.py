"""Grad-CAM heatmaps over a backbone's last feature map (the `grad-cam` package), and overlays.

The target layer is found generically: the module whose output *is* the tensor `forward_features`
returns (resnet: layer4, densenet: features.norm5, efficientnet: bn2, the AlexNet wrapper:
net.features). Hooks on that module see exactly the feature map the classifier head pools.

The model is left as it was: eval mode during the pass (BatchNorm statistics untouched), its
parameters frozen for the pass so no `.grad` accumulates (the graph starts at the target layer's
output instead), and its training flag, `requires_grad` flags and existing `.grad` restored.
"""
from __future__ import annotations

import contextlib

import cv2
import numpy as np
import torch
from torch import nn

from .predictor import to_model_input

BATCH = 16          # images per backward pass: bounds the activation memory of large backbones


def target_layer(model: nn.Module, image_size: int = 64) -> nn.Module:
    """The module whose output is `forward_features`' output (the outermost such module)."""
    found: list[tuple[nn.Module, torch.Tensor]] = []
    hooks = [m.register_forward_hook(lambda mod, _i, out: found.append((mod, out)))
             for m in model.modules() if m is not model]
    try:
        with _frozen(model), torch.no_grad():
            feats = model.forward_features(torch.zeros(1, 3, image_size, image_size))
    finally:
        for h in hooks:
            h.remove()
    # Hooks fire as modules finish, inner before outer. The last match is the outermost module
    # (resnet's layer4, not its last bn3): inner ones can share the tensor object yet see it before
    # in-place ops (the residual add, an inplace ReLU) change it.
    for mod, out in reversed(found):
        if out is feats:
            return mod
    info = getattr(model, "feature_info", None)
    if info:
        return model.get_submodule(info[-1]["module"])
    raise ValueError(f"{type(model).__name__}: no module outputs forward_features' result; "
                     "pass target_layer= explicitly")


@contextlib.contextmanager
def _frozen(model: nn.Module):
    """Eval mode and no parameter gradients for the block; everything restored afterwards."""
    params = list(model.parameters())
    state = [(p.requires_grad, p.grad) for p in params]
    was_training = model.training
    model.eval()
    for p in params:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, (req, grad) in zip(params, state):
            p.requires_grad_(req)
            p.grad = grad
        model.train(was_training)


@contextlib.contextmanager
def _graph_from(layer: nn.Module):
    """The autograd graph starts at `layer`'s output: Grad-CAM needs the gradient there only, so the
    body below it runs without a graph and the backward pass covers the head alone (a few times
    cheaper on CPU; the same maps)."""
    handle = layer.register_forward_hook(lambda _m, _i, out: out.detach().requires_grad_(True))
    try:
        yield
    finally:
        handle.remove()


def heatmaps(model: nn.Module, images: np.ndarray, targets=None, mean=None, std=None,
             image_size: int | None = None, layer: nn.Module | None = None) -> np.ndarray:
    """Grad-CAM of uint8 N x H x W x 3 images → float32 N x S x S in [0, 1] (S = image_size).

    targets: one class index per image, or None for each image's predicted class. mean/std (0..1
    scale) and image_size default to the model's pretrained_cfg, as at training time."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"heatmaps expects uint8 N x H x W x 3 images, got {images.shape} {images.dtype}")
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = torch.tensor(mean if mean is not None else cfg.get("mean", (0.485, 0.456, 0.406)), dtype=torch.float32)
    std = torch.tensor(std if std is not None else cfg.get("std", (0.229, 0.224, 0.225)), dtype=torch.float32)
    size = int(image_size or cfg.get("input_size", (3, 224, 224))[-1])
    layer = layer if layer is not None else target_layer(model, size)
    out = np.zeros((len(images), size, size), np.float32)
    # _graph_from before GradCAM: its hooks must see the re-rooted output (hooks run in order).
    with _frozen(model), _graph_from(layer), GradCAM(model=model, target_layers=[layer]) as cam:
        for start in range(0, len(images), BATCH):
            x = to_model_input(torch.from_numpy(images[start:start + BATCH]), size, mean, std)
            tg = None if targets is None else [ClassifierOutputTarget(int(t)) for t in targets[start:start + BATCH]]
            out[start:start + len(x)] = cam(input_tensor=x, targets=tg)
    return np.clip(out, 0.0, 1.0)


def overlay(rgb: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """uint8 RGB image with the heatmap (jet colours, resized to the image) blended at `alpha`."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    rgb = np.asarray(rgb)
    mask = cv2.resize(np.asarray(cam, np.float32), (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR)
    return show_cam_on_image(rgb.astype(np.float32) / 255.0, np.clip(mask, 0, 1), use_rgb=True,
                             colormap=cv2.COLORMAP_JET, image_weight=1.0 - alpha)


def heatmaps_for_model_dir(model_dir: str, images: np.ndarray, targets=None) -> np.ndarray:
    """heatmaps() of the trained model in `model_dir` (sha256 checked), with its meta's normalisation."""
    from . import persistence, preprocessing

    model, meta = persistence.load_model(model_dir, device="cpu")
    prep = preprocessing.read(meta)
    return heatmaps(model, images, targets, prep.mean, prep.std, prep.image_size)
