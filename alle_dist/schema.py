"""Column names and Parquet schemas: the one place every stage takes them from.

The run-directory and bulk-classification contracts are in docs/schemas.md; keep the two in step.
"""
from __future__ import annotations

import pyarrow as pa

# Status values of manifest and classification rows.
OK, ERROR = "ok", "error"
# Split names.
TRAIN, VAL, TEST = "train", "val", "test"
SPLITS = (TRAIN, VAL, TEST)
# The label a referred image gets instead of a class.
REFER = "refer"

# Image file suffixes that catalog and classify list (lower case).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")

# Parquet key-value metadata keys.
META_SOURCE = b"alle_dist.source"      # the SRC root that manifest paths are relative to
META_CLASSES = b"alle_dist.classes"    # JSON list of class names, in index order
META_SEED = b"alle_dist.seed"
META_NEAR_RADIUS = b"alle_dist.near_radius"   # Hamming radius of the near-duplicate groups
META_MANIFEST_ID = b"alle_dist.manifest_sha256"   # the manifest's identity (prepare.manifest.manifest_id)

# Where a manifest row came from: null = the SRC folder; REVIEW = an image a haematologist reviewed into
# a class (`prepare --reviews DST`); its `path` is then the image's absolute URI.
REVIEW = "review"
# The manifest columns a reviewed image fills (null for images of SRC). Manifests written before
# they existed lack them; prepare.manifest reads those as nulls and their identity is unchanged.
MANIFEST_REVIEW_COLUMNS = ("source", "reviewer", "batch_id")

MANIFEST_SCHEMA = pa.schema([
    pa.field("path", pa.string(), nullable=False),        # relative to the source root ('/'-separated), or a reviewed image's URI
    pa.field("label", pa.string(), nullable=False),       # the parent folder name
    pa.field("sha256", pa.string()),                      # null when the bytes could not be read
    pa.field("bytes", pa.int64()),
    pa.field("dup_group", pa.int64()),                    # rows with equal sha256 share it; -1 if unique
    pa.field("phash", pa.int64()),                        # 64-bit DCT perceptual hash (signed); null if not decoded
    pa.field("split_group", pa.int64()),                  # exact + near-duplicate group: one split unit; -1 alone
    pa.field("group_reason", pa.string()),                # why: exact / near / exact+near; null when alone
    pa.field("split", pa.string()),                       # train / val / test; null for error rows
    pa.field("status", pa.string(), nullable=False),      # ok / error
    pa.field("error", pa.string()),                       # reason, for error rows
    pa.field("source", pa.string()),                      # null: SRC; 'review': a reviewed image (REVIEW)
    pa.field("reviewer", pa.string()),                    # a reviewed image's reviewer
    pa.field("batch_id", pa.string()),                    # ... and the review batch it was decided in
])

# DST/segment_report.parquet of `alle-dist segment`: one row per input image.
SEGMENT_REPORT_SCHEMA = pa.schema([
    pa.field("path", pa.string(), nullable=False),        # relative to SRC (and to DST)
    pa.field("status", pa.string(), nullable=False),      # ok / error
    pa.field("error", pa.string()),
    pa.field("mask_fraction", pa.float32()),              # share of pixels kept; null for error rows
])


def prob_column(cls: str) -> str:
    """Ensemble (or single-model) probability column of class `cls`."""
    return f"p_{cls}"


def backbone_prob_column(backbone: str, cls: str) -> str:
    return f"{backbone}_p_{cls}"


def backbone_ood_column(backbone: str) -> str:
    return f"{backbone}_ood_score"


def probs_schema(classes: list[str]) -> pa.Schema:
    """RUN/models/<backbone>/{val,test}_probs.parquet: one row per image of the split.

    `ood_score` is the backbone's feature-space distance to the training data (models.feature_distance);
    higher means less like the training images. `mask_fraction` is the share of pixels the HSV
    segmentation kept (an empty field or a red-cells-only field keeps almost none). `image_score` is
    the distance of the whole field's image statistics to the training fields' (models.field_stats).
    """
    fields = [pa.field("path", pa.string()), pa.field("label", pa.string())]
    fields += [pa.field(prob_column(c), pa.float32()) for c in classes]
    fields += [pa.field("ood_score", pa.float32()), pa.field("mask_fraction", pa.float32()),
               pa.field("image_score", pa.float32())]
    return pa.schema(fields)


