"""The report's galleries on a real tiny run: the test images as the models saw them, a Grad-CAM map per
backbone, caps, and what happens to an unreadable image and a tampered model (left out, not fatal)."""
from __future__ import annotations

import io
import logging

import numpy as np
import pytest
from PIL import Image

import helpers_report as H
from alle_dist.ensemble import split_probs
from alle_dist.ensemble import weighted
from alle_dist.evaluate import gallery, page
from alle_dist.evaluate.metrics import model_outputs
from alle_dist.io import storage
from alle_dist.models import preprocessing
from alle_dist.rundir import RunDir

N_TEST = 20


def _inputs(run):
    spec = weighted.load_spec(str(run))
    data = split_probs.load_probs(str(run), list(spec.backbones), "test")
    return data, model_outputs(data, spec), spec


def _png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return H.gallery_run(tmp_path_factory.mktemp("gallery"), N_TEST, n_train=0)


def test_each_image_as_the_model_saw_it_with_a_map_per_backbone(run):
    data, outputs, spec = _inputs(run)
    gal = gallery.build(str(run), data, outputs, spec)
    picked = gallery.select(data.y, outputs["ensemble"].pred, {b: outputs[b].pred for b in spec.backbones})
    assert {k: len(v) for k, v in gal.items()} == {k: len(v) for k, v in picked.items()}
    assert all(gal.values())
    prep = preprocessing.read(storage.read_json(RunDir(str(run)).model(H.MEMBERS[0]).meta))
    source = run.parent / "src"
    for item in (it for items in gal.values() for it in items):
        view = gallery.model_view((source / item["path"]).read_bytes(), prep)
        thumb = _png(item["thumb"])
        assert thumb.shape == (64, 64, 3) and np.array_equal(thumb, view)      # segmented and resized
        assert (thumb == 0).all(-1).mean() > 0.3                               # the pale background masked out
        assert set(item["cams"]) == set(H.MEMBERS)
        assert all(_png(png).shape == thumb.shape for png in item["cams"].values())


def test_caps_an_unreadable_image_and_a_tampered_model(tmp_path, caplog):
    run = H.gallery_run(tmp_path, N_TEST, n_train=0)
    data, outputs, spec = _inputs(run)
    corrected = gallery.select(data.y, outputs["ensemble"].pred, {b: outputs[b].pred for b in spec.backbones})["corrected"]
    broken_image = data.paths[corrected[0]]
    (tmp_path / "src" / broken_image).write_bytes(b"not a JPEG any more")
    weights = RunDir(str(run)).model(H.MEMBERS[1]).weights
    blob = bytearray(storage.read_bytes(weights))
    blob[-1] ^= 0xFF                                    # the sha256 in meta.json no longer matches
    storage.write_bytes(weights, bytes(blob))

    with caplog.at_level(logging.WARNING, logger="alle_dist.report"):
        gal = gallery.build(str(run), data, outputs, spec, caps={"corrected": 2, "referred": 1, "misclassified": 1})
    assert [it["path"] for it in gal["corrected"]] == [data.paths[corrected[1]]]
    assert len(gal["referred"]) == len(gal["misclassified"]) == 1
    assert all(set(it["cams"]) == {H.MEMBERS[0]} for items in gal.values() for it in items)
    assert f"{broken_image} left out" in caplog.text and f"no Grad-CAM for {H.MEMBERS[1]}" in caplog.text
    assert f"Showing 1 of {len(corrected)} images" in page._gallery(gal["corrected"], len(corrected))
