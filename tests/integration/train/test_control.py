"""The shortcut control (`train --control background`): its input has the segmented cells removed and
nothing else changed, it trains into its own folder (never the real model's), its outputs are the
control images' predictions, and evaluate reads it beside the real models."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from alle_dist import config, schema
from alle_dist.config import SegmentConfig
from alle_dist.errors import ConfigError
from alle_dist.imaging import hsv
from alle_dist.imaging.model_input import control_input
from alle_dist.io import storage
from alle_dist.io.images import decode_rgb
from alle_dist.models import persistence, preprocessing
from alle_dist.rundir import RunDir
from alle_dist.testing import synthetic
from alle_dist.train import stage as train_job

from test_train import make_run


def test_control_input_removes_the_cells_and_keeps_the_background():
    seg = SegmentConfig()
    for i, cls in enumerate(synthetic.CLASSES):
        rgb = synthetic.draw_smear(cls, np.random.default_rng(i), 96)
        mask = hsv.hsv_mask(rgb, seg)
        out, removed = control_input(rgb, 96, seg)
        assert removed == pytest.approx(hsv.mask_fraction(mask)) and removed > 0.01
        # what the segmentation would keep is (nearly) gone: the cell is not in the control's input
        assert hsv.mask_fraction(hsv.hsv_mask(out, seg)) < 0.1 * removed
        # beyond the grown mask (2 % of 96 px = 2 px; 3 checked) every pixel is untouched
        near = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))) > 0
        same = (hsv.remove_cells(rgb, mask) == rgb).all(axis=2)
        assert same[~near].all() and not same[mask > 0].all()


def test_control_kind_is_checked():
    with pytest.raises(ConfigError, match="train.control"):
        config.TrainConfig(control="cells")


@pytest.mark.ray
@pytest.mark.slow
def test_control_trains_into_its_own_folder_and_evaluate_reads_it(tmp_path, ray_local):
    from alle_dist.ensemble import split_probs
    from alle_dist.evaluate import stage as eval_stage

    src = synthetic.generate(str(tmp_path / "smears"), n_per_class=10, seed=0, size=64)
    run = make_run(tmp_path / "run", src, per_class=10)
    jcfg = config.job_config(None, train={"backbone": "test_resnet", "pretrained": "none", "image_size": 32,
                                          "batch_size": 8, "epochs": 1, "workers": 1, "control": "background"})
    meta = train_job.train_backbone(run, jcfg)
    out = RunDir(run).control_model("test_resnet", "background")
    assert meta["control"] == "background" and storage.exists(out.probs(schema.TEST))
    assert not storage.exists(RunDir(run).model("test_resnet").root)        # the real model's folder: untouched
    test = storage.read_parquet(out.probs(schema.TEST)).to_pandas()
    row = test.iloc[0]
    working = preprocessing.read(meta).working_size          # the mask is the read path's, at the working size
    _, removed = control_input(decode_rgb(storage.read_bytes(storage.join(src, row["path"]))), 32, SegmentConfig(),
                               working)
    assert row["mask_fraction"] == pytest.approx(removed, abs=1e-6)         # predicted on the control images
    assert train_job.train_backbone(run, jcfg) == persistence.read_meta(out.root)   # finished: not retrained
    name = out.root.rsplit("/", 1)[-1]
    assert name in RunDir(run).trained_models()
    data = split_probs.load_probs(run, [name], schema.TEST)
    c = eval_stage._control(run, name, {"test_resnet": {"overall": {"accuracy": 0.9}}})
    assert c["backbone"] == "test_resnet" and c["real_accuracy"] == 0.9 and len(data.y) == len(test)
    assert c["accuracy"] == pytest.approx(np.mean(data.probs[name].argmax(1) == data.y))
