"""Labels and the manifest's identity (issue 11): the first folder is the class, identical bytes under
two labels are refused, an empty class folder is said, a manifest edited after prepare is refused."""
from __future__ import annotations

import logging
import shutil

import pyarrow as pa
import pytest

from alle_dist import schema
from alle_dist.config import PrepareConfig
from alle_dist.errors import StaleArtifactError
from alle_dist.io import storage
from alle_dist.prepare import catalog
from alle_dist.prepare import manifest as prep_manifest
from alle_dist.prepare.stage import summary
from alle_dist.rundir import RunDir
from alle_dist.testing.synthetic import generate


def _rows(src, items):
    return [catalog.check_file(str(src), rel, label) for rel, label in items]


def test_nested_subfolders_belong_to_the_first_folder(tmp_path):
    generate(str(tmp_path), n_per_class=2, size=64)
    deeper = tmp_path / "Pre" / "sub" / "deeper"
    deeper.mkdir(parents=True)
    shutil.copy(next((tmp_path / "Early").glob("*.jpg")), deeper / "moved.jpg")
    items = dict(catalog.list_labelled(str(tmp_path)))
    assert items["Pre/sub/deeper/moved.jpg"] == "Pre"
    assert set(items.values()) == {"Benign", "Early", "Pre", "Pro"}      # no class "sub" or "deeper"


def test_an_empty_class_folder_is_a_warning(tmp_path, caplog):
    generate(str(tmp_path), n_per_class=1, size=64)
    (tmp_path / "Blast").mkdir()
    with caplog.at_level(logging.WARNING, logger="alle_dist.prepare"):
        items = catalog.list_labelled(str(tmp_path))
    assert "Blast" not in {c for _, c in items}
    assert any("'Blast' holds no images" in r.getMessage() for r in caplog.records)


def test_identical_bytes_under_two_labels_are_error_rows_out_of_every_split(tmp_path):
    generate(str(tmp_path), n_per_class=6, size=64)
    same = next((tmp_path / "Benign").glob("*.jpg"))
    for cls in ("Early", "Pro"):
        shutil.copy(same, tmp_path / cls / "copy.jpg")
    table = prep_manifest.manifest_table(_rows(tmp_path, catalog.list_labelled(str(tmp_path))), str(tmp_path), 0,
                                         PrepareConfig())
    bad = [r for r in table.to_pylist() if r["error"] and r["error"].startswith("conflicting labels")]
    assert sorted(r["label"] for r in bad) == ["Benign", "Early", "Pro"]
    assert all(r["status"] == schema.ERROR and r["split"] is None for r in bad)
    assert "identical bytes under Benign, Early, Pro" in bad[0]["error"]
    assert "(3 with conflicting labels)" in summary(table)


def test_a_manifest_edited_after_prepare_is_refused(tmp_path):
    src = tmp_path / "src"
    generate(str(src), n_per_class=6, size=64)
    table = prep_manifest.manifest_table(_rows(src, catalog.list_labelled(str(src))), str(src), 0, PrepareConfig())
    run = RunDir(str(tmp_path / "run"))
    storage.write_parquet(table, run.manifest)
    assert prep_manifest.read_manifest(run)[0].num_rows == 24
    # Move one test image into train, keeping the recorded identity: what a hand edit does.
    splits = table.column("split").to_pylist()
    i = splits.index(schema.TEST)
    splits[i] = schema.TRAIN
    edited = table.set_column(table.schema.get_field_index("split"), "split", pa.array(splits, pa.string()))
    storage.write_parquet(edited.replace_schema_metadata(table.schema.metadata), run.manifest)
    with pytest.raises(StaleArtifactError, match="contents don't match its recorded identity"):
        prep_manifest.read_manifest(run)
