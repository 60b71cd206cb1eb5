"""The shortcut control's outputs (`alle-dist train --control background`): after training, the control
model's predictions on the un-augmented validation and test fields with their cells removed
(imaging.model_input.control_input), written like a real model's (schema.probs_schema) into its own
folder, RUN/models/<backbone>__control-<kind>/ (rundir.RunDir.control_model).

Not models.inference: that path builds the real models' input (segmented fields) and fits the referral
statistics, neither of which a control has. The prediction runs on the driver: a control is a small
model judged once on ~1 000 test fields. Evaluate reads test_probs.parquet (evaluate.metrics.control_summary).
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from .. import schema
from ..models import persistence
from ..models.predictor import Predictor
from ..rundir import ModelDir
from . import augment
from .posttrain import probs_table, write_probs


def predict_split(predictor: Predictor, rows: pa.Table, source: str, classes: list[str], seg,
                  image_size: int, kind: str, working_size: int | None = None, stain=None) -> pa.Table:
    """One split's control images through the model → schema.probs_schema rows (no referral scores)."""
    n = rows.num_rows
    if n == 0:
        empty = pa.table({"path": pa.array([], pa.string()), "label": pa.array([], pa.int64()),
                          "mask_fraction": pa.array([], pa.float32())})
        return probs_table(empty, classes, np.zeros((0, len(classes))), np.zeros(0), np.zeros(0))
    ds = augment.image_dataset(rows, source, classes, image_size=image_size, seg=seg, aug=None, control=kind,
                               working_size=working_size, stain=stain)
    parts = [(b["path"], b["label"], b["mask_fraction"], predictor(np.array(b["image"]))["probs"])   # a writable copy for torch
             for b in ds.iter_batches(batch_size=64, batch_format="numpy")]
    paths, labels, fracs, probs = (np.concatenate(c) for c in zip(*parts))
    table = pa.table({"path": pa.array(paths.tolist(), pa.string()), "label": pa.array(labels, pa.int64()),
                      "mask_fraction": pa.array(fracs, pa.float32())})
    nan = np.full(len(paths), np.nan)
    return probs_table(table, classes, probs, nan, nan)


def export_control(out: ModelDir, splits: dict[str, pa.Table], source: str, classes: list[str], seg,
                   image_size: int, kind: str, working_size: int | None = None, stain=None) -> dict:
    """val / test probabilities of the control model in `out`; returns its meta."""
    predictor = Predictor(out.root)
    # No referral statistics: an empty file, so train.stage.is_finished sees a finished model (no retrain).
    meta = persistence.save_ood(out.root, {})
    for split in (schema.VAL, schema.TEST):    # test last: its file marks a finished model
        write_probs(out, split, predict_split(predictor, splits[split], source, classes, seg, image_size, kind,
                                              working_size, stain))
    return meta
