"""What a model expects as input, recorded once in its meta.json and read back: one owner for both.

Training builds one `Preprocessing` per backbone and records it (`record`) in the meta every checkpoint
and the published model carry; post-training export, bulk classification, Grad-CAM, the report and the
benchmarks read it (`read`) instead of re-deriving it from the training config.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from ..config import SegmentConfig
from ..errors import ModelIntegrityError
from ..imaging.stain import StainReference
from ..rundir import ModelDir

KEY = "preprocessing"


@dataclass(frozen=True)
class Preprocessing:
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    segment: SegmentConfig | None       # None: the model was trained on the unsegmented originals
    # The resolution segmentation and field statistics work at (imaging.model_input): None for models
    # trained before it was recorded, which keep the original path (segmentation at full resolution).
    working_size: int | None = None
    stain: StainReference | None = None  # stain normalisation fitted on the training split; None: off

    def __post_init__(self):
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        object.__setattr__(self, "image_size", int(self.image_size))
        if self.working_size is not None:
            object.__setattr__(self, "working_size", int(self.working_size))
            if self.working_size < 1:
                raise ValueError(f"working_size must be a positive number of pixels, got {self.working_size}")


def record(meta: dict, prep: Preprocessing) -> dict:
    """meta with the preprocessing written in, under one key (nothing else in meta.json repeats it)."""
    doc = {"image_size": prep.image_size, "mean": list(prep.mean), "std": list(prep.std),
           "segment": asdict(prep.segment) if prep.segment is not None else None}
    if prep.working_size is not None:   # absent, not null, for the original path: older readers' meta
        doc["working_size"] = prep.working_size
    if prep.stain is not None:          # likewise absent when off
        doc["stain"] = prep.stain.to_dict()
    return {**meta, KEY: doc}


def read(meta: dict) -> Preprocessing:
    """The model's preprocessing from its meta.json. Models written before it was recorded once keep
    working: their top-level image_size / mean / std and their config's segment section are read
    instead; a record without working_size is the original read path. Neither: ModelIntegrityError
    (one line)."""
    doc = meta.get(KEY)
    try:
        doc = _legacy(meta) if doc is None else doc
        seg = doc.get("segment")
        return Preprocessing(doc["image_size"], doc["mean"], doc["std"],
                             SegmentConfig(**seg) if isinstance(seg, dict) else None, doc.get("working_size"),
                             StainReference.from_dict(doc.get("stain")))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelIntegrityError(f"{ModelDir.META} of {meta.get('architecture', 'a model')}: no usable preprocessing "
                                  f"record ({type(exc).__name__}: {exc}); retrain the model or restore the file") from None


def _legacy(meta: dict) -> dict:
    cfg = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    segmented = (cfg.get("train") or {}).get("segmented", True)
    seg = cfg.get("segment") if isinstance(cfg.get("segment"), dict) else {}
    return {"image_size": meta["image_size"], "mean": meta["mean"], "std": meta["std"],
            "segment": seg if segmented else None}
