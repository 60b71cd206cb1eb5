"""HSV segmentation: the pure core on drawn and real images, and the `segment` stage on Ray Data."""
from __future__ import annotations

import glob

import cv2
import numpy as np
import pytest
from alle_dist import schema
from alle_dist.config import SegmentConfig
from alle_dist.imaging import hsv
from alle_dist.io import storage
from alle_dist.io.images import decode_rgb
from alle_dist.segment import stage as seg_stage
from alle_dist.testing.synthetic import generate



def _disc_image(fg_rgb, bg_rgb=(236, 230, 226), r=30) -> np.ndarray:
    img = np.full((128, 128, 3), bg_rgb, np.uint8)
    cv2.circle(img, (64, 64), r, tuple(int(v) for v in fg_rgb), -1)
    return img


def test_stained_blast_stays_background_and_red_cells_go():
    purple = _disc_image((110, 70, 160))                   # a violet-stained nucleus
    masked, mask = hsv.segment_image(purple, SegmentConfig())
    area = np.pi * 30 ** 2 / mask.size
    assert abs(hsv.mask_fraction(mask) - area) < 0.01
    assert mask[64, 64] == 255 and mask[5, 5] == 0
    assert (masked[5, 5] == 0).all() and (masked[64, 64] == purple[64, 64]).all()
    for red_cell in ((212, 196, 200), (190, 190, 205)):     # grey-pink, and the real data's blue-grey
        assert hsv.mask_fraction(hsv.hsv_mask(_disc_image(red_cell), SegmentConfig())) == 0


def test_small_components_are_dropped_when_asked():
    img = _disc_image((110, 70, 160))
    cv2.circle(img, (10, 10), 3, (110, 70, 160), -1)      # a speck
    keep_all = hsv.hsv_mask(img, SegmentConfig(min_component_px=0))
    cleaned = hsv.hsv_mask(img, SegmentConfig())              # the default drops specks < 40 px
    assert keep_all[10, 10] == 255 and cleaned[10, 10] == 0 and cleaned[64, 64] == 255


def test_real_images_keep_2_to_80_percent_of_pixels(leukemia_dir):
    # Every real image (~10 s on one core): the defaults of SegmentConfig, as docs/segmentation.md measures.
    files = sorted(glob.glob(str(leukemia_dir / "Original" / "*" / "*.jpg")))
    assert len(files) == 2773
    fr = np.array([hsv.mask_fraction(hsv.hsv_mask(decode_rgb(open(f, "rb").read()), SegmentConfig()))
                   for f in files])
    share = np.mean((fr >= 0.02) & (fr <= 0.80))
    assert share >= 0.95, f"only {share:.1%} of the images keep 2-80 % of their pixels"


def test_output_paths_mirror_the_source():
    img, mask = seg_stage.output_uris("s3://b/out", "Original/Pro/WBC-Pro-001.jpg")
    assert img == "s3://b/out/Original/Pro/WBC-Pro-001.jpg" and mask == "s3://b/out/masks/Original/Pro/WBC-Pro-001.png"


def test_segment_file_reports_bad_files_and_writes_nothing(tmp_path):
    (tmp_path / "src" / "A").mkdir(parents=True)
    (tmp_path / "src" / "A" / "zero.jpg").write_bytes(b"")
    row = seg_stage.segment_file(str(tmp_path / "src"), str(tmp_path / "dst"), "A/zero.jpg", SegmentConfig())
    assert row == {"path": "A/zero.jpg", "status": schema.ERROR, "error": "empty file (0 bytes)", "mask_fraction": None}
    assert not (tmp_path / "dst").exists()


@pytest.mark.ray
def test_segment_stage_writes_images_masks_and_report_to_s3(ray_local, tmp_path, s3_bucket):
    from alle_dist.cli import get_args_parser, run_stage

    src = generate(str(tmp_path / "src"), n_per_class=3)
    (tmp_path / "src" / "Pro" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    dst = f"s3://{s3_bucket}/segmented"
    args = get_args_parser("segment").parse_args(["--data", src, "--output", dst, "--tasks", "2"])
    assert run_stage("segment", args) == 0
    report = storage.read_parquet(f"{dst}/{seg_stage.REPORT_FILE}").to_pylist()
    assert len(report) == 13
    bad = [r for r in report if r["status"] == schema.ERROR]
    assert [r["path"] for r in bad] == ["Pro/broken.jpg"] and "unreadable header" in bad[0]["error"]
    outputs = {rel for rel, _ in storage.list_files(dst)}
    for r in report:
        if r["status"] == schema.OK:
            stem = r["path"].rsplit(".", 1)[0]
            assert {r["path"], f"masks/{stem}.png"} <= outputs
            assert 0.005 < r["mask_fraction"] < 0.5
    mask = decode_rgb(storage.read_bytes(f"{dst}/masks/Early/Early-0000.png"))
    assert set(np.unique(mask)) <= {0, 255}
    assert "segment_config.yaml" in outputs


@pytest.mark.parametrize("working_size", [None, 224])   # the original read path; the working one (reduced decode)
def test_training_and_bulk_classification_preprocess_identically(tmp_path, working_size):
    """One preprocessing for train and classify: no training/serving skew in decode, segmentation or resize."""
    from PIL import Image

    from alle_dist.io.images import encode_jpeg
    from alle_dist.models import inference as classify_io
    from alle_dist.testing.synthetic import draw_smear
    from alle_dist.train import augment

    rgb = np.asarray(Image.fromarray(draw_smear("Pre", np.random.default_rng(3), size=300)).resize((1200, 900)))
    data = encode_jpeg(rgb, 90)
    (tmp_path / "a.jpg").write_bytes(data)
    want, frac = augment.load_image(data, 64, SegmentConfig(), working_size=working_size)
    spec = classify_io.ReadSpec(image_size=64, segment=SegmentConfig(), working_size=working_size)
    row = classify_io.read_one(spec, storage.path_to_uri(tmp_path / "a.jpg"), len(data), None)
    assert row["status"] == "ok" and abs(row["mask_fraction"] - frac) < 1e-9
    assert np.frombuffer(row["image"], np.uint8).reshape(64, 64, 3).tobytes() == want.tobytes()
