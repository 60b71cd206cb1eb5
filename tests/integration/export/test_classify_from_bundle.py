"""classify --model BUNDLE on the real local Ray: a run's bundle alone (the run directory deleted)
classifies a folder into rows identical to classifying it from the run, model_sha256 included.
(The demo-sized version with trained members and MLflow is test_bundle_roundtrip.py, slow tier.)"""
from __future__ import annotations

import shutil

import pytest

from alle_dist import cli
from helpers_run import make_run_dir, write_images

PER_RUN = ("run_id", "classified_at")   # differ between two classify runs by design


def _rows(dst) -> dict:
    from deltalake import DeltaTable

    table = DeltaTable(str(dst)).to_pyarrow_table()
    return {r["uri"]: {k: v for k, v in r.items() if k not in PER_RUN} for r in table.to_pylist()}


@pytest.mark.ray
def test_classify_from_the_bundle_alone_gives_the_rows_of_its_run(ray_local, tmp_path, capsys):
    run, images = make_run_dir(tmp_path / "run"), tmp_path / "in"
    write_images(images, 8)
    assert cli.main(["classify", "--run-dir", str(run), "--input", str(images), "--output", str(tmp_path / "a")]) == 0
    assert cli.main(["export", "--run-dir", str(run), "--output", str(tmp_path / "bundle")]) == 0
    shutil.rmtree(run)
    code = cli.main(["classify", "--model", str(tmp_path / "bundle"), "--input", str(images),
                     "--output", str(tmp_path / "b")])
    assert code == 0, capsys.readouterr().err
    before, after = _rows(tmp_path / "a"), _rows(tmp_path / "b")
    assert len(after) == 8 and after == before
    assert len({r["model_sha256"] for r in after.values()}) == 1
