"""Predictor: uint8 image batches → logits, probabilities and penultimate features of one model.

Shared by training (post-training outputs) and bulk classification, through models.inference.
Images travel as uint8 (4x smaller than float32) and are resized and normalised on the device;
on CUDA the model runs channels_last under bf16 autocast.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from . import preprocessing
from .persistence import load_model


def to_model_input(images: torch.Tensor, image_size: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 N x H x W x 3 (on the device already) → normalised float N x 3 x S x S."""
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-2:] != (image_size, image_size):
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True,
                          align_corners=False)
    x = (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    if x.is_cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


class Predictor:
    """A trained model from `model_dir` (sha256 checked on load), ready for batches of uint8 images."""

    def __init__(self, model_dir: str, device: str = "cpu"):
        self.device = torch.device(device)
        model, self.meta = load_model(model_dir, device="cpu")
        if self.device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        self.model = model.to(self.device).eval()
        self.classes: list[str] = list(self.meta["classes"])
        prep = preprocessing.read(self.meta)
        self.image_size: int = prep.image_size
        self.backbone: str = self.meta["architecture"]
        self._mean = torch.tensor(prep.mean, dtype=torch.float32, device=self.device)
        self._std = torch.tensor(prep.std, dtype=torch.float32, device=self.device)

    @torch.inference_mode()
    def __call__(self, images: np.ndarray | torch.Tensor) -> dict[str, np.ndarray]:
        """images: uint8 N x H x W x 3 → {"logits", "probs": N x C, "features": N x D}, float32."""
        imgs = torch.as_tensor(np.ascontiguousarray(images) if isinstance(images, np.ndarray) else images)
        if imgs.dtype != torch.uint8 or imgs.ndim != 4 or imgs.shape[-1] != 3:
            raise ValueError(f"Predictor expects uint8 N x H x W x 3 images, got {tuple(imgs.shape)} {imgs.dtype}")
        cuda = self.device.type == "cuda"
        imgs = imgs.to(self.device, non_blocking=cuda)
        x = to_model_input(imgs, self.image_size, self._mean, self._std)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            feats = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
            logits = self.model.get_classifier()(feats)
        logits = logits.float()
        return {
            "logits": logits.cpu().numpy(),
            "probs": torch.softmax(logits, dim=1).cpu().numpy(),
            "features": feats.float().cpu().numpy(),
        }
