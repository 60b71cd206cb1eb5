"""Training input: torchvision augmentation and the Ray Data image stream (oversampling: train.balance).

Core (Ray-free): `train_transform` (the paper's geometric recipe, on the model input),
`photometric_transform` (recipe "stain": stain, brightness, contrast, gamma, blur, on the decoded field
before segmentation, as a different stain batch, lamp or focus would reach the model),
`augment_image`, `load_image`.
Ray shell: `image_dataset` spreads read → decode → [photometric] → stain normalisation → segment →
resize → augment over Ray Data tasks and yields rows {"path", "label", "image" (uint8 HxWx3),
"mask_fraction"}.
"""
from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from .. import schema
from ..config import AugmentConfig, SegmentConfig
from ..imaging.model_input import control_input, decode, preprocess
from ..imaging.stain import StainReference, hed_jitter, normalise
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


class StainJitter(v2.Transform):
    """Each stain's optical density (haematoxylin, eosin, DAB) × U(1 - scale, 1 + scale) + U(-shift,
    shift), independently per stain (imaging.stain.hed_jitter)."""

    def __init__(self, scale: float, shift: float):
        super().__init__()
        self.scale, self.shift = scale, shift

    def make_params(self, flat_inputs):
        return {"alpha": torch.empty(3).uniform_(1 - self.scale, 1 + self.scale).tolist(),
                "beta": torch.empty(3).uniform_(-self.shift, self.shift).tolist()}

    def transform(self, inpt, params):
        rgb = hed_jitter(inpt.permute(1, 2, 0).numpy(), params["alpha"], params["beta"])
        return torch.from_numpy(rgb).permute(2, 0, 1)


class RandomGamma(v2.Transform):
    """Gamma exp(U(-g, g)): a camera's tone curve or exposure."""

    def __init__(self, g: float):
        super().__init__()
        self.g = g

    def make_params(self, flat_inputs):
        return {"gamma": math.exp(torch.empty(1).uniform_(-self.g, self.g).item())}

    def transform(self, inpt, params):
        return F.adjust_gamma(inpt, params["gamma"])


def photometric_transform(cfg: AugmentConfig) -> v2.Compose | None:
    """Recipe "stain": stain jitter in optical density, brightness / contrast, gamma, mild blur, on the
    decoded field (uint8 CHW) before the model's own preprocessing; None for the paper's recipe."""
    if cfg.recipe != "stain":
        return None
    k = 2 * math.ceil(3 * cfg.blur_sigma) + 1
    return v2.Compose([StainJitter(cfg.stain_scale, cfg.stain_shift),
                       v2.ColorJitter(brightness=cfg.brightness, contrast=cfg.contrast),
                       RandomGamma(cfg.gamma),
                       v2.RandomApply([v2.GaussianBlur(k, sigma=(0.1, max(cfg.blur_sigma, 0.1)))], p=cfg.blur_p)])


def load_image(data: bytes, image_size: int, seg: SegmentConfig | None, control: str | None = None,
               working_size: int | None = None, stain: StainReference | None = None, photometric=None,
               seed: int | None = None) -> tuple[np.ndarray, float]:
    """Bytes → [photometric augmentation, seeded] → the model input through the read path every stage
    shares (imaging.model_input: decoded as it decodes, stain-normalised if stain, segmented if seg,
    resized uint8 HxWx3) and the share of pixels the segmentation kept; with control "background"
    (the shortcut control): the field with the cells seg would keep removed."""
    rgb = decode(data, working_size)
    if photometric is not None:
        rgb = augment_image(rgb, photometric, seed)
    if control is not None:
        return control_input(normalise(rgb, stain), image_size, seg or SegmentConfig(), working_size)
    prepared = preprocess(rgb, image_size, seg, working_size, stain)
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
                 working_size: int | None = None, stain: StainReference | None = None):
        self.source, self.image_size, self.seg, self.seed, self.control = source, image_size, seg, seed, control
        self.working_size, self.stain = working_size, stain
        self.transform = train_transform(aug, image_size) if aug is not None else None
        self.photometric = photometric_transform(aug) if aug is not None else None

    def __call__(self, batch: dict) -> dict:
        torch.set_num_threads(1)  # one image at a time per task; parallelism comes from Ray
        images, fracs = [], []
        for path, idx in zip(batch["path"], batch["idx"]):
            seed = None if self.seed is None else self.seed * 1_000_003 + int(idx)
            rgb, frac = load_image(storage.read_bytes(image_uri(self.source, str(path))), self.image_size,
                                   self.seg, self.control, self.working_size, self.stain, self.photometric,
                                   None if seed is None else seed + 500_000_000)   # its own random stream
            if self.transform is not None:
                rgb = augment_image(rgb, self.transform, seed)
            images.append(rgb)
            fracs.append(frac)
        return {"path": batch["path"], "label": batch["label"],
                "image": np.stack(images), "mask_fraction": np.asarray(fracs, np.float32)}


def image_dataset(rows: pa.Table, source: str, classes: list[str], *, image_size: int,
                  seg: SegmentConfig | None, aug: AugmentConfig | None, seed: int | None = 0,
                  batch_size: int = 32, control: str | None = None, working_size: int | None = None,
                  stain: StainReference | None = None):
    """A Ray Data dataset of manifest rows (status ok) as model-ready uint8 images.

    Columns: path (str), label (int64, index in `classes`), image (uint8 HxWx3, image_size²),
    mask_fraction (float32; 1.0 when seg is None). Augmentation is seeded per row from
    (seed, row position), so a dataset is reproducible and repeated rows get different
    augmentations; pass seed=None (or seed + epoch) for fresh augmentations on every pass.
    control "background": the shortcut control's images (load_image), mask_fraction = share removed.
    working_size: the model's (models.preprocessing.Preprocessing.working_size; None = the original path).
    stain: the model's stain normalisation (models.preprocessing), applied before segmentation.
    """
    import ray

    rows = rows.filter(pc.equal(rows.column("status"), schema.OK)) if "status" in rows.column_names else rows
    index = {c: i for i, c in enumerate(classes)}
    items = [{"path": p, "label": index[c], "idx": i}
             for i, (p, c) in enumerate(zip(rows.column("path").to_pylist(), rows.column("label").to_pylist()))]
    udf = _LoadBatch(source, image_size, seg, aug, seed, control, working_size, stain)
    ds = ray.data.from_items(items)
    return ds.map_batches(udf, batch_size=batch_size)
