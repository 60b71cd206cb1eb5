"""Decode + HSV segmentation throughput: one process vs Ray Data on the same machine, in one run.

    .venv/bin/python bench/segment_throughput.py [--data SRC] [--limit 600] [--num-cpus N] [--write]

Prints both rates (images/s and images/s per CPU core) and their ratio as one JSON line. Without
--data it uses ../shared/data/leukemia when present, else a synthetic set. The work is CPU only
(OpenCV); --device is accepted for the lead's one-script GPU runs and recorded, nothing more.
With --write both paths also encode and write the masked image and mask (the full `segment` stage).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
from alle_dist.config import SegmentConfig
from alle_dist.imaging import hsv
from alle_dist.io import storage
from alle_dist.io.images import decode_rgb
from alle_dist.segment import stage as seg_stage
from alle_dist.testing import synthetic


SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "leukemia"


def decode_segment_batch(batch: dict, src: str, cfg: SegmentConfig, dst: str | None) -> dict:
    """What is timed, per batch of relative paths: read → decode → segment (→ write)."""
    cv2.setNumThreads(1)  # one core per task: the comparison is per core
    if dst:
        return {"f": [seg_stage.segment_file(src, dst, str(p), cfg)["mask_fraction"] or 0.0 for p in batch["path"]]}
    fr = [hsv.mask_fraction(hsv.segment_image(decode_rgb(storage.read_bytes(storage.join(src, str(p)))), cfg)[1])
          for p in batch["path"]]
    return {"f": fr}


def one_process(src: str, files: list[str], cfg: SegmentConfig, dst: str | None) -> float:
    t = time.perf_counter()
    for i in range(0, len(files), 32):
        decode_segment_batch({"path": files[i:i + 32]}, src, cfg, dst)
    return len(files) / (time.perf_counter() - t)


def ray_data(src: str, files: list[str], cfg: SegmentConfig, dst: str | None, cpus: int) -> float:
    import ray

    ds = ray.data.from_items([{"path": p} for p in files], override_num_blocks=cpus * 4)
    ds = ds.map_batches(decode_segment_batch, fn_kwargs={"src": src, "cfg": cfg, "dst": dst}, batch_size=32)
    t = time.perf_counter()
    n = len(ds.take_all())  # count() would skip the UDFs
    return n / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=None, help="folder or s3:// prefix of images")
    p.add_argument("--limit", type=int, default=600, help="images to time (the same files on both paths)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all cores)")
    p.add_argument("--device", default="cpu", help="recorded only: segmentation runs on CPU")
    p.add_argument("--write", action="store_true", help="also encode + write outputs (to a temporary folder)")
    args = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="segbench-")
    src = args.data or (str(SHARED) if SHARED.is_dir() else synthetic.generate(f"{tmp}/syn", n_per_class=args.limit // 4))
    files = storage.list_images(src)[: args.limit]
    cfg, cpus = SegmentConfig(), args.num_cpus or os.cpu_count()
    dst = f"{tmp}/out" if args.write else None
    one_process(src, files[:32], cfg, dst)                     # warm the page cache and imports
    single = one_process(src, files, cfg, dst)

    from alle_dist.runtime import init_ray
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    init_ray(num_cpus=cpus)
    ray_data(src, files[: cpus * 32], cfg, dst, cpus)          # warm the workers
    distributed = ray_data(src, files, cfg, dst, cpus)
    print(json.dumps({
        "bench": "segment_throughput", "images": len(files), "source": src, "write": args.write,
        "device": args.device, "cpus": cpus,
        "one_process_img_s": round(single, 1), "one_process_img_s_per_core": round(single, 1),
        "ray_data_img_s": round(distributed, 1), "ray_data_img_s_per_core": round(distributed / cpus, 1),
        "ray_vs_one_process": round(distributed / single, 2),
        "ray_per_core_efficiency": round(distributed / cpus / single, 2),
    }))


if __name__ == "__main__":
    main()
