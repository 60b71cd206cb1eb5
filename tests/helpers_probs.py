"""Test helpers: hand-made cached probabilities (`RUN/models/<b>/{val,test}_probs.parquet`), meta.json
and a manifest with real image files, written through the project's own schema and storage.

The constructed tune case (`tune_case`) has a known best among the paper's grid: weights (0.7, 0.3)
at γ = 0.7, the paper's reported best (A = densenet201, the first weight).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
from alle_dist import schema
from alle_dist.ensemble.lineage import snapshot
from alle_dist.io import storage
from alle_dist.models import persistence
from alle_dist.models import provenance
from alle_dist.prepare.manifest import manifest_id, recorded_id
from alle_dist.rundir import RunDir
from alle_dist.testing.synthetic import CLASSES  # the paper's four classes, one home


BACKBONES = ("densenet201", "resnet50")


def onehot_mix(correct: int, wrong: int, p_correct: float, c: int = 4) -> np.ndarray:
    v = np.zeros(c)
    v[correct] += p_correct
    v[wrong] += 1.0 - p_correct
    return v


def tune_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(y, probs_A, probs_B). w = weight of A. At γ = 0.7:
    T0 (40 rows) both right: always right.  T1 (4): A 0.9 wrong, B right: right only if w ≤ 1/3.
    T2 (10): A right, B 0.9 wrong: confident-right only if 0.1 + 0.9w ≥ γ → w ≥ 2/3.
    T3 (5): A 0.6 right / 0.4 wrong, B right: confident-right only if 1 - 0.4w ≥ γ → w ≤ 3/4.
    So the best is w ∈ [2/3, 3/4] at γ = 0.7: 55 / 59 right; on the paper's grid only (0.7, 0.3)."""
    rows = []
    for i in range(40):
        c = i % 4
        rows.append((c, onehot_mix(c, (c + 1) % 4, 0.97), onehot_mix(c, (c + 2) % 4, 0.95)))
    for i in range(4):
        c = i % 4
        rows.append((c, onehot_mix(c, (c + 1) % 4, 0.1), onehot_mix(c, c, 1.0)))
    for i in range(10):
        c = i % 4
        rows.append((c, onehot_mix(c, c, 1.0), onehot_mix(c, (c + 1) % 4, 0.1)))
    for i in range(5):
        c = i % 4
        rows.append((c, onehot_mix(c, (c + 3) % 4, 0.6), onehot_mix(c, c, 1.0)))
    y = np.array([r[0] for r in rows])
    return y, np.stack([r[1] for r in rows]), np.stack([r[2] for r in rows])


def write_probs(run_dir, backbone: str, split: str, paths, y, probs, ood=None, mask=None,
                classes=CLASSES, meta: bool = True, image=None) -> str:
    """RUN/models/<backbone>/<split>_probs.parquet with schema.probs_schema (+ meta.json)."""
    n = len(paths)
    cols = {"path": list(paths), "label": [classes[i] for i in y]}
    for j, c in enumerate(classes):
        cols[schema.prob_column(c)] = np.asarray(probs)[:, j].astype(np.float32)
    cols["ood_score"] = (np.zeros(n) if ood is None else np.asarray(ood)).astype(np.float32)
    cols["mask_fraction"] = (np.full(n, 0.2) if mask is None else np.asarray(mask)).astype(np.float32)
    cols["image_score"] = (np.zeros(n) if image is None else np.asarray(image)).astype(np.float32)
    table = pa.table(cols, schema=schema.probs_schema(list(classes)))
    out = RunDir(str(run_dir)).model(backbone)
    if meta:   # a model folder without weights: what the stages after training read of it, with lineage
        write_model_meta(run_dir, backbone, classes)
    storage.write_parquet(table.replace_schema_metadata(provenance.outputs_metadata(out)), out.probs(split))
    return out.probs(split)


def write_model_meta(run_dir, backbone: str, classes=CLASSES) -> dict:
    """meta.json through models.persistence.write_meta, trained on RUN's manifest when there is one, beside a
    stand-in weights file (one tensor: the stages after training hash a model's files, they don't run it)."""
    import torch

    run = RunDir(str(run_dir))
    manifest = recorded_id(run) if storage.exists(run.manifest) else None
    root = run.model(backbone).root
    sha = persistence.save_tensors(storage.join(root, persistence.WEIGHTS_FILE), {"stand_in": torch.zeros(1)})
    return persistence.write_meta(root, {
        "architecture": backbone, "classes": list(classes), "image_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3,
        "sha256": sha, "lineage": {"manifest": manifest}})


