"""`alle-dist stress` against a direct computation: a small real run directory (tiny untrained models
saved through the project's writers, a manifest over synthetic smears), the stage's numbers per shift
and strength, and the same numbers computed image by image in this process (shift → the model input →
each Predictor → feature and image scores → ensemble.weighted.apply → the confident-error rate)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from alle_dist import config
from alle_dist.ensemble import weighted
from alle_dist.ensemble.lineage import snapshot
from alle_dist.imaging.model_input import preprocess
from alle_dist.io import storage
from alle_dist.io.images import decode_rgb
from alle_dist.models import feature_distance, field_stats, persistence, preprocessing
from alle_dist.models.predictor import Predictor
from alle_dist.prepare.manifest import recorded_id_of
from alle_dist.rundir import RunDir
from alle_dist.stress import measure
from alle_dist.stress.shifts import SHIFTS, shifted
from alle_dist.testing import synthetic
from helpers_run import make_run, make_run_dir

SHIFTS_RUN = ("stain",)          # one shift: each is a pass through the actors (~15 s here)


def _run(tmp_path: Path) -> tuple[str, str]:
    src = synthetic.generate(str(tmp_path / "smears"), n_per_class=6, seed=0, size=64)
    run = make_run(tmp_path / "run", Path(src), per_class=None)
    table = storage.read_parquet(RunDir(run).manifest)
    make_run_dir(Path(run), image_size=32, classes=synthetic.CLASSES, manifest_id=recorded_id_of(table))
    return run, src


def _direct(run: str, fields: list[np.ndarray], spec) -> tuple[np.ndarray, dict]:
    """(labels, signals) of the ensemble for decoded fields, computed here image by image."""
    probs, ood, mask, image = {}, {}, None, None
    for b in spec.backbones:
        mdir = RunDir(run).model(b).root
        prep = preprocessing.read(persistence.read_meta(mdir))
        stats = persistence.load_ood(mdir)
        inputs = [preprocess(f, prep.image_size, prep.segment, prep.working_size, prep.stain) for f in fields]
        out = Predictor(mdir)(np.stack([p.image for p in inputs]))
        probs[b], ood[b] = out["probs"], feature_distance.score(out["features"], stats)
        mask = np.array([p.mask_fraction for p in inputs])
        if image is None:   # classify scores the field with the first backbone's image statistics
            image = field_stats.score(np.stack([field_stats.features_of(p.field) for p in inputs]), stats)
    d = weighted.apply(spec, probs, ood, mask, image)
    return d.label, {"confidence": d.confidence, "image": image}


@pytest.mark.ray
def test_stress_numbers_are_the_direct_computation(tmp_path, ray_local):
    from alle_dist.stress import run as stress_run

    run, src = _run(tmp_path)
    paths, y, _, _ = stress_run.test_rows(run, None, 0)
    fields = [decode_rgb(storage.read_bytes(storage.join(src, p))) for p in paths]
    spec = weighted.load_spec(run)
    _, sig = _direct(run, fields, spec)
    # γ and the image rule placed between observed values, so both refer some images and accept others
    conf, img = np.sort(sig["confidence"]), np.sort(sig["image"])
    rule = {"image_score": float(img[-2:].mean())}
    spec = weighted.EnsembleSpec(spec.backbones, spec.classes, spec.weights, float(conf[len(conf) // 3:][:2].mean()),
                                 referral=rule)
    weighted.save_spec(run, spec, objective="test", lineage=snapshot(RunDir(run), spec.backbones))
    job_cfg = config.job_config(None, stress={"shifts": SHIFTS_RUN}, classify={"batch_size": 4})
    doc = stress_run.stress_run(run, job_cfg)

    label, _ = _direct(run, fields, spec)
    want = measure.outcome(y, label)
    assert 0 < want["coverage"] < 1 and doc["n"] == len(y) == len(paths) > 4
    assert {k: doc["unshifted"][k] for k in want} == want
    for name in SHIFTS_RUN:
        for s in SHIFTS[name].strengths:
            got = next(r for r in doc["rows"] if r["shift"] == name and r["strength"] == s)
            label, _ = _direct(run, [shifted(f, name, s, 0, i) for i, f in enumerate(fields)], spec)
            assert {k: got[k] for k in want} == measure.outcome(y, label), (name, s)
    assert not storage.exists(RunDir(run).report_file(RunDir.STRESS_IMAGES))      # the shifted images: removed
    assert doc["verdict"] == measure.verdict(doc["rows"], doc["unshifted"])
