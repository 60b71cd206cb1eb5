"""Drift warning (issue 20): a classify run whose image-rule referral rate is above the rule's stated
bound prints one warning line naming the likely cause, and its run record carries the numbers."""
from __future__ import annotations

import pytest

import helpers_review as H
from alle_dist.classify.store import ResultStore
from helpers_run import make_run_dir, write_images

pytestmark = pytest.mark.ray


def test_a_run_unlike_the_training_images_is_flagged(ray_local, tmp_path, capsys):
    rule = {"image_score": -1e9,        # every field is "unlike the training images"
            "image_rule": {"method": "order_statistic_calibration_conditional", "alpha": 0.01, "delta": 0.05,
                           "alpha_bound": 0.0114}}
    run = make_run_dir(tmp_path / "run", referral=rule)
    write_images(tmp_path / "src", 8)
    assert H.classify(run, tmp_path / "src", tmp_path / "dst") == 0
    err = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(err) == 1 and "8 of 8 images (100.0 %) were referred as unlike the training images" in err[0]
    assert "another stain, microscope or lab" in err[0] and "alle-dist review build" in err[0]
    record = ResultStore(str(tmp_path / "dst")).runs()[-1]
    assert record["drift"]["drift"] is True and record["drift"]["n"] == 8 and record["drift"]["bound"] == 0.0114
    assert record["run_dir"] == str(run)
