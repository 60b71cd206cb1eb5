"""Model files: safetensors + meta.json round trip bit-exact, locally and on S3; damage is a clear error."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from alle_dist import errors
from alle_dist.errors import StorageError
from alle_dist.models import persistence
from alle_dist.models import registry


META = {"architecture": "test_resnet", "classes": ["a", "b", "c"], "image_size": 64,
        "mean": [0.5] * 3, "std": [0.5] * 3}


def _model():
    torch.manual_seed(1)
    return registry.create("test_resnet", num_classes=3, pretrained="none")


def _assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_round_trip_is_bit_exact(tmp_path):
    model = _model()
    meta = persistence.save_model(str(tmp_path), model, META)
    assert len(meta["sha256"]) == 64
    loaded, got = persistence.load_model(str(tmp_path))
    _assert_same_state(model, loaded)
    assert got == meta and not loaded.training


def test_round_trip_on_s3(s3_bucket):
    root = f"s3://{s3_bucket}/run/models/test_resnet"
    model = _model()
    persistence.save_model(root, model, META)
    loaded, meta = persistence.load_model(root)
    _assert_same_state(model, loaded)
    stats = {"means": np.ones((3, 4), np.float32), "precision": np.eye(4, dtype=np.float32)}
    persistence.save_ood(root, stats)
    back = persistence.load_ood(root)
    assert all(np.array_equal(back[k], stats[k]) for k in stats)


def test_changed_weights_fail_the_sha256(tmp_path):
    persistence.save_model(str(tmp_path), _model(), META)
    weights = tmp_path / persistence.WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01                     # one bit of one weight
    weights.write_bytes(bytes(data))
    with pytest.raises(errors.ModelIntegrityError, match="sha256"):
        persistence.load_model(str(tmp_path))


def test_unparseable_files_are_integrity_errors(tmp_path):
    persistence.save_model(str(tmp_path), _model(), META)
    meta_file = tmp_path / persistence.META_FILE
    meta = json.loads(meta_file.read_text())
    # Garbage weights whose sha256 is recorded: the hash passes, the parser refuses.
    (tmp_path / persistence.WEIGHTS_FILE).write_bytes(b"\x00" * 64)
    import hashlib
    persistence.write_meta(str(tmp_path), {**meta, "sha256": hashlib.sha256(b"\x00" * 64).hexdigest()})
    with pytest.raises(errors.ModelIntegrityError, match="not a valid safetensors"):
        persistence.load_model(str(tmp_path))
    meta_file.write_text("{not json")
    with pytest.raises(errors.ModelIntegrityError, match="not valid JSON"):
        persistence.load_model(str(tmp_path))
    assert issubclass(errors.ModelIntegrityError, RuntimeError)


def test_missing_model_is_a_storage_error(tmp_path):
    with pytest.raises(StorageError, match="train the model first"):
        persistence.load_model(str(tmp_path / "nothing"))


def test_copy_model_keeps_bytes_and_updates_meta(tmp_path):
    src, dst = tmp_path / "ckpt", tmp_path / "out"
    meta = persistence.save_model(str(src), _model(), {**META, "optimizer": {"x": 1}})
    out = persistence.copy_model(str(src), str(dst), optimizer=None, best_epoch=3)
    assert (dst / persistence.WEIGHTS_FILE).read_bytes() == (src / persistence.WEIGHTS_FILE).read_bytes()
    assert out["best_epoch"] == 3 and "optimizer" not in out and out["sha256"] == meta["sha256"]
