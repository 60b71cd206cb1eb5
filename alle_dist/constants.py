"""Constants more than one layer needs, with one home each. Imports nothing, so the lightest module
(config, for `--help`) can use them as well as the heaviest."""
from __future__ import annotations

# An image whose header claims more pixels is refused before its pixel data is decoded (a
# decompression bomb, or a whole-slide scan that is not a smear field): io.images.decode_rgb's
# default and classify.max_pixels' default.
MAX_PIXELS = 50_000_000

# The error reason of a zero-byte file: io.images.decode_rgb raises it; classify's planner writes
# it without reading the file (the row reading would give).
EMPTY_FILE = "empty file (0 bytes)"

# Hamming radius of the perceptual-hash near-duplicate groups, chosen on the shared images
# (docs/near-duplicates.md): prepare.near_radius' default and bench/near_duplicates.py's.
NEAR_RADIUS = 10

# Credentials that must never reach a log line, a runtime_env, a run record or commit metadata.
SECRET_ENV_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
