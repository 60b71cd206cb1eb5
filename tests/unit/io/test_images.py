"""io.images.decode_rgb attacked with JPEGs that Pillow decodes without a word (grey fill): a header
whose dimensions were multiplied by 4, a truncated file with an end marker appended. Both must be
refused (an error row in prepare, train and classify, which share decode_rgb); every image of the
shared data set must still decode, to the same pixels Pillow gives."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from alle_dist.errors import DecodeError
from alle_dist.io.images import decode_rgb
from helpers_run import jpeg as _jpeg
from helpers_run import jpeg_dimensions_times_4, jpeg_truncated_with_end_marker


@pytest.mark.parametrize("attack", [jpeg_dimensions_times_4, jpeg_truncated_with_end_marker])
def test_jpeg_that_pillow_fills_with_grey_is_refused(attack):
    data = attack(_jpeg())
    Image.open(io.BytesIO(data)).load()          # the attack: Pillow takes it silently
    with pytest.raises(DecodeError, match=r"corrupt or truncated image data \(JPEG\): Corrupt JPEG data"):
        decode_rgb(data)


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
def test_intact_jpeg_decodes_as_pillow_decodes_it(mode):
    data = _jpeg(mode)
    assert np.array_equal(decode_rgb(data), np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))


def test_cmyk_jpeg_cut_short_is_refused_too():
    with pytest.raises(DecodeError, match="JPEG"):
        decode_rgb(jpeg_truncated_with_end_marker(_jpeg("CMYK")))


def test_every_shared_image_decodes_cleanly_to_pillows_pixels(leukemia_dir):
    paths = sorted(leukemia_dir.glob("Original/*/*.jpg"))
    assert len(paths) == 2773
    for p in paths:
        data = p.read_bytes()
        assert np.array_equal(decode_rgb(data), np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))), p
