"""After training: the published model's outputs that the later stages read, written beside it.

Runs the best model over the un-augmented train / val / test splits through the one inference path
(models.inference: the same read tasks and model actors as bulk classification), fits the referral
statistics on the train split (network features: models.feature_distance; image statistics of the
original fields: models.field_stats) into `ood.safetensors`, and writes `val_probs.parquet` and
`test_probs.parquet` (schema.probs_schema). The test file is written last: its presence marks a
finished backbone (train.stage.is_finished).
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import schema
from ..io import storage
from ..models import feature_distance, field_stats, inference, persistence, preprocessing, provenance
from ..prepare.catalog import image_uri
from ..rundir import ModelDir


def probs_table(rows: pa.Table, classes: list[str], probs: np.ndarray, ood_scores: np.ndarray,
                image_scores: np.ndarray) -> pa.Table:
    """One split's rows (path, label index, mask_fraction) and outputs → schema.probs_schema."""
    cols = {"path": rows.column("path").to_pylist(),
            "label": [classes[int(i)] for i in rows.column("label").to_pylist()]}
    cols.update({schema.prob_column(c): np.asarray(probs[:, j], np.float32) for j, c in enumerate(classes)})
    cols["ood_score"] = np.asarray(ood_scores, np.float32)
    cols["mask_fraction"] = rows.column("mask_fraction").to_numpy(zero_copy_only=False).astype(np.float32)
    cols["image_score"] = np.asarray(image_scores, np.float32)
    return pa.Table.from_pydict(cols, schema=schema.probs_schema(classes)).sort_by("path")


def _inference_rows(splits: dict[str, pa.Table], source: str, classes: list[str]) -> pa.Table:
    """The splits as one table of inference rows (uri, path, split, label index). Types are spelled
    out: a split can be empty (a tiny dataset's val split), and an empty list has no type to infer."""
    index = {c: i for i, c in enumerate(classes)}
    def one(split: str, t: pa.Table) -> pa.Table:
        paths = t.column("path").to_pylist()
        return pa.table({"uri": pa.array([storage.to_uri(image_uri(source, p)) for p in paths], pa.string()),
                         "path": pa.array(paths, pa.string()), "split": pa.array([split] * len(paths), pa.string()),
                         "label": pa.array([index[c] for c in t.column("label").to_pylist()], pa.int64())})
    return pa.concat_tables([one(s, t) for s, t in splits.items()])


def split_outputs(out: ModelDir, splits: dict[str, pa.Table], source: str, classes: list[str]) -> dict[str, pa.Table]:
    """Every split's rows through the inference path: {split: rows with probs / features / image_stats}."""
    import ray.data

    from ..errors import ModelIntegrityError
    from ..runtime import cluster_cpus, cluster_gpus

    prep = preprocessing.read(persistence.read_meta(out.root))
    spec = inference.ReadSpec(image_size=prep.image_size, segment=prep.segment, stain=prep.stain, image_stats=True,
                              working_size=prep.working_size)
    rows = _inference_rows(splits, source, classes)
    # Inference is cheap next to training: one GPU actor, or at most two CPU actors.
    layout = inference.actor_layout(min(cluster_gpus(), 1), max(1, min(2, cluster_cpus() // 2)))
    blocks = [rows.slice(i, 64) for i in range(0, rows.num_rows, 64)]
    ds = inference.model_outputs(ray.data.from_arrow(blocks), spec, {"model": out.root}, layout, batch_size=64)
    result = pa.concat_tables(list(ds.iter_batches(batch_size=None, batch_format="pyarrow")))
    bad = [e for e, s in zip(result.column("error").to_pylist(), result.column("status").to_pylist()) if s != schema.OK]
    if bad:   # prepare checked every image: one that fails now was changed or removed since
        raise ModelIntegrityError(f"{len(bad)} manifest image(s) can't be read any more ({bad[0]}); "
                                  "the source changed since `alle-dist prepare`: prepare a new run directory")
    return {s: result.filter(pc.equal(result.column("split"), s)).sort_by("path") for s in splits}


def export_splits(out: ModelDir, splits: dict[str, pa.Table], source: str, classes: list[str]) -> dict:
    """The best model in `out` over the un-augmented splits: the referral statistics (fitted on the
    train split) and the val / test probability files; returns the model's updated meta."""
    by = split_outputs(out, splits, source, classes)
    ok = {s: inference.ok_mask(t) for s, t in by.items()}
    unpack = lambda s, col: inference.unpack_rows(by[s].column(col), ok[s])   # noqa: E731
    feats = {s: unpack(s, inference.FEATURES + "model") for s in by if by[s].num_rows}
    image = {s: unpack(s, "image_stats") for s in by if by[s].num_rows}
    train_labels = np.asarray(by[schema.TRAIN].column("label").to_pylist())
    stats = feature_distance.fit(feats[schema.TRAIN], train_labels, len(classes))
    stats.update(field_stats.fit(image[schema.TRAIN]))   # one file: both are fitted on the training split
    meta = persistence.save_ood(out.root, stats)
    for split in (schema.VAL, schema.TEST):  # test last: its file marks a finished backbone
        none = np.zeros((0,), np.float32)
        has = split in feats
        probs = unpack(split, inference.PROBS + "model") if has else np.zeros((0, len(classes)), np.float32)
        scores = feature_distance.score(feats[split], stats) if has else none
        image_scores = field_stats.score(image[split], stats) if has else none
        write_probs(out, split, probs_table(by[split], classes, probs, scores, image_scores))
    return meta


def write_probs(out: ModelDir, split: str, table: pa.Table) -> None:
    """A split's probabilities, bound to the model that made them (models.provenance.check_outputs)."""
    storage.write_parquet(table.replace_schema_metadata(provenance.outputs_metadata(out)), out.probs(split))
