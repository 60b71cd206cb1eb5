"""Training input: recorded random oversampling, torchvision augmentation, the Ray Data image stream.

Core (Ray-free): `oversample`, `train_transform`, `load_image`.
Ray shell: `image_dataset` spreads read → decode → segment → resize → augment over Ray Data tasks
and yields rows {"path", "label", "image" (uint8 HxWx3), "mask_fraction"}.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from . import imagestats, schema, storage
from .config import AugmentConfig, SegmentConfig
from .imageio import decode_rgb
from .segment import preprocess


# ---------------------------------------------------------------- oversampling (pure)

def oversample(rows: pa.Table, seed: int) -> tuple[pa.Table, dict]:
    """Randomly repeat minority-class rows until every class has the majority's count.

    Call it on the training split only (after splitting: no copy can reach val / test). Each
    minority class is repeated in whole passes plus a random subset without replacement, so no
    file is repeated more than once more than another of its class. Returns the balanced rows
    (originals first, then the repeats) and a JSON-able record of what was repeated.
    """
    rows = rows.sort_by("path")
    labels = rows.column("label").to_pylist()
    counts = Counter(labels)
    target = max(counts.values()) if counts else 0
    rng = np.random.default_rng(seed)
    extra: list[int] = []
    for cls in sorted(counts):
        idx = np.flatnonzero(np.asarray(labels, dtype=object) == cls)
        need = target - len(idx)
        whole, part = divmod(need, len(idx))
        extra += list(np.tile(idx, whole)) + sorted(rng.choice(idx, part, replace=False).tolist())
    balanced = pa.concat_tables([rows, rows.take(pa.array(extra, pa.int64()))]) if extra else rows
    paths = rows.column("path").to_pylist()
    repeated = Counter(paths[i] for i in extra)
    record = {
        "seed": int(seed),
        "counts_before": dict(sorted(counts.items())),
        "counts_after": dict(sorted(Counter(balanced.column("label").to_pylist()).items())),
        "repeated": dict(sorted(repeated.items())),   # path -> extra copies
    }
    return balanced, record


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


def load_image(data: bytes, image_size: int, seg: SegmentConfig | None) -> tuple[np.ndarray, float]:
    """Bytes → (segmented if seg, resized uint8 HxWx3, share of pixels the segmentation kept)."""
    return preprocess(decode_rgb(data), image_size, seg)


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
    """Ray Data UDF: rows (path, label, idx) → (path, label, image, mask_fraction[, image_stats])."""

    def __init__(self, source: str, image_size: int, seg, aug, seed: int | None, with_stats: bool = False):
        self.source, self.image_size, self.seg, self.seed = source, image_size, seg, seed
        self.transform = train_transform(aug, image_size) if aug is not None else None
        self.with_stats = with_stats

    def __call__(self, batch: dict) -> dict:
        torch.set_num_threads(1)  # one image at a time per task; parallelism comes from Ray
        images, fracs, stats = [], [], []
        for path, idx in zip(batch["path"], batch["idx"]):
            original = decode_rgb(storage.read_bytes(storage.join(self.source, str(path))))
            if self.with_stats:   # of the original field, as bulk classification computes them
                stats.append(imagestats.features(original, self.seg))
            rgb, frac = preprocess(original, self.image_size, self.seg)
            if self.transform is not None:
                seed = None if self.seed is None else self.seed * 1_000_003 + int(idx)
                rgb = augment_image(rgb, self.transform, seed)
            images.append(rgb)
            fracs.append(frac)
        out = {"path": batch["path"], "label": batch["label"],
               "image": np.stack(images), "mask_fraction": np.asarray(fracs, np.float32)}
        if self.with_stats:
            out["image_stats"] = np.stack(stats)
        return out


def image_dataset(rows: pa.Table, source: str, classes: list[str], *, image_size: int,
                  seg: SegmentConfig | None, aug: AugmentConfig | None, seed: int | None = 0,
                  batch_size: int = 32, with_stats: bool = False):
    """A Ray Data dataset of manifest rows (status ok) as model-ready uint8 images.

    Columns: path (str), label (int64, index in `classes`), image (uint8 HxWx3, image_size²),
    mask_fraction (float32; 1.0 when seg is None), and with `with_stats` image_stats (float32
    vector, alle_dist.imagestats.features of the original field). Augmentation is seeded per row from
    (seed, row position), so a dataset is reproducible and repeated rows get different
    augmentations; pass seed=None (or seed + epoch) for fresh augmentations on every pass.
    """
    import ray

    rows = rows.filter(pc.equal(rows.column("status"), schema.OK)) if "status" in rows.column_names else rows
    index = {c: i for i, c in enumerate(classes)}
    items = [{"path": p, "label": index[c], "idx": i}
             for i, (p, c) in enumerate(zip(rows.column("path").to_pylist(), rows.column("label").to_pylist()))]
    udf = _LoadBatch(source, image_size, seg, aug, seed, with_stats)
    ds = ray.data.from_items(items)
    return ds.map_batches(udf, batch_size=batch_size)