def classify_schema(classes: list[str], backbones: list[str]) -> pa.Schema:
    """Bulk-classification rows: the Delta table DST, one current row per input `uri` (docs/schemas.md)."""
    fields = [
        pa.field("uri", pa.string(), nullable=False),   # the key: file:///abs/path or s3://bucket/key
        pa.field("path", pa.string()),                  # the same place, readable: local path or s3:// URI
        pa.field("sha256", pa.string()),
        pa.field("bytes", pa.int64()),
        pa.field("mtime_ns", pa.int64()),               # local files: st_mtime_ns when listed
        pa.field("etag", pa.string()),                  # S3 objects: ETag when listed
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("label", pa.string()),          # a class, or 'refer'; null for error rows
        pa.field("predicted_class", pa.string()),   # the ensemble's argmax, also when referred
        pa.field("refer", pa.bool_()),
        pa.field("refer_reason", pa.string()),   # why it was referred: low_confidence / unfamiliar / ...
        pa.field("confidence", pa.float32()),
    ]
    fields += [pa.field(prob_column(c), pa.float32()) for c in classes]
    fields += [pa.field(backbone_prob_column(b, c), pa.float32()) for b in backbones for c in classes]
    # The referral signals behind refer_reason: HSV mask fraction, image-statistics distance and each
    # backbone's OOD score.
    fields += [pa.field("mask_fraction", pa.float32()), pa.field("image_score", pa.float32())]
    fields += [pa.field(backbone_ood_column(b), pa.float32()) for b in backbones]
    fields += [
        pa.field("weights", WEIGHTS_TYPE),       # backbone → ensemble weight
        pa.field("gamma", pa.float32()),
        pa.field("thresholds", THRESHOLDS_TYPE),  # the unfamiliar-image thresholds in force (ReferralRule.thresholds)
        pa.field("model_sha256", pa.string()),   # sha256 of the ensemble: backbones' weights + ensemble.json
        pa.field("version", pa.string()),        # alle_dist version
        pa.field("run_id", pa.string()),
        pa.field("classified_at", pa.timestamp("us", tz="UTC")),
    ]
    return pa.schema(fields)


WEIGHTS_TYPE = pa.map_(pa.string(), pa.float32())
THRESHOLDS_TYPE = pa.map_(pa.string(), pa.float32())


# ---------------------------------------------------------------- reviews (DST/_alle_dist/reviews)

# Review labels besides the run's classes, and their words on the review page and in Label Studio.
OTHER_CELL, UNUSABLE = "other_cell", "unusable"
REVIEW_EXTRA_LABELS = {OTHER_CELL: "other cell type", UNUSABLE: "unusable image"}
# Why an image is in a review batch: the ensemble referred it, or it is in the blind audit sample of
# the images the ensemble accepted.
REFERRED, AUDIT = "referred", "audit"
REVIEW_KINDS = (REFERRED, AUDIT)
# Where a decision was read from: the review page's CSV or a Label Studio JSON export.
PAGE, LABEL_STUDIO = "page", "label_studio"


def review_labels(classes) -> tuple[str, ...]:
    """The review vocabulary of a run with these classes: each class, other_cell, unusable."""
    return (*classes, *REVIEW_EXTRA_LABELS)


# One current row per (uri, sha256): a haematologist's decision on those exact bytes. A later
# decision on the same bytes replaces it (the earlier one stays in the table's history).
REVIEWS_SCHEMA = pa.schema([
    pa.field("uri", pa.string(), nullable=False),          # the classification row's key
    pa.field("sha256", pa.string(), nullable=False),       # the bytes the reviewer saw
    pa.field("label", pa.string(), nullable=False),        # review_labels(classes)
    pa.field("reviewer", pa.string(), nullable=False),
    pa.field("note", pa.string()),
    pa.field("decided_at", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("batch_id", pa.string(), nullable=False),     # DST/_alle_dist/batches/<batch_id>.json
    pa.field("kind", pa.string(), nullable=False),         # REVIEW_KINDS
    pa.field("model_sha256", pa.string()),                 # the classification row at batch time:
    pa.field("model_label", pa.string()),                  #   the label it gave (a class or 'refer'),
    pa.field("predicted_class", pa.string()),              #   the ensemble's argmax,
    pa.field("refer_reason", pa.string()),                 #   why it was referred
    pa.field("imported_at", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("source", pa.string(), nullable=False),       # PAGE or LABEL_STUDIO
])
