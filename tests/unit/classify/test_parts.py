"""classify_io: planning, per-image preparation and bad input, the exactly-once writer and manifest,
reconciliation. Pure unit tests: no Ray, real files."""
from __future__ import annotations

import hashlib

import pyarrow as pa
import pytest
from alle_dist import errors
from alle_dist import schema
from alle_dist.classify import parts as cls_parts
from alle_dist.config import SegmentConfig
from alle_dist.io import storage
from alle_dist.models import inference

from helpers_run import write_bad_inputs, write_images


def _spec(src, size=32):
    return inference.PrepSpec(src=str(src), image_size=size, segment=SegmentConfig())


def test_plan_skips_on_path_and_size_and_carries_the_sha_to_confirm():
    listing = [("a.jpg", 10), ("b.jpg", 20), ("c.jpg", 30)]
    done = {"a.jpg": (10, "sha-a"), "b.jpg": (21, "sha-b")}     # b changed size: classify again
    todo, skipped = cls_parts.plan(listing, done, verify_sha256=True)
    assert todo.column("path").to_pylist() == ["a.jpg", "b.jpg", "c.jpg"] and skipped == []
    assert todo.column("done_sha256").to_pylist() == ["sha-a", None, None]
    todo, skipped = cls_parts.plan(listing, done, verify_sha256=False)
    assert todo.column("path").to_pylist() == ["b.jpg", "c.jpg"] and skipped == ["a.jpg"]


def test_every_bad_input_is_an_error_row_with_its_reason(tmp_path):
    expected = write_bad_inputs(tmp_path)
    spec = _spec(tmp_path)
    for rel, err in expected.items():
        row = inference.prepare_one(spec, rel, (tmp_path / rel).stat().st_size, None)
        if err is None:   # PNG / TIFF / greyscale / CMYK / 16-bit: decoded and classified
            assert row["status"] == schema.OK, (rel, row["error"])
            assert len(row["image"]) == 32 * 32 * 3 and 0.0 <= row["mask_fraction"] <= 1.0
        else:
            assert row["status"] == schema.ERROR and err in row["error"].lower(), (rel, row["error"])
            assert row["image"] == b""
    gone = inference.prepare_one(spec, "was/here.jpg", 123, None)       # listed, then deleted
    assert gone["status"] == schema.ERROR and "vanished" in gone["error"] and gone["sha256"] is None


def test_huge_header_is_refused_without_decoding(tmp_path):
    (tmp_path / "big.png").write_bytes(__import__("helpers_run").huge_png_header(40000, 40000))
    row = inference.prepare_one(_spec(tmp_path), "big.png", 0, None)
    assert "40000x40000" in row["error"] and "before decoding" in row["error"]


def test_read_skips_an_input_only_when_its_sha256_matches(tmp_path):
    rel = write_images(tmp_path, 1)[0]
    data = (tmp_path / rel).read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    spec = _spec(tmp_path)
    assert inference.prepare_one(spec, rel, len(data), sha)["status"] == inference.SKIP
    row = inference.prepare_one(spec, rel, len(data), "0" * 64)        # same size, other content
    assert row["status"] == schema.OK and row["sha256"] == sha


def test_prepare_batch_resizes_to_the_model_input_and_keeps_order(tmp_path):
    rels = write_images(tmp_path, 3, size=40)
    todo, _ = cls_parts.plan([(r, 1) for r in rels] + [("missing.jpg", 5)], {})
    out = inference.prepare_batch(todo, _spec(tmp_path, size=24))
    assert out.column("path").to_pylist() == rels + ["missing.jpg"]
    imgs = inference.images_of(out, 24)
    assert imgs.shape == (3, 24, 24, 3) and imgs.dtype.name == "uint8" and imgs.flags.writeable


def _rows(paths, run_id="r"):
    s = schema.classify_schema(["A", "B"], ["m"])
    n = len(paths)
    cols = {f.name: pa.nulls(n, f.type) for f in s}
    cols.update(path=pa.array(paths), sha256=pa.array([f"h-{p}" for p in paths]),
                status=pa.array([schema.OK] * n), run_id=pa.array([run_id] * n))
    return pa.table(cols, schema=s), s


def test_writer_publishes_complete_parts_and_readers_trust_only_the_manifest(tmp_path):
    dst = str(tmp_path / "dst")
    assert cls_parts.read_results(dst).num_rows == 0                 # nothing published yet
    manifest = cls_parts.load_manifest(dst)
    run = {"run_id": "run1"}
    manifest["runs"].append(run)
    table, s = _rows([f"p{i}.jpg" for i in range(5)])
    w = cls_parts.PartWriter(dst, manifest, run, s, rows_per_file=2)
    w.add(table.slice(0, 3))                      # 3 ≥ 2: one part of 3 rows published
    assert cls_parts.read_results(dst).num_rows == 3
    w.add(table.slice(3, 2))
    w.flush()
    names = [f["name"] for f in cls_parts.load_manifest(dst)["files"]]
    assert names == ["part-run1-00000.parquet", "part-run1-00001.parquet"] and run["rows_written"] == 5
    # An orphan part (a crash between writing it and the manifest) is never read.
    orphan, _ = _rows(["ghost.jpg"])
    storage.write_parquet(orphan, str(tmp_path / "dst" / "part-crashed-00000.parquet"))
    got = cls_parts.read_results(dst)
    assert sorted(got.column("path").to_pylist()) == [f"p{i}.jpg" for i in range(5)]
    assert cls_parts.done_index(dst)["p0.jpg"] == (None, "h-p0.jpg")


def test_a_foreign_manifest_is_refused(tmp_path):
    (tmp_path / cls_parts.MANIFEST_NAME).write_text('{"files": []}')
    with pytest.raises(errors.StorageError, match="another --output"):
        cls_parts.load_manifest(str(tmp_path))


def test_reconcile_names_missing_extra_and_duplicated_inputs():
    published = pa.table({"path": ["a", "b", "b"], "sha256": ["1", "2", "2"]})
    assert cls_parts.reconcile({"a"}, {"a"}, pa.table({"path": ["a"], "sha256": ["1"]})) == []
    problems = cls_parts.reconcile({"a", "b", "c"}, {"a", "b", "z"}, published)
    text = " | ".join(problems)
    assert "never came back from the pipeline: c" in text
    assert "were not listed: z" in text
    assert "have no published row: c" in text
    assert "published more than once: b" in text
