"""Test helpers other test modules reuse: a real run directory with tiny untrained models, small
smear-like images, and the bad inputs the bulk classifier must survive.

Everything here is real files written through the project's own writers (models.persistence, ensemble.weighted, models.feature_distance):
no mocks.
"""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from alle_dist.testing.synthetic import CLASSES  # the paper's four classes, one home


def smear(rng: np.random.Generator, size: int = 48) -> np.ndarray:
    """A pink field with a purple blob: enough for HSV segmentation to keep something."""
    img = np.empty((size, size, 3), np.uint8)
    img[:] = (240, 226, 232)  # pale: below the default saturation floor
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
    r = rng.integers(size // 8, size // 4)
    img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = (110, 40, 150)
    noise = rng.integers(-12, 13, img.shape)
    return np.clip(img.astype(int) + noise, 0, 255).astype(np.uint8)


def write_images(root: Path, n: int, seed: int = 0, size: int = 48, fmt: str = "JPEG") -> list[str]:
    """n smear images under root/<class>/img_<i>.jpg; returns their relative paths."""
    rng = np.random.default_rng(seed)
    rels = []
    for i in range(n):
        rel = f"{CLASSES[i % len(CLASSES)]}/img_{i:05d}.{'jpg' if fmt == 'JPEG' else fmt.lower()}"
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(smear(rng, size)).save(p, format=fmt)
        rels.append(rel)
    return rels


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def huge_png_header(width: int = 40000, height: int = 40000) -> bytes:
    """A valid PNG header claiming width x height pixels, with almost no pixel data behind it."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _png_chunk(b"IEND", b""))


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def bad_inputs(seed: int = 1) -> dict[str, tuple[bytes, str | None]]:
    """name → (file bytes, expected error substring or None when it must decode and classify)."""
    rng = np.random.default_rng(seed)
    rgb = smear(rng, 128)
    good_jpeg = _encode(Image.fromarray(rgb), "JPEG")
    grey16 = (rgb[:, :, 0].astype(np.uint16) * 257)
    return {
        "bad/zero_bytes.jpg": (b"", "empty file"),
        "bad/truncated.jpg": (good_jpeg[: len(good_jpeg) // 2], "truncated"),
        "bad/not_an_image.jpg": (b"this is a text file, not a JPEG\n" * 20, "not an image"),
        "bad/huge_header.png": (huge_png_header(), "refused before decoding"),
        "odd/png_rgba.png": (_encode(Image.fromarray(rgb).convert("RGBA"), "PNG"), None),
        "odd/tiff.tif": (_encode(Image.fromarray(rgb), "TIFF"), None),
        "odd/grey.jpg": (_encode(Image.fromarray(rgb).convert("L"), "JPEG"), None),
        "odd/cmyk.jpg": (_encode(Image.fromarray(rgb).convert("CMYK"), "JPEG"), None),
        "odd/grey16.png": (_encode(Image.fromarray(grey16), "PNG"), None),
    }


def jpeg(mode: str = "RGB", seed: int = 0) -> bytes:
    """A 128-pixel smear as a JPEG (quality 90) in `mode` (RGB, L, CMYK)."""
    return _encode(Image.fromarray(smear(np.random.default_rng(seed), 128)).convert(mode), "JPEG")


def jpeg_dimensions_times_4(data: bytes) -> bytes:
    """The JPEG with its header's height and width multiplied by 4 (Pillow fills the rest with grey)."""
    i = data.index(b"\xff\xc0")                  # baseline SOF0: length, precision, height, width
    h, w = struct.unpack(">HH", data[i + 5:i + 9])
    return data[:i + 5] + struct.pack(">HH", 4 * h, 4 * w) + data[i + 9:]


def jpeg_truncated_with_end_marker(data: bytes) -> bytes:
    """The first half of a JPEG with an end-of-image marker appended (Pillow decodes it silently)."""
    return data[: len(data) // 2] + b"\xff\xd9"


def write_bad_inputs(root: Path, seed: int = 1) -> dict[str, str | None]:
    """Write bad_inputs() under root; returns name → expected error substring (None = decodes)."""
    out = {}
    for rel, (data, err) in bad_inputs(seed).items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        out[rel] = err
    return out


def make_run(run_dir: Path, src: Path, per_class: int | None = 16) -> str:
    """A manifest over the first `per_class` images of each class of src (every image: None), through
    the Ray-free catalog core."""
    from alle_dist.config import PrepareConfig
    from alle_dist.io import storage
    from alle_dist.prepare import catalog
    from alle_dist.prepare import manifest as prep_manifest
    from alle_dist.rundir import RunDir

    picked: dict[str, list[str]] = {}
    for rel, cls in catalog.list_labelled(str(src)):
        picked.setdefault(cls, [])
        if per_class is None or len(picked[cls]) < per_class:
            picked[cls].append(rel)
    rows = [catalog.check_file(str(src), rel, cls) for cls, rels in sorted(picked.items()) for rel in rels]
    storage.write_parquet(prep_manifest.manifest_table(rows, str(src), 0, PrepareConfig()),
                          storage.join(str(run_dir), RunDir.MANIFEST))
    return str(run_dir)


def make_run_dir(run_dir: Path, backbones=("test_resnet", "test_efficientnet"), image_size: int = 32,
                 classes=CLASSES, seed: int = 0, weights=None, gamma: float = 0.0,
                 referral: dict | None = None, image_stats: bool = True, manifest_id: str | None = None,
                 working_size: int | None = 224) -> Path:
    """A real run directory: tiny untrained timm models saved through models.persistence, OOD statistics
    fitted with feature_distance.fit on random features and field_stats.fit on smear images, ensemble.json
    through weighted.save_spec. `manifest_id`: the models record they were trained on that manifest
    (RUN's, written by prepare), as train's do. working_size None: models of the original read path
    (trained before it was recorded)."""
    import torch
    from alle_dist.config import SegmentConfig
    from alle_dist.ensemble import weighted
    from alle_dist.ensemble.lineage import snapshot
    from alle_dist.models import feature_distance, field_stats, persistence, preprocessing, registry
    from alle_dist.rundir import RunDir
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    for name in backbones:
        model = registry.create(name, len(classes), "none").eval()
        prep = preprocessing.Preprocessing(image_size, *registry.normalisation(model), SegmentConfig(), working_size)
        meta = preprocessing.record({"architecture": name, "classes": list(classes),
                                     **({"lineage": {"manifest": manifest_id}} if manifest_id else {})}, prep)
        model_dir = str(run_dir / "models" / name)
        persistence.save_model(model_dir, model, meta)
        dim = int(model.num_features)
        feats = rng.normal(size=(64, dim)).astype(np.float32)
        stats = feature_distance.fit(feats, rng.integers(0, len(classes), 64), len(classes))
        if image_stats:   # False: models from before alle_dist had image statistics
            stats.update(field_stats.fit(np.stack([field_stats.features(smear(rng)) for _ in range(32)])))
        persistence.save_ood(model_dir, stats)
    w = weights or [1.0 / len(backbones)] * len(backbones)
    spec = weighted.EnsembleSpec(backbones=tuple(backbones), classes=tuple(classes), weights=w,
                                 gamma=gamma, referral=referral or {})
    weighted.save_spec(str(run_dir), spec, objective="test", lineage=snapshot(RunDir(str(run_dir)), backbones))
    return run_dir
