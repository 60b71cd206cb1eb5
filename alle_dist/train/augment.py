"""Training input: torchvision augmentation and the Ray Data image stream (oversampling: train.balance).

Core (Ray-free): `train_transform`, `augment_image`, `load_image`.
Ray shell: `image_dataset` spreads read → decode → segment → resize → augment over Ray Data tasks
and yields rows {"path", "label", "image" (uint8 HxWx3), "mask_fraction"}.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from .. import schema
from ..config import AugmentConfig, SegmentConfig
from ..imaging.model_input import control_input, decode, from_bytes
from ..io import storage
from ..prepare.catalog import image_uri


# ---------------------------------------------------------------- augmentation (pure)

class RandomScaleXY(v2.Transform):
    """Scale x and y by independent random factors, then centre-crop / zero-pad back to `size`."""

    def __init__(self, scale_min: float, scale_max: float, size: int):
        super().__init__()
        self.scale_min, self.scale_max, self.size = scale_min, scale_max, size

    def make_params(self, flat_inputs):
        sx, sy = torch.empty(2).uniform_(self.scale_min, self.scale_max).tolist()
        return {"sx": sx, "sy": sy}

    def transform(self, inpt, params):
        h, w = inpt.shape[-2:]
        new = [max(1, round(h * params["sy"])), max(1, round(w * params["sx"]))]
        out = F.resize(inpt, new, antialias=True)
        return F.center_crop(out, [self.size, self.size])  # pads with 0 (the masked background)


def train_transform(cfg: AugmentConfig, image_size: int) -> v2.Compose:
    """The paper's augmentation on uint8 CHW tensors: x/y scaling, rotation both ways, translation, flips."""
    steps: list = [RandomScaleXY(cfg.scale_min, cfg.scale_max, image_size),
                   v2.RandomAffine(degrees=cfg.rotation_deg, translate=(cfg.translate, cfg.translate),
                                   interpolation=v2.InterpolationMode.BILINEAR, fill=0)]
    if cfg.flips:
        steps += [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()]
    return v2.Compose(steps)


def load_image(data: bytes, image_size: int, seg: SegmentConfig | None,
               control: str | None = None, working_size: int | None = None) -> tuple[np.ndarray, float]:
    """Bytes → (segmented if seg, resized uint8 HxWx3, share of pixels the segmentation kept), through
    the read path every stage shares (imaging.model_input.from_bytes); with control "background" (the
    shortcut control): the field with the cells seg would keep removed."""
    if control is not None:
        return control_input(decode(data, working_size), image_size, seg or SegmentConfig(), working_size)
    prepared = from_bytes(data, image_size, seg, working_size)
    return prepared.image, prepared.mask_fraction


def augment_image(rgb: np.ndarray, transform, seed: int | None) -> np.ndarray:
    """Apply a transforms.v2 pipeline to an HxWx3 uint8 array; reproducible when seed is given."""
    chw = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)
    if seed is None:
        out = transform(chw)
    else:
        with torch.random.fork_rng(devices=[]):   # a per-image seed, without touching global state
            torch.manual_seed(seed)
            out = transform(chw)
    return out.permute(1, 2, 0).contiguous().numpy()


class _LoadBatch:
    """Ray Data UDF: rows (path, label, idx) → (path, label, image, mask_fraction)."""

    def __init__(self, source: str, image_size: int, seg, aug, seed: int | None, control: str | None = None,
                 working_size: int | None = None):
        self.source, self.image_size, self.seg, self.seed, self.control = source, image_size, seg, seed, control
        self.working_size = working_size
        self.transform = train_transform(aug, image_size) if aug is not None else None

    def __call__(self, batch: dict) -> dict:
        torch.set_num_threads(1)  # one image at a time per task; parallelism comes from Ray
        images, fracs = [], []
        for path, idx in zip(batch["path"], batch["idx"]):
            rgb, frac = load_image(storage.read_bytes(image_uri(self.source, str(path))), self.image_size,
                                   self.seg, self.control, self.working_size)
            if self.transform is not None:
                seed = None if self.seed is None else self.seed * 1_000_003 + int(idx)
                rgb = augment_image(rgb, self.transform, seed)
            images.append(rgb)
            fracs.append(frac)
        return {"path": batch["path"], "label": batch["label"],
                "image": np.stack(images), "mask_fraction": np.asarray(fracs, np.float32)}


def image_dataset(rows: pa.Table, source: str, classes: list[str], *, image_size: int,
                  seg: SegmentConfig | None, aug: AugmentConfig | None, seed: int | None = 0,
                  batch_size: int = 32, control: str | None = None, working_size: int | None = None):
    """A Ray Data dataset of manifest rows (status ok) as model-ready uint8 images.

    Columns: path (str), label (int64, index in `classes`), image (uint8 HxWx3, image_size²),
    mask_fraction (float32; 1.0 when seg is None). Augmentation is seeded per row from
    (seed, row position), so a dataset is reproducible and repeated rows get different
    augmentations; pass seed=None (or seed + epoch) for fresh augmentations on every pass.
    control "background": the shortcut control's images (load_image), mask_fraction = share removed.
    working_size: the model's (models.preprocessing.Preprocessing.working_size; None = the original path).
    """
    import ray

    rows = rows.filter(pc.equal(rows.column("status"), schema.OK)) if "status" in rows.column_names else rows
    index = {c: i for i, c in enumerate(classes)}
    items = [{"path": p, "label": index[c], "idx": i}
             for i, (p, c) in enumerate(zip(rows.column("path").to_pylist(), rows.column("label").to_pylist()))]
    udf = _LoadBatch(source, image_size, seg, aug, seed, control, working_size)
    ds = ray.data.from_items(items)
    return ds.map_batches(udf, batch_size=batch_size)
