"""The whole review loop on the shared real images, through the command line: prepare a run on folder A,
classify folder B into DST, build a batch with a blind audit sample, a simulated haematologist labels
it from B's true class folders, import, audit — whose interval for the error rate among accepted
images must contain the true error rate of DST's accepted rows, counted directly from the table —
then `prepare --reviews` adds the reviewed images to RUN's manifest and the now stale models are
refused by classify with one line.

The models are helpers_run's tiny untrained ones, recorded as trained on RUN's manifest: the loop's
bookkeeping is what is tested here, not the models (training is covered in tests/integration/train).
"""
from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

import helpers_review as H
from alle_dist import schema
from alle_dist.cli import main
from alle_dist.prepare.manifest import recorded_id
from alle_dist.rundir import RunDir
from helpers_run import CLASSES, make_run_dir

pytestmark = pytest.mark.ray


def _copy(leukemia_dir, dst, start: int, per_class: int) -> None:
    for c in CLASSES:
        files = sorted((leukemia_dir / "Original" / c).glob("*.jpg"))[start:start + per_class]
        (dst / c).mkdir(parents=True)
        for f in files:
            shutil.copy(f, dst / c / f.name)


def test_review_loop_on_real_images(ray_local, leukemia_dir, tmp_path, capsys):
    a, b, run, dst = tmp_path / "a", tmp_path / "b", tmp_path / "run", tmp_path / "dst"
    _copy(leukemia_dir, a, 0, 8)
    _copy(leukemia_dir, b, 40, 8)
    assert main(["prepare", "--data", str(a), "--run-dir", str(run)]) == 0
    make_run_dir(run, image_size=64, manifest_id=recorded_id(RunDir(str(run))))
    H.half_referred(str(run), str(b))
    assert H.classify(run, b, dst) == 0

    assert main(["review", "build", "--table", str(dst), "--output", str(tmp_path / "batch"), "--audit", "10",
                 "--seed", "3"]) == 0
    doc = H.batch(tmp_path / "batch")
    assert sum(it["kind"] == "audit" for it in doc["items"]) == 10
    H.decisions_csv(tmp_path / "d.csv", doc)                     # the true class folder of each image
    assert main(["review", "import", "--table", str(dst), "--decisions", str(tmp_path / "d.csv")]) == 0
    assert main(["audit", "--table", str(dst), "--output", str(tmp_path / "audit")]) == 0
    audit = json.loads((tmp_path / "audit" / "audit.json").read_text())

    rows = DeltaTable(str(dst)).to_pyarrow_table(columns=["path", "label", "refer", "status"]).to_pylist()
    accepted = [r for r in rows if r["status"] == schema.OK and not r["refer"]]
    true_rate = sum(r["label"] != r["path"].split("/")[-2] for r in accepted) / len(accepted)
    acc = audit["accepted"]
    assert acc["n"] == 10 and acc["low"] <= true_rate <= acc["high"], (acc, true_rate)
    assert audit["referred"]["n"] == sum(it["kind"] == "referred" for it in doc["items"])
    assert audit["runs"] and audit["runs"][0]["n"] == len(rows)

    capsys.readouterr()
    assert main(["prepare", "--data", str(a), "--run-dir", str(run), "--reviews", str(dst)]) == 0
    out = capsys.readouterr().out
    manifest = pq.read_table(RunDir(str(run)).manifest).to_pylist()
    reviewed = [r for r in manifest if r["source"] == schema.REVIEW]
    assert len(reviewed) == len(doc["items"]) and all(r["reviewer"] == "Dr Sim" for r in reviewed)
    assert {r["path"] for r in reviewed} == {it["uri"] for it in doc["items"]}
    assert all(r["label"] == r["path"].split("/")[-2] and r["split"] in schema.SPLITS for r in reviewed)
    assert f"{len(reviewed)} reviewed image(s) from {dst}" in out
    assert "refused until retrained: `alle-dist train --run-dir" in out and "--retrain" in out
    assert list((run / "manifests").glob("*.parquet"))                    # the old manifest is kept

    assert H.classify(run, b, dst) == 2                                   # lineage: the models are stale now
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another split" in err[0] and "retrain" in err[0]
