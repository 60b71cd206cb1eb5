"""Backbone registry: a name → an image classifier with timm's interface, from timm or torchvision.

The two ensemble members (DenseNet-201, ResNet-50) and the paper's baselines (MobileNetV2, VGG-16,
AlexNet) have fixed names here; any other timm model name (e.g. the small `test_resnet` the tests
use) works too. Every model answers `forward_features`, `forward_head(x, pre_logits=...)` and
`get_classifier()`, so the Predictor takes penultimate features the same way from all of them.

Weights (`pretrained`): `hub` = ImageNet weights through timm / the Hugging Face Hub (its cache and
HF_HUB_OFFLINE honoured; AlexNet through torchvision's torch.hub cache), `none` = from scratch,
PATH = a local or s3:// `.safetensors` state dict (a classifier of another shape is dropped).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError
from ..io import storage

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PRETRAINED_HELP = "hub | none | PATH (a .safetensors state dict, local or s3://)"


@dataclass(frozen=True)
class Spec:
    source: str          # "timm" or "torchvision"
    image_size: int
    role: str            # "member" of the ensemble or a paper "baseline"


REGISTRY: dict[str, Spec] = {
    "densenet201": Spec("timm", 224, "member"),
    "resnet50": Spec("timm", 224, "member"),
    "mobilenetv2_100": Spec("timm", 224, "baseline"),
    "vgg16": Spec("timm", 224, "baseline"),
    "alexnet": Spec("torchvision", 227, "baseline"),
}
# `--backbone all`: the two members and the three baselines, trained under one protocol.
ALL = tuple(REGISTRY)


def expand(name: str) -> list[str]:
    """`all` → every registry backbone; `a,b` → [a, b]; a single name → [name] (validated)."""
    names = list(ALL) if name == "all" else [n.strip() for n in name.split(",") if n.strip()]
    for n in names:
        _check_known(n)
    return names


def _check_known(name: str) -> None:
    import timm

    if name not in REGISTRY and not timm.is_model(name):
        raise ConfigError(f"backbone {name!r}: unknown; use one of {sorted(REGISTRY)}, 'all', "
                          "or any timm model name (timm.list_models())")


def default_image_size(name: str) -> int:
    """224 for the registry's timm models, 227 for AlexNet, timm's own input size otherwise."""
    if name in REGISTRY:
        return REGISTRY[name].image_size
    import timm

    _check_known(name)
    return int(timm.get_pretrained_cfg(name).input_size[-1])


def default_normalisation(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of `name`'s ImageNet weights, without building the model."""
    _check_known(name)
    if REGISTRY.get(name, Spec("timm", 0, "")).source == "torchvision":
        return IMAGENET_MEAN, IMAGENET_STD
    import timm

    cfg = timm.get_pretrained_cfg(name)
    return (tuple(cfg.mean), tuple(cfg.std)) if cfg else (IMAGENET_MEAN, IMAGENET_STD)


