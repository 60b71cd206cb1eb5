"""Segment images: the paper's HSV colour-interval segmentation of lymphoblasts, on Ray Data.

Core (Ray-free): `segment_file` (the HSV core itself is alle_dist.imaging.hsv, shared with training
and classification).
Stage `alle-dist segment --data SRC --output DST`: Ray Data tasks over the files; DST/<rel> is the
masked image (same format as the source file), DST/masks/<rel stem>.png the binary mask (0/255),
DST/segment_report.parquet one row per file (bad files are error rows, never a failed job).
"""
from __future__ import annotations

import argparse
import io
import posixpath

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from ..config import SegmentConfig
from ..errors import DecodeError, StorageError
from ..imaging.hsv import mask_fraction, segment_image
from ..io import storage
from ..io.images import decode_rgb, encode_jpeg, encode_png
from ..schema import ERROR, IMAGE_SUFFIXES, OK, SEGMENT_REPORT_SCHEMA


# ---------------------------------------------------------------- segment stage: files (pure)

MASKS_DIR = "masks"
REPORT_FILE = "segment_report.parquet"
_PIL_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP"}


def output_uris(dst: str, rel: str) -> tuple[str, str]:
    """(masked image, mask) URIs of source file `rel`: DST/<rel> and DST/masks/<rel stem>.png."""
    stem = posixpath.splitext(rel)[0]
    return storage.join(dst, rel), storage.join(dst, MASKS_DIR, stem + ".png")


def encode_like(rgb: np.ndarray, rel: str) -> bytes:
    """Encode in the format the file name says, so DST/<rel> is what its suffix claims."""
    fmt = _PIL_FORMATS.get(posixpath.splitext(rel)[1].lower(), "PNG")
    if fmt == "JPEG":
        return encode_jpeg(rgb, quality=95)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt)
    return buf.getvalue()


def segment_file(src: str, dst: str, rel: str, cfg: SegmentConfig) -> dict:
    """Read SRC/rel, segment, write the masked image and the mask under DST; a report row, never raises."""
    try:
        rgb = decode_rgb(storage.read_bytes(storage.join(src, rel)))
    except DecodeError as exc:
        return {"path": rel, "status": ERROR, "error": str(exc), "mask_fraction": None}
    except Exception as exc:  # noqa: BLE001 - an unreadable file is a report row, not a failed job
        return {"path": rel, "status": ERROR, "error": f"unreadable: {storage.first_line(exc)}", "mask_fraction": None}
    masked, mask = segment_image(rgb, cfg)
    image_uri, mask_uri = output_uris(dst, rel)
    # Write errors (permissions, a full disk, a lost bucket) are the job's problem, not the file's: they raise.
    storage.write_bytes(image_uri, encode_like(masked, rel))
    storage.write_bytes(mask_uri, encode_png(mask))
    return {"path": rel, "status": OK, "error": None, "mask_fraction": mask_fraction(mask)}


def segment_batch(batch: dict, src: str, dst: str, cfg: SegmentConfig) -> dict:
    rows = [segment_file(src, dst, str(rel), cfg) for rel in batch["path"]]
    return {k: [r[k] for r in rows] for k in SEGMENT_REPORT_SCHEMA.names}


# ---------------------------------------------------------------- segment stage: Ray shell

def segment_dataset(src: str, dst: str, cfg: SegmentConfig, tasks: int | None = None) -> pa.Table:
    """Segment every image under src into dst as Ray Data tasks; the per-file report table."""
    import ray

    from ..progress import iter_rows
    from ..runtime import num_blocks

    files = storage.list_images(src)
    if not files:
        raise StorageError(f"{src}: no image files ({', '.join(IMAGE_SUFFIXES)}) found; "
                                   "point --data at a folder or s3:// prefix of images")
    ds = ray.data.from_items([{"path": rel} for rel in files], override_num_blocks=num_blocks(len(files), tasks))
    ds = ds.map_batches(segment_batch, fn_kwargs={"src": src, "dst": dst, "cfg": cfg}, batch_size=32,
                        compute=ray.data.TaskPoolStrategy(size=tasks) if tasks else None)
    rows = sorted(iter_rows(ds, "segment", len(files), batch_size=32), key=lambda r: r["path"])
    cols = {k: [r[k] for r in rows] for k in SEGMENT_REPORT_SCHEMA.names}
    return pa.Table.from_pydict(cols, schema=SEGMENT_REPORT_SCHEMA)


def main(args: argparse.Namespace) -> int:
    from .. import config, fields
    from ..runtime import init_ray

    job_cfg = config.job_config(args.config, segment=fields.overrides(args, SegmentConfig))
    init_ray(args.num_cpus)
    report = segment_dataset(args.data, args.output, job_cfg.segment, args.tasks)
    storage.write_parquet(report, storage.join(args.output, REPORT_FILE))
    config.save_resolved(storage.join(args.output, "segment_config.yaml"), job_cfg, data=args.data, output=args.output)
    errors = report.filter(pc.equal(report.column("status"), ERROR)).to_pylist()
    for r in errors[:20]:
        print(f"error: {r['path']}: {r['error']}")
    fr = np.asarray(report.column("mask_fraction").drop_null().to_numpy(), float)
    kept = f", kept pixels median {np.median(fr):.1%} (5-95 %: {np.percentile(fr, 5):.1%}-{np.percentile(fr, 95):.1%})" if len(fr) else ""
    print(f"segmented {report.num_rows - len(errors)} of {report.num_rows} images into {args.output}; "
          f"{len(errors)} errors{kept}; report: {storage.join(args.output, REPORT_FILE)}")
    return 0
