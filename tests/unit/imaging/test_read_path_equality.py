"""The working-resolution read path (Preprocessing.working_size) against the original one.

At 224² the two give the same model input, mask fraction and statistics, bit for bit, and the
statistics equal those of the code before the working path (kept below as numbers) to float32
rounding: OpenCV's float64 reductions replaced numpy's float32 ones (rtol 1e-6, atol 1e-6; the
largest difference measured on 111 of the shared images, every 25th, is 5e-6 of a feature's spread).

For fields far larger than the working size the working path decodes at reduced scale and segments
at 224²; there its mask and statistics agree with the original path's full-resolution ones within
the tolerances stated in test_large_fields_agree_with_the_full_resolution_path (docs/classify.md#the-read-path).
"""
from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from PIL import Image

from alle_dist.config import SegmentConfig
from alle_dist.errors import DecodeError
from alle_dist.imaging import hsv
from alle_dist.imaging.model_input import decode, from_bytes, preprocess, resize_square
from alle_dist.io import storage
from alle_dist.io.images import decode_rgb, encode_jpeg, encode_png
from alle_dist.models import field_stats, inference
from alle_dist.testing.synthetic import draw_smear
from helpers_run import bad_inputs

W = 224
# field_stats.features(draw_smear(cls, default_rng([7, i]), 224), SegmentConfig()) before the working
# path (main at 8199b74), with the sha256 prefixes of the drawn field and of its 64² model input.
BEFORE = {
    "Benign": ("ca00288f1bbdc688", "12297d473f0220ce", 0.013412786989795918, [5.1023850440979, 0.6334012746810913, 2.6678078174591064, 0.7260109782218933, 0.21400325000286102, 14.329280853271484, 15.345142364501953, 234.21224975585938, 12.90501594543457, -4.2396392822265625, -0.10235179960727692, -0.9926691055297852, 134.96136474609375, 152.13670349121094, 235.29214477539062, 228.96437072753906, 224.25845336914062, 0.6931471824645996, -4.2396392822265625, 1.0515625476837158]),  # noqa: E501
    "Early": ("8a0741ae3bda4723", "83879ac22e227a77", 0.02951610331632653, [5.0139384269714355, 0.6488114595413208, 2.7391068935394287, 0.7849833369255066, -0.28765472769737244, 18.418766021728516, 15.492838859558105, 234.33607482910156, 13.359962463378906, -3.4895007610321045, -0.1779739409685135, -0.981759786605835, 99.17285919189453, 186.23902893066406, 235.7972869873047, 221.4722442626953, 223.72293090820312, 0.6931471824645996, -3.4895007610321045, 1.031337022781372]),  # noqa: E501
    "Pre": ("d433bebd7e90d169", "edd0aec993d78328", 0.07322225765306123, [5.225489616394043, 0.6719916462898254, 2.876103401184082, 0.5496636033058167, -0.09727779775857925, 21.584482192993164, 22.303722381591797, 233.2359161376953, 15.052872657775879, -2.600691318511963, -0.16627463698387146, -0.981243371963501, 95.38050842285156, 201.3494873046875, 235.74757385253906, 226.66468811035156, 221.79737854003906, 1.0986123085021973, -3.2374138832092285, 1.027012586593628]),  # noqa: E501
    "Pro": ("36d3ff6b14680b7b", "00e69be5cb5b73fe", 0.10355548469387756, [5.485610485076904, 0.7177884578704834, 2.9169421195983887, 0.36957892775535583, -0.6960381865501404, 14.493921279907227, 31.06528663635254, 228.1855926513672, 17.460865020751953, -2.2580373287200928, 0.3079855740070343, -0.9472377300262451, 94.59064483642578, 193.71690368652344, 231.0223388671875, 228.5417938232422, 229.34796142578125, 0.6931471824645996, -2.2580373287200928, 0.8973318338394165]),  # noqa: E501
}
SHAPE = {"log_components", "log_largest", "solidity"}   # depend on which components pass the size filter


def _sha(a: np.ndarray) -> str:
    return hashlib.sha256(a.tobytes()).hexdigest()[:16]


def _rows(path, seg, size: int) -> tuple[dict, dict]:
    """read_one of one file on the original and on the working path."""
    uri = storage.path_to_uri(path)
    return tuple(inference.read_one(inference.ReadSpec(size, seg, image_stats=True, working_size=w), uri, None, None)
                 for w in (None, W))


