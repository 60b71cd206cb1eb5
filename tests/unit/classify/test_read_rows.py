"""models.inference's read task as classify uses it: each row read by its absolute uri, bad input as
error rows, the sha256 confirmation of a rerun. Pure unit tests: no Ray, real files."""
from __future__ import annotations

import hashlib
import os

import pyarrow as pa
import pytest
from alle_dist import schema
from alle_dist.config import SegmentConfig
from alle_dist.io import storage
from alle_dist.models import inference

from helpers_run import write_bad_inputs, write_images


def _spec(size=32, working_size=None):
    return inference.ReadSpec(image_size=size, segment=SegmentConfig(), working_size=working_size)


def _uri(root, rel) -> str:
    return storage.path_to_uri(root / rel)


@pytest.mark.parametrize("working_size", [None, 224])   # the original read path and the working one
def test_every_bad_input_is_an_error_row_with_its_reason(tmp_path, working_size):
    expected = write_bad_inputs(tmp_path)
    spec = _spec(working_size=working_size)
    for rel, err in expected.items():
        row = inference.read_one(spec, _uri(tmp_path, rel), (tmp_path / rel).stat().st_size, None)
        if err is None:   # PNG / TIFF / greyscale / CMYK / 16-bit: decoded and classified
            assert row["status"] == schema.OK, (rel, row["error"])
            assert len(row["image"]) == 32 * 32 * 3 and 0.0 <= row["mask_fraction"] <= 1.0
        else:
            assert row["status"] == schema.ERROR and err in row["error"].lower(), (rel, row["error"])
            assert row["image"] == b""
    gone = inference.read_one(spec, _uri(tmp_path, "was/here.jpg"), 123, None)       # listed, then deleted
    assert gone["status"] == schema.ERROR and "vanished" in gone["error"] and gone["sha256"] is None


def test_huge_header_is_refused_without_decoding(tmp_path):
    (tmp_path / "big.png").write_bytes(__import__("helpers_run").huge_png_header(40000, 40000))
    row = inference.read_one(_spec(), _uri(tmp_path, "big.png"), 0, None)
    assert "40000x40000" in row["error"] and "before decoding" in row["error"]


def test_read_skips_an_input_only_when_its_sha256_matches(tmp_path):
    rel = write_images(tmp_path, 1)[0]
    data = (tmp_path / rel).read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    spec = _spec()
    assert inference.read_one(spec, _uri(tmp_path, rel), len(data), sha)["status"] == inference.SKIP
    row = inference.read_one(spec, _uri(tmp_path, rel), len(data), "0" * 64)        # same size, other content
    assert row["status"] == schema.OK and row["sha256"] == sha


def test_prepare_batch_resizes_to_the_model_input_and_keeps_order(tmp_path):
    rels = write_images(tmp_path, 3, size=40)
    uris = [_uri(tmp_path, r) for r in rels + ["missing.jpg"]]
    todo = pa.table({"uri": uris, "bytes": [1, 1, 1, 5], "label": ["a", "b", "c", "d"]})
    out = inference.read_batch(todo, _spec(size=24))
    assert out.column("uri").to_pylist() == uris and out.column("label").to_pylist() == ["a", "b", "c", "d"]
    imgs = inference.images_of(out, 24)
    assert imgs.shape == (3, 24, 24, 3) and imgs.dtype.name == "uint8" and imgs.flags.writeable


def test_a_name_that_is_not_utf8_is_read_by_its_uri(tmp_path):
    rel = write_images(tmp_path, 1)[0]
    odd = os.fsencode(tmp_path) + b"/caf\xe9.jpg"
    os.rename(tmp_path / rel, odd)
    uri = storage.path_to_uri(os.fsdecode(odd))
    row = inference.read_one(_spec(), uri, None, None)
    assert uri.endswith("caf%E9.jpg") and row["status"] == schema.OK and row["bytes"] > 0
