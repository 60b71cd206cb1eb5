"""One split's cached model outputs (RUN/models/<b>/<split>_probs.parquet) of several backbones,
joined by path: what tune (validation) and evaluate (test) work on, without touching images."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import schema
from ..errors import ConfigError, StorageError
from ..io import storage
from ..models import persistence, provenance
from ..rundir import RunDir
from .weighted import Decision, EnsembleSpec, apply


@dataclass
class SplitProbs:
    """One split's cached outputs of several backbones, rows aligned by path."""
    paths: list[str]
    y: np.ndarray                      # class index per row (-1: label not in classes)
    classes: tuple[str, ...]
    probs: dict[str, np.ndarray]       # backbone → N x C
    ood: dict[str, np.ndarray]         # backbone → N feature distances
    mask_fraction: np.ndarray          # N
    image_score: np.ndarray | None = None   # N image-statistics distances (models.field_stats)
    image_reference: np.ndarray | None = None  # training fields' out-of-fold image scores (tune only)


def apply_split(spec: EnsembleSpec, data: SplitProbs) -> Decision:
    """apply() to one split's cached outputs, with every referral signal they carry."""
    return apply(spec, data.probs, data.ood, data.mask_fraction, data.image_score)


def image_reference(run_dir: str, backbones) -> np.ndarray | None:
    """The out-of-fold image scores of the training fields (models.field_stats.calibration) of the first
    backbone that has them: in-distribution reference values for the image rule's threshold."""
    from ..models import field_stats

    for b in backbones:
        mdir = RunDir(run_dir).model(b)
        if storage.exists(mdir.meta) and persistence.read_meta(mdir.root).get("ood"):
            ref = field_stats.calibration(persistence.load_ood(mdir.root))
            if ref is not None:
                return ref
    return None


def model_classes(run_dir: str, backbone: str) -> tuple[str, ...] | None:
    model = RunDir(run_dir).model(backbone)
    return tuple(persistence.read_meta(model.root)["classes"]) if storage.exists(model.meta) else None


def load_probs(run_dir: str, backbones, split: str) -> SplitProbs:
    """RUN/models/<b>/<split>_probs.parquet of each backbone, joined on path (order of the first); each
    file must have been made by the model now in its folder (models.provenance.check_outputs)."""
    tables, classes = {}, None
    for b in backbones:
        uri = RunDir(run_dir).model(b).probs(split)
        if not storage.exists(uri):
            raise StorageError(f"{uri}: not found; train backbone {b!r} first "
                                       f"(`alle-dist train --run-dir {run_dir} --backbone {b}`) or drop it")
        table = storage.read_parquet(uri)
        provenance.check_outputs(RunDir(run_dir).model(b), split, table.schema.metadata, b, run_dir)
        df = table.to_pandas()
        cls = model_classes(run_dir, b) or tuple(sorted(c[2:] for c in df.columns if c.startswith("p_")))
        if classes is not None and cls != classes:
            raise ConfigError(f"{b}: classes {list(cls)} differ from {list(classes)}; train on one manifest")
        classes, tables[b] = cls, df.drop_duplicates("path").set_index("path")
    first = tables[backbones[0]]
    paths = [p for p in first.index if all(p in t.index for t in tables.values())]
    cols = [schema.prob_column(c) for c in classes]
    index = {c: i for i, c in enumerate(classes)}
    return SplitProbs(
        paths=paths,
        y=np.array([index.get(v, -1) for v in first.loc[paths, "label"]], np.int64),
        classes=classes,
        probs={b: t.loc[paths, cols].to_numpy(np.float64) for b, t in tables.items()},
        ood={b: t.loc[paths, "ood_score"].to_numpy(np.float64) if "ood_score" in t else None
             for b, t in tables.items()},
        mask_fraction=(first.loc[paths, "mask_fraction"].to_numpy(np.float64)
                       if "mask_fraction" in first else None),
        # The same statistics for every backbone trained on one manifest: take the first that has them.
        image_score=next((t.loc[paths, "image_score"].to_numpy(np.float64) for t in tables.values()
                          if "image_score" in t and t["image_score"].notna().all()), None),
    )
