"""Reviewed images in the manifest (issue 20): a manifest from before the review columns keeps its
identity (its models stay valid), reviewed rows carry their URI, reviewer and batch and go through
the same grouping and split, a reviewed image whose bytes changed is an error row, and every reader of
a manifest path finds a reviewed image's URI (catalog.image_uri)."""
from __future__ import annotations

import datetime as dt
import hashlib
import json

import pyarrow as pa

from alle_dist import schema
from alle_dist.config import PrepareConfig
from alle_dist.io import storage
from alle_dist.prepare import catalog
from alle_dist.prepare import manifest as prep_manifest
from alle_dist.prepare.stage import summary
from alle_dist.rundir import RunDir
from alle_dist.testing.synthetic import generate

OLD_COLUMNS = [f for f in schema.MANIFEST_SCHEMA if f.name not in schema.MANIFEST_REVIEW_COLUMNS]


def _rows(src, items):
    return [catalog.check_file(str(src), rel, label) for rel, label in items]


def test_a_manifest_written_before_the_review_columns_keeps_its_identity(tmp_path):
    src = tmp_path / "src"
    generate(str(src), n_per_class=4, size=64)
    new = prep_manifest.manifest_table(_rows(src, catalog.list_labelled(str(src))), str(src), 0, PrepareConfig())
    meta = dict(new.schema.metadata)
    old = new.select([f.name for f in OLD_COLUMNS])
    # the old code's identity: the same rows, hashed over the old columns only
    h = hashlib.sha256()
    for key in (schema.META_SOURCE, schema.META_CLASSES, schema.META_SEED, schema.META_NEAR_RADIUS):
        h.update(key + b"=" + meta.get(key, b"") + b"\n")
    for row in zip(*(old.column(f.name).to_pylist() for f in OLD_COLUMNS)):
        h.update(json.dumps(row, separators=(",", ":")).encode() + b"\n")
    assert prep_manifest.manifest_id(old) == prep_manifest.manifest_id(new) == h.hexdigest()
    run = RunDir(str(tmp_path / "run"))
    storage.write_parquet(old.replace_schema_metadata(meta), run.manifest)
    table, _, _ = prep_manifest.read_manifest(run)           # identity checked; the new columns read as null
    assert table.column("source").null_count == table.num_rows == 16


def test_reviewed_images_join_with_their_uri_reviewer_and_batch(tmp_path):
    src, elsewhere = tmp_path / "src", tmp_path / "archive"
    generate(str(src), n_per_class=6, size=64)
    generate(str(elsewhere), n_per_class=2, size=64, seed=9)
    files = sorted(elsewhere.rglob("*.jpg"))
    changed = files[1]
    reviews = pa.Table.from_pylist([
        {"uri": storage.path_to_uri(str(f)), "sha256": hashlib.sha256(f.read_bytes()).hexdigest(), "label": lab,
         "reviewer": "Dr A", "note": None, "decided_at": dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
         "batch_id": "b1", "kind": "referred", "model_sha256": "m", "model_label": "refer", "predicted_class": "Pre",
         "refer_reason": "low_confidence", "imported_at": dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc), "source": "page"}
        for f, lab in zip(files, ["Pre", "Pro", "other_cell", "Early", "unusable", "Blast", "Benign", "Pre"])],
        schema=schema.REVIEWS_SCHEMA)
    items, left_out = catalog.review_items(reviews, ["Benign", "Early", "Pre", "Pro"])
    assert left_out == {"other_cell": 1, "unusable": 1, "Blast": 1} and len(items) == 5
    changed.write_bytes(changed.read_bytes() + b"\0")        # after the review: not the bytes reviewed
    rows = _rows(src, catalog.list_labelled(str(src)))
    for it in items:
        row = catalog.check_file(str(src), it["path"], it["label"], it[catalog.REVIEWED])
        rows.append({**row, **{k: it[k] for k in schema.MANIFEST_REVIEW_COLUMNS}})
    table = prep_manifest.manifest_table(rows, str(src), 0, PrepareConfig())
    mine = [r for r in table.to_pylist() if r["source"] == schema.REVIEW]
    assert len(mine) == 5 and all(r["path"].startswith("file://") and r["reviewer"] == "Dr A" for r in mine)
    bad = [r for r in mine if r["status"] == schema.ERROR]
    assert [r["path"] for r in bad] == [storage.path_to_uri(str(changed))]
    assert bad[0]["error"] == "changed since it was reviewed (sha256 differs)" and bad[0]["split"] is None
    assert all(r["split"] in schema.SPLITS for r in mine if r["status"] == schema.OK)
    assert "(5 reviewed)" in summary(table)
    without = prep_manifest.manifest_table(rows[:24], str(src), 0, PrepareConfig())
    assert prep_manifest.manifest_id(table) != prep_manifest.manifest_id(without)


def test_every_reader_finds_a_manifest_path_through_image_uri(tmp_path):
    assert catalog.image_uri("/data/src", "Pre/a.jpg") == "/data/src/Pre/a.jpg"
    assert catalog.image_uri("s3://b/src", "Pre/a.jpg") == "s3://b/src/Pre/a.jpg"
    assert catalog.image_uri("/data/src", "file:///archive/x%20y.jpg") == "/archive/x y.jpg"
    assert catalog.image_uri("/data/src", "s3://other/k.jpg") == "s3://other/k.jpg"
    from pathlib import Path

    train = Path(catalog.__file__).parents[1] / "train"
    for name in ("augment.py", "posttrain.py"):      # the training loader and the export read through it
        text = (train / name).read_text()
        assert "image_uri(" in text and "storage.join(self.source" not in text and "storage.join(source" not in text
