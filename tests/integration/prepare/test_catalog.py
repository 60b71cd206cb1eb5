"""prepare: listing, decode checks, duplicate groups and the leakage-free split; local and S3."""
from __future__ import annotations

import json
import shutil
import socket
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
from alle_dist import errors
from alle_dist import schema
from alle_dist.config import PrepareConfig
from alle_dist.errors import UsageError
from alle_dist.io import storage
from alle_dist.io.images import encode_jpeg
from alle_dist.prepare import catalog
from alle_dist.prepare import manifest as prep_manifest
from alle_dist.prepare import split as prep_split
from alle_dist.prepare import stage as prep_stage
from alle_dist.testing.synthetic import CLASSES, generate


from conftest import upload_dir

README_COUNTS = {"Benign": 428, "Early": 831, "Pre": 833, "Pro": 681}


def _rows(n_per_class: dict[str, int], dup_every: int = 0) -> list[dict]:
    """Fake ok rows; with dup_every, every dup_every-th file of a class repeats the previous hash."""
    rows = []
    for cls, n in n_per_class.items():
        for i in range(n):
            h = f"{cls}{i - 1}" if dup_every and i % dup_every == 0 and i else f"{cls}{i}"
            rows.append({"path": f"{cls}/{i:04d}.jpg", "label": cls, "sha256": h, "bytes": 1,
                         "status": schema.OK, "error": None})
    return rows