def write_manifest(run_dir, source: Path, rows: list[dict], classes=CLASSES, seed: int = 0) -> None:
    """RUN/manifest.parquet (schema.MANIFEST_SCHEMA) for rows {path, label, split}; files must exist."""
    full = [{"path": r["path"], "label": r["label"], "sha256": None, "bytes": None, "dup_group": -1,
             "phash": None, "split_group": -1, "group_reason": None,
             "split": r["split"], "status": schema.OK, "error": None} for r in rows]
    table = pa.Table.from_pylist(full, schema=schema.MANIFEST_SCHEMA)
    meta = {schema.META_SOURCE: str(source).encode(), schema.META_CLASSES: json.dumps(list(classes)).encode(),
            schema.META_SEED: str(seed).encode()}
    table = table.replace_schema_metadata(meta)
    table = table.replace_schema_metadata({**meta, schema.META_MANIFEST_ID: manifest_id(table).encode()})
    storage.write_parquet(table, RunDir(str(run_dir)).manifest)


def corrections_case(tmp: Path):
    """A run with test probabilities of two backbones, ensemble.json, a manifest and real image files.

    Rows (y, densenet201 → resnet50 → ensemble at weights 0.5/0.5, γ 0.5):
      Benign/t0.jpg   0: 0, 0 → 0            nothing
      Early/t1.jpg    1: 2 (0.6), 1 → 1      fn_to_tp + fp_to_tn of densenet201
      Pre/t2.jpg      2: 2, 3 (0.6) → 2      fn_to_tp + fp_to_tn of resnet50
      Pro/t3.jpg      3: 3 (0.6), 0 → 0      broken (densenet201 was right)
      Benign/t4.jpg   0: 1, 1 → 1            both wrong: nothing
      ../../evil.jpg  1: 0 (0.6), 1 → 1      fn_to_tp + fp_to_tn of densenet201, path traversal name
      Pre/t6.jpg      2: 2, 2 → refer        unfamiliar (ood_score 10 > 5): referred, not a correction
    Returns (run_dir, source_dir, paths)."""
    from alle_dist.ensemble import weighted
    from PIL import Image

    run, src = tmp / "run", tmp / "a" / "b" / "src"
    rows = [(0, (0, 0, 1.0), (0, 0, 1.0)), (1, (2, 1, 0.6), (1, 1, 1.0)), (2, (2, 2, 1.0), (3, 2, 0.6)),
            (3, (3, 0, 0.6), (0, 0, 1.0)), (0, (1, 1, 1.0), (1, 1, 1.0)), (1, (0, 1, 0.6), (1, 1, 1.0)),
            (2, (2, 2, 1.0), (2, 2, 1.0))]
    paths = ["Benign/t0.jpg", "Early/t1.jpg", "Pre/t2.jpg", "Pro/t3.jpg", "Benign/t4.jpg", "../../evil.jpg", "Pre/t6.jpg"]
    y = np.array([r[0] for r in rows])
    pa_ = np.stack([onehot_mix(*r[1]) for r in rows])
    pb = np.stack([onehot_mix(*r[2]) for r in rows])
    ood = np.r_[np.ones(6), 10.0]
    rng = np.random.default_rng(0)
    for i, rel in enumerate(paths):
        f = src / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(f, format="JPEG")
    write_manifest(run, src, [{"path": p, "label": CLASSES[c], "split": "test"} for p, c in zip(paths, y)])
    for b, p in zip(BACKBONES, (pa_, pb)):
        write_probs(run, b, "test", paths, y, p, ood=ood)
        write_probs(run, b, "val", paths, y, p, ood=ood)
    spec = weighted.EnsembleSpec(BACKBONES, CLASSES, (0.5, 0.5), 0.5, (1.0, 1.0),
                                 {"ood_score": {"densenet201": 5.0, "resnet50": 5.0}})
    weighted.save_spec(str(run), spec, objective="test", lineage=snapshot(RunDir(str(run)), BACKBONES))
    return run, src, paths
