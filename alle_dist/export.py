"""After training: the best model's outputs that the later stages read, written beside it.

Runs the published model over the un-augmented train / val / test splits (Ray Data, one predictor
actor), fits the referral statistics on the train split (network features: alle_dist.ood; image
statistics of the original fields: alle_dist.imagestats) into `ood.safetensors`, and writes
`val_probs.parquet` and `test_probs.parquet` (schema.probs_schema). The test file is written last:
its presence marks a finished backbone (train.DONE_FILES).
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from . import imagestats, modelio, ood, schema, storage


def probs_table(recs: list[dict], classes: list[str], ood_scores: np.ndarray, image_scores: np.ndarray) -> pa.Table:
    probs = np.stack([r["probs"] for r in recs]).astype(np.float32) if recs else np.zeros((0, len(classes)))
    cols = {"path": [str(r["path"]) for r in recs], "label": [classes[int(r["label"])] for r in recs]}
    cols.update({schema.prob_column(c): probs[:, j] for j, c in enumerate(classes)})
    cols["ood_score"] = np.asarray(ood_scores, np.float32)
    cols["mask_fraction"] = np.asarray([r["mask_fraction"] for r in recs], np.float32)
    cols["image_score"] = np.asarray(image_scores, np.float32)
    return pa.Table.from_pydict(cols, schema=schema.probs_schema(classes)).sort_by("path")


def export_splits(out: str, splits: dict[str, pa.Table], source: str, classes: list[str], seg) -> dict:
    """The best model in `out` over the un-augmented splits: the referral statistics (fitted on the
    train split) and the val / test probability files; returns the model's updated meta."""
    from . import augment
    from .predict import predict_dataset
    from .runtime import cluster_cpus, cluster_gpus

    meta = modelio.read_meta(out)
    where = {p: s for s, rows in splits.items() for p in rows.column("path").to_pylist()}
    ds = augment.image_dataset(pa.concat_tables(splits.values()), source, classes, image_size=meta["image_size"],
                               seg=seg, aug=None, seed=None, with_stats=True)
    gpus = min(cluster_gpus(), 1)  # inference is cheap next to training: one GPU actor is enough
    recs = predict_dataset(ds, out, gpus=gpus, cpu_actors=max(1, min(2, cluster_cpus() // 2)),
                           batch_size=64).take_all()
    by = {s: sorted((r for r in recs if where[str(r["path"])] == s), key=lambda r: str(r["path"])) for s in splits}
    feats = {s: np.stack([r["features"] for r in rs]) for s, rs in by.items() if rs}
    image = {s: np.stack([r["image_stats"] for r in rs]) for s, rs in by.items() if rs}
    stats = ood.fit(feats[schema.TRAIN], np.array([int(r["label"]) for r in by[schema.TRAIN]]), len(classes))
    stats.update(imagestats.fit(image[schema.TRAIN]))   # one file: both are fitted on the training split
    meta = modelio.save_ood(out, stats)
    for split in (schema.VAL, schema.TEST):  # test last: its file marks a finished backbone
        none = np.zeros(0, np.float32)
        scores = ood.score(feats[split], stats) if split in feats else none
        image_scores = imagestats.score(image[split], stats) if split in image else none
        storage.write_parquet(probs_table(by[split], classes, scores, image_scores),
                              storage.join(out, f"{split}_probs.parquet"))
    return meta