def _corrupt_files(root: Path) -> dict[str, str]:
    """Bad files under root/Benign; returns {relative path: expected reason fragment}."""
    good = encode_jpeg(np.full((32, 32, 3), 200, "uint8"))
    bad = {"Benign/zero.jpg": b"", "Benign/truncated.jpg": good[: len(good) // 2],
           "Benign/notes.jpg": b"this is not an image\n" * 10, "Benign/badheader.bmp": b"BM" + b"\0" * 40}
    for rel, data in bad.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return {"Benign/zero.jpg": "empty file", "Benign/truncated.jpg": "truncated",
            "Benign/notes.jpg": "not an image", "Benign/badheader.bmp": "unreadable header"}


# ---------------------------------------------------------------- pure core

def test_split_is_stratified_deterministic_and_keeps_duplicates_together():
    rows = _rows({"A": 200, "B": 120, "C": 61}, dup_every=7)
    groups = prep_split.dup_groups(rows)
    assert len({g for g in groups if g >= 0}) == 200 // 7 + 120 // 7 + 60 // 7
    split = prep_split.assign_splits(rows, groups, seed=3, test_fraction=0.35, val_fraction=0.1)
    assert split == prep_split.assign_splits(rows, groups, seed=3, test_fraction=0.35, val_fraction=0.1)
    assert split != prep_split.assign_splits(rows, groups, seed=4, test_fraction=0.35, val_fraction=0.1)
    for cls, n in (("A", 200), ("B", 120), ("C", 61)):
        c = Counter(s for r, s in zip(rows, split) if r["label"] == cls)
        assert abs(c["test"] / n - 0.35) <= 0.01 + 1 / n
        assert abs(c["val"] / (c["train"] + c["val"]) - 0.1) <= 0.01 + 2 / n
    by_group: dict[int, set] = {}
    for g, s in zip(groups, split):
        if g >= 0:
            by_group.setdefault(g, set()).add(s)
    assert all(len(s) == 1 for s in by_group.values())


def test_check_file_turns_bad_files_into_error_rows(tmp_path):
    expected = _corrupt_files(tmp_path)
    for rel, reason in expected.items():
        row = catalog.check_file(str(tmp_path), rel, "Benign")
        assert row["status"] == schema.ERROR and reason.lower() in row["error"].lower(), row
    gone = catalog.check_file(str(tmp_path), "Benign/deleted-after-listing.jpg", "Benign")
    assert gone["status"] == schema.ERROR and gone["error"].startswith("unreadable")
    assert gone["sha256"] is None


def test_clear_errors_for_empty_source_one_class_and_missing_bucket(tmp_path, s3_server):
    (tmp_path / "empty").mkdir()
    with pytest.raises(errors.StorageError, match=r"empty: no image files .* <class>/<image>"):
        catalog.list_labelled(str(tmp_path / "empty"))
    generate(str(tmp_path / "one"), n_per_class=1)
    for cls in CLASSES[1:]:
        shutil.rmtree(tmp_path / "one" / cls)
    with pytest.raises(UsageError, match=r"one: found 1 class folder\(s\) \(Benign\); need at least two"):
        catalog.list_labelled(str(tmp_path / "one"))
    with pytest.raises(errors.StorageError, match=r"s3://no-such-bucket-x/data: no such folder .* bucket name"):
        catalog.list_labelled("s3://no-such-bucket-x/data")


def test_an_s3_endpoint_nobody_listens_on_fails_in_seconds(monkeypatch):
    with socket.socket() as s:                  # a port that was free a moment ago: nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    t0 = time.perf_counter()
    with pytest.raises(errors.StorageError, match=rf"S3 endpoint http://127.0.0.1:{port} is unreachable .* AWS_ENDPOINT_URL"):
        catalog.list_labelled("s3://any-bucket/data")
    assert time.perf_counter() - t0 < 15      # not the ~90 s of ten S3 retries


def prepare(*argv: str) -> int:
    """`alle-dist prepare ARGV` through the stage's own parser (as ray_jobs/prepare.py runs it)."""
    from alle_dist.cli import get_args_parser, run_stage

    return run_stage("prepare", get_args_parser("prepare").parse_args(list(argv)))


def test_cli_error_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert prepare("--data", str(tmp_path / "empty"), "--run-dir", str(tmp_path / "run")) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("alle-dist prepare: error:") and "no image files" in err


def test_public_dataset_root_catalogues_originals_only(tmp_path):
    generate(str(tmp_path / "Original"), n_per_class=1)
    generate(str(tmp_path / "Segmented"), n_per_class=1)
    items = catalog.list_labelled(str(tmp_path))
    assert len(items) == 4 and all(p.startswith("Original/") for p, _ in items)
    assert sorted(c for _, c in items) == sorted(CLASSES)


# ---------------------------------------------------------------- Ray: real images, S3, CLI

@pytest.mark.ray
def test_real_manifest_counts_split_and_duplicates(ray_local, leukemia_dir):
    t = prep_stage.build_manifest(str(leukemia_dir), 0, PrepareConfig())
    assert t.num_rows == 2773 and t.schema.equals(schema.MANIFEST_SCHEMA, check_metadata=False)
    assert Counter(t.column("label").to_pylist()) == README_COUNTS
    assert set(t.column("status").to_pylist()) == {schema.OK}
    assert json.loads(t.schema.metadata[schema.META_CLASSES]) == sorted(README_COUNTS)
    rows = t.to_pylist()
    for cls, n in README_COUNTS.items():
        n_test = sum(1 for r in rows if r["label"] == cls and r["split"] == schema.TEST)
        assert abs(n_test / n - 0.35) <= 0.01
    sides: dict[int, set] = {}
    for r in rows:
        if r["dup_group"] >= 0:
            sides.setdefault(r["dup_group"], set()).add(r["split"])
    assert len(sides) == 36 and all(len(s) == 1 for s in sides.values())
    # Same seed, same split (recomputed from the same rows); another seed moves files.
    again = prep_manifest.manifest_table(rows, str(leukemia_dir), 0, PrepareConfig())
    assert again.column("split").equals(t.column("split"))
    other = prep_manifest.manifest_table(rows, str(leukemia_dir), 1, PrepareConfig())
    assert not other.column("split").equals(t.column("split"))
    # Exact AND perceptual near-duplicate groups (docs/near-duplicates.md: radius 10, 83 groups) never
    # straddle a split; the manifest's identity follows its content.
    units: dict[int, set] = {}
    for r in rows:
        if r["split_group"] >= 0:
            units.setdefault(r["split_group"], set()).add(r["split"])
    assert len(units) == 83 and all(len(s) == 1 for s in units.values())
    assert Counter(r["group_reason"] for r in rows if r["group_reason"]) == {"exact": 72, "near": 95}
    ident = schema.META_MANIFEST_ID
    assert again.schema.metadata[ident] == t.schema.metadata[ident] != other.schema.metadata[ident]


@pytest.mark.ray
def test_s3_source_gives_the_same_manifest_as_local(ray_local, leukemia_dir, s3_bucket, tmp_path, monkeypatch):
    # A subset of the real images (10 per class, for speed) plus the corrupt files.
    local = tmp_path / "src"
    for cls in README_COUNTS:
        (local / "Original" / cls).mkdir(parents=True)
        for f in sorted((leukemia_dir / "Original" / cls).glob("*.jpg"))[:10]:
            shutil.copy(f, local / "Original" / cls / f.name)
    expected_errors = _corrupt_files(local / "Original")
    upload_dir(local, s3_bucket, "smears")

    src_s3, run_s3 = f"s3://{s3_bucket}/smears", f"s3://{s3_bucket}/runs/r1"
    assert prepare("--data", src_s3, "--run-dir", run_s3, "--seed", "5") == 0
    monkeypatch.chdir(tmp_path)   # a relative SRC is recorded absolute: later stages run from anywhere
    assert prepare("--data", "src", "--run-dir", str(tmp_path / "run"), "--seed", "5") == 0
    t_s3, source, classes = prep_manifest.read_manifest(run_s3)
    t_local, local_source, _ = prep_manifest.read_manifest(str(tmp_path / "run"))
    assert local_source == str(local)
    assert source == src_s3 and classes == sorted(README_COUNTS)
    assert t_s3.num_rows == 44 and t_s3.equals(t_local)
    errors = t_s3.filter(pc.equal(t_s3.column("status"), schema.ERROR)).to_pylist()
    assert {r["path"]: r["split"] for r in errors} == {f"Original/{p}": None for p in expected_errors}
    assert storage.exists(f"{run_s3}/prepare_config.yaml")
    assert catalog.image_uri(source, "Original/Pro/x.jpg") == f"{src_s3}/Original/Pro/x.jpg"