def normalisation(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the model's pretrained weights expect, on the 0..1 scale."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))


def create(name: str, num_classes: int, pretrained: str = "none") -> nn.Module:
    """The backbone `name` with a fresh `num_classes` classifier, weights per `pretrained`."""
    _check_known(name)
    mode = _pretrained_mode(pretrained)
    if REGISTRY.get(name, Spec("timm", 0, "")).source == "torchvision":
        model = AlexNet(num_classes)
        if mode == "hub":
            load_backbone_weights(model, _alexnet_hub_state_dict())
    elif mode == "hub":
        model = _timm_hub(name, num_classes)
    else:
        import timm

        model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    if mode == "path":
        load_backbone_weights(model, _read_safetensors(pretrained))
    return model


def check_pretrained(name: str, pretrained: str) -> None:
    """Fail fast (in the driver, before any worker starts) when the weights can't be had."""
    mode = _pretrained_mode(pretrained)
    if mode == "path" and not storage.exists(pretrained):
        raise ConfigError(f"--pretrained {pretrained}: no such file; give a .safetensors state dict, "
                          "or 'hub' / 'none'")
    if mode == "hub" and REGISTRY.get(name, Spec("timm", 0, "")).source == "timm":
        _hub_cached_or_reachable(name)


def _pretrained_mode(pretrained: str) -> str:
    if pretrained in ("hub", "none"):
        return pretrained
    if not str(pretrained).endswith(".safetensors"):
        # Pickled checkpoints (.pth/.bin) can run code when loaded: this project never unpickles.
        raise ConfigError(f"--pretrained {pretrained}: expected {PRETRAINED_HELP}; convert a .pth with "
                          "safetensors.torch.save_file(state_dict, 'weights.safetensors')")
    return "path"


def _offline() -> bool:
    import huggingface_hub.constants as hc

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    return flag or bool(hc.HF_HUB_OFFLINE)


def _hub_error(name: str, why: str) -> ConfigError:
    return ConfigError(f"--pretrained hub: ImageNet weights of {name} {why}; use --pretrained none "
                       "(train from scratch) or --pretrained PATH (a local .safetensors file)")


def _hub_cached_or_reachable(name: str) -> None:
    import huggingface_hub as hf
    import timm

    repo = timm.get_pretrained_cfg(name).hf_hub_id if timm.get_pretrained_cfg(name) else None
    if not repo:
        raise _hub_error(name, "are not published on the Hugging Face Hub")
    repo_id, _, revision = repo.partition("@")
    for filename in ("model.safetensors", "pytorch_model.bin"):
        if isinstance(hf.try_to_load_from_cache(repo_id, filename, revision=revision or None), str):
            return
    if _offline():
        raise _hub_error(name, f"({repo_id}) are not in the Hugging Face cache and HF_HUB_OFFLINE is set")
    try:  # a HEAD request answers within seconds, instead of timm failing after a long download attempt
        hf.hf_hub_download(repo_id, "model.safetensors", revision=revision or None)
    except Exception as exc:  # noqa: BLE001 - network, auth or missing repo all mean the same to the user
        raise _hub_error(name, f"({repo_id}) can't be downloaded ({type(exc).__name__})") from None


def _timm_hub(name: str, num_classes: int) -> nn.Module:
    import timm

    _hub_cached_or_reachable(name)
    return timm.create_model(name, pretrained=True, num_classes=num_classes)


def _alexnet_hub_state_dict() -> dict[str, torch.Tensor]:
    from torchvision.models import AlexNet_Weights

    url = AlexNet_Weights.IMAGENET1K_V1.url
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))
    if not os.path.exists(cached) and _offline():
        raise _hub_error("alexnet", f"are not in the torch.hub cache ({cached}) and HF_HUB_OFFLINE is set")
    try:
        # weights_only=True: torch's restricted loader, which refuses arbitrary pickled objects.
        sd = torch.hub.load_state_dict_from_url(url, progress=False, weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise _hub_error("alexnet", f"can't be downloaded ({type(exc).__name__})") from None
    return {f"net.{k}": v for k, v in sd.items()}


def _read_safetensors(uri: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        return load(storage.read_bytes(uri))
    except (SafetensorError, ValueError) as exc:
        raise ConfigError(f"--pretrained {uri}: not a readable .safetensors file ({exc})") from None


def load_backbone_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load every weight whose name and shape match; a classifier of another shape stays fresh.

    Anything else missing means the file is for another architecture: an error, not a silent
    half-initialised model.
    """
    own = model.state_dict()
    head = {f"{n}.{k}" for n, m in model.named_modules() if m is model.get_classifier()
            for k in m.state_dict()}
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing = set(own) - set(usable) - head
    if missing:
        raise ConfigError(f"pretrained weights don't fit {type(model).__name__}: {len(missing)} tensors "
                          f"missing or of another shape (e.g. {sorted(missing)[:3]}); give weights of "
                          "this backbone")
    model.load_state_dict(usable, strict=False)


class AlexNet(nn.Module):
    """torchvision's AlexNet behind timm's interface (features, pre-logits head, classifier)."""

    def __init__(self, num_classes: int):
        super().__init__()
        from torchvision.models import alexnet

        self.net = alexnet(weights=None, num_classes=num_classes)
        self.num_classes = num_classes
        self.num_features = self.net.classifier[-1].in_features
        self.pretrained_cfg = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "input_size": (3, 227, 227)}

    def get_classifier(self) -> nn.Module:
        return self.net.classifier[-1]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.net.avgpool(x), 1)
        x = self.net.classifier[:-1](x)  # dropout, fc 9216→4096, relu, dropout, fc, relu
        return x if pre_logits else self.get_classifier()(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