@pytest.mark.parametrize("cls", sorted(BEFORE))
def test_at_224_both_paths_give_the_model_input_and_statistics_of_before(cls):
    field_sha, input_sha, frac, stats = BEFORE[cls]
    rgb = draw_smear(cls, np.random.default_rng([7, list(BEFORE).index(cls)]), 224)
    assert _sha(rgb) == field_sha   # the drawn field itself is unchanged
    original, working = preprocess(rgb, 64, SegmentConfig()), preprocess(rgb, 64, SegmentConfig(), W)
    for p in (original, working):
        assert _sha(p.image) == input_sha and p.mask_fraction == frac
        np.testing.assert_allclose(field_stats.features_of(p.field), stats, rtol=1e-6, atol=1e-6)
    assert np.array_equal(field_stats.features_of(original.field), field_stats.features_of(working.field))


def test_at_224_the_read_rows_are_identical_on_real_fields(tmp_path, leukemia_dir):
    files = sorted((leukemia_dir / "Original").rglob("*.jpg"))[::347]   # 8 fields, every class
    for f in files:
        for seg in (SegmentConfig(), None):
            for size in (224, 64):
                original, working = _rows(f, seg, size)
                assert original["status"] == "ok" and original == working, (f.name, seg, size)


def _field(src, size: tuple[int, int]) -> bytes:
    """A real field upscaled with Lanczos and saved as a q90 JPEG, as a microscope camera would write it."""
    buf = io.BytesIO()
    Image.open(src).convert("RGB").resize(size, Image.Resampling.LANCZOS).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_large_fields_agree_with_the_full_resolution_path(leukemia_dir):
    """5 MP fields: the working path (decoded at 1/4 scale, segmented at 224²) against the original one
    (decoded and segmented at full resolution). Tolerances, from 24 fields measured: the masks (the
    full-resolution one area-resized to 224²) disagree on at most 2 % of a field's pixels, and their IoU
    is ≥ 0.9 in the median (a field holding one small blast can fall to 0.6: the size filter's 40 px
    are 224² pixels on the working path, ~75x more area at full resolution); mask fraction within
    0.03; each statistic within 0.35 of its spread over the shared 224² fields (0.24 measured), those of
    the largest object's shape within 1.0 (0.88 measured: a piece passes or fails the size filter)."""
    files = sorted((leukemia_dir / "Original").rglob("*.jpg"))
    spread = np.stack([field_stats.features(decode_rgb(f.read_bytes())) for f in files[::60]]).std(0)
    seg, ious, shape_ok = SegmentConfig(), [], np.array([n in SHAPE for n in field_stats.FEATURES])
    for f in files[5::700]:   # 4 fields
        data = _field(f, (2592, 1944))
        full = decode_rgb(data)
        original = preprocess(full, 224, seg)
        working = from_bytes(data, 224, seg, W)
        old_mask = resize_square(hsv.hsv_mask(full, seg), W) > 127
        new_mask = working.field.mask > 0
        ious.append((old_mask & new_mask).sum() / max((old_mask | new_mask).sum(), 1))
        assert (old_mask ^ new_mask).mean() <= 0.02, (f.name, (old_mask ^ new_mask).mean(), old_mask.mean())
        assert abs(original.mask_fraction - working.mask_fraction) <= 0.03
        moved = np.abs(field_stats.features_of(original.field) - field_stats.features_of(working.field)) / spread
        assert (moved[~shape_ok] <= 0.35).all() and (moved[shape_ok] <= 1.0).all(), dict(zip(field_stats.FEATURES, moved))
    assert np.median(ious) >= 0.9, ious


def test_a_large_jpeg_is_decoded_at_reduced_scale_and_nothing_else_is():
    rgb = draw_smear("Pre", np.random.default_rng(0), 224)
    big = np.asarray(Image.fromarray(rgb).resize((2592, 1944)))
    assert decode(encode_jpeg(big, 90), W).shape == (486, 648, 3)          # 1/4: both sides ≥ 2 x 224
    assert decode(encode_jpeg(big, 90)).shape == (1944, 2592, 3)           # the original path: full size
    assert decode(encode_png(big[:900, :1200]), W).shape == (900, 1200, 3)  # not a JPEG: full size
    assert decode(encode_jpeg(rgb, 90), W).shape == (224, 224, 3)


def test_the_reduced_decode_refuses_what_the_full_decode_refuses():
    cases = {k: d for k, (d, _) in bad_inputs().items()}
    big = encode_jpeg(np.asarray(Image.fromarray(draw_smear("Pro", np.random.default_rng(1), 224)).resize((1600, 1200))))
    cases["truncated large jpeg"] = big[: len(big) // 2]
    cases["large jpeg over the pixel limit"] = big
    for name, data in cases.items():
        limit = 1_000_000 if "limit" in name else 50_000_000
        outcomes = []
        for w in (None, W):
            try:
                outcomes.append(decode(data, w, limit).shape[2])
            except DecodeError as exc:
                outcomes.append(str(exc))
        assert outcomes[0] == outcomes[1], name
