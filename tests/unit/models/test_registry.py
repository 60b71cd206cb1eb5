"""Backbone registry: names, sizes, the timm interface on every family, and the three weight sources."""
from __future__ import annotations

import time

import pytest
import torch
from safetensors.torch import save_file
from alle_dist.errors import ConfigError
from alle_dist.models import registry



def test_registry_names_and_sizes():
    assert registry.expand("all") == ["densenet201", "resnet50", "mobilenetv2_100", "vgg16", "alexnet"]
    assert registry.expand("resnet50,test_resnet") == ["resnet50", "test_resnet"]
    assert registry.default_image_size("alexnet") == 227
    assert registry.default_image_size("densenet201") == 224
    assert registry.default_image_size("test_resnet") == 160      # timm's own input size
    with pytest.raises(ConfigError, match="no_such_net"):
        registry.expand("no_such_net")


@pytest.mark.parametrize("name,size", [("test_resnet", 64), ("alexnet", 96)])
def test_features_and_classifier_reproduce_forward(name, size):
    torch.manual_seed(0)
    model = registry.create(name, num_classes=4, pretrained="none").eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        feats = model.forward_head(model.forward_features(x), pre_logits=True)
        logits = model.get_classifier()(feats)
        assert logits.shape == (2, 4)
        torch.testing.assert_close(logits, model(x))
    mean, std = registry.normalisation(model)
    assert (mean, std) == registry.default_normalisation(name)


def test_pretrained_path_loads_backbone_and_resets_classifier(tmp_path):
    src = registry.create("test_resnet", num_classes=10, pretrained="none")
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    model = registry.create("test_resnet", num_classes=4, pretrained=str(path))
    got, want = model.state_dict(), src.state_dict()
    head = {"fc.weight", "fc.bias"}
    assert all(torch.equal(got[k], want[k]) for k in want if k not in head)
    assert got["fc.weight"].shape == (4, want["fc.weight"].shape[1])


def test_pretrained_path_of_another_architecture_is_refused(tmp_path):
    other = registry.create("test_efficientnet", num_classes=4, pretrained="none")
    path = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    with pytest.raises(ConfigError, match="don't fit"):
        registry.create("test_resnet", num_classes=4, pretrained=str(path))


def test_pickled_or_missing_weights_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="safetensors"):
        registry.create("test_resnet", 4, pretrained=str(tmp_path / "weights.pth"))
    with pytest.raises(ConfigError, match="no such file"):
        registry.check_pretrained("test_resnet", str(tmp_path / "absent.safetensors"))
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ConfigError, match="not a readable"):
        registry.create("test_resnet", 4, pretrained=str(tmp_path / "bad.safetensors"))


def test_hub_without_cache_offline_fails_at_once_naming_the_alternatives(tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty-torch-hub"))
    for name in ("resnet50", "alexnet"):
        t0 = time.perf_counter()
        with pytest.raises(ConfigError) as err:
            registry.create(name, 4, pretrained="hub")
        assert time.perf_counter() - t0 < 10
        assert "--pretrained none" in str(err.value) and "--pretrained PATH" in str(err.value)
    with pytest.raises(ConfigError, match="--pretrained none"):
        registry.check_pretrained("densenet201", "hub")
