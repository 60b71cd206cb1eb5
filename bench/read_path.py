"""The read path's CPU cost per image against the bare JPEG decode of the same bytes, side by side in one run.

    /work/bin/heavy --alone .venv/bin/python bench/read_path.py [--n-images 40] [--rounds 5]
        [--sizes 224x224,1024x768,1920x1080,2592x1944] [--image-size 224] [--data SRC] [--seed 0]

Images: for each size, --n-images fields drawn (seeded) from --data (default ../shared/data/leukemia),
upscaled with Lanczos and JPEG-encoded at quality 90, written to a temporary folder (the read path
reads files). One process, one thread (OpenCV, OpenMP and BLAS held to one), CPU time
(time.process_time) per call; each round visits every image once and times, one after the other:

  decode      io.images.decode_rgb of the bytes: the bare full-size decode
  <path>      models.inference.read_one: read bytes + sha256 + decode + field statistics +
              segmentation + resize, i.e. what one classify read task does for one image

for each read path this checkout has: `original` (a model whose meta records no working size:
segmentation at full resolution, statistics on a 224² copy, HSV and mask computed twice) and
`working` (models.preprocessing.Preprocessing.working_size = 224: a JPEG much larger than that
decoded at 1/2, 1/4 or 1/8 scale in the DCT domain to >= 448 px a side, then one HSV conversion,
one mask and one labelling at 224², shared by the statistics and the model input). Per path and size: the median over rounds of the mean ms per image, the ratio to
decode, and the images/s one core sustains. Then a breakdown of each path into its steps (timed
apart, so it does not add up exactly). Prints a table and one JSON line.
"""
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):   # before numpy is imported
    os.environ[_v] = "1"

import argparse   # noqa: E402
import dataclasses   # noqa: E402
import json   # noqa: E402
import statistics   # noqa: E402
import tempfile   # noqa: E402
import time   # noqa: E402
from pathlib import Path   # noqa: E402

import cv2   # noqa: E402
import numpy as np   # noqa: E402
from PIL import Image   # noqa: E402

from alle_dist.config import SegmentConfig   # noqa: E402
from alle_dist.io import storage   # noqa: E402
from alle_dist.io.images import decode_rgb   # noqa: E402
from alle_dist.models import field_stats, inference   # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "leukemia"
SIZES = "224x224,1024x768,1920x1080,2592x1944"


def make_images(src: Path, sizes: list[tuple[int, int]], n: int, seed: int, out: Path) -> dict:
    """{(w, h): [file path]}: the same n seeded source fields at every size, q90 JPEG."""
    files = sorted(str(p.relative_to(src)) for p in src.rglob("*.jpg"))
    if not files:
        raise SystemExit(f"no .jpg images under {src}")
    picked = [files[i] for i in np.random.default_rng(seed).choice(len(files), n, replace=len(files) < n)]
    made = {}
    for w, h in sizes:
        folder = out / f"{w}x{h}"
        folder.mkdir(parents=True)
        made[(w, h)] = []
        for i, rel in enumerate(picked):
            img = Image.open(src / rel).convert("RGB").resize((w, h), Image.Resampling.LANCZOS)
            path = folder / f"{i:03d}.jpg"
            img.save(path, format="JPEG", quality=90)
            made[(w, h)].append(str(path))
    return made


def read_paths(image_size: int) -> dict[str, inference.ReadSpec]:
    """The read paths this checkout has: always `original`; `working` where ReadSpec knows a working size."""
    seg = SegmentConfig()
    paths = {"original": inference.ReadSpec(image_size=image_size, segment=seg, image_stats=True)}
    if "working_size" in {f.name for f in dataclasses.fields(inference.ReadSpec)}:
        paths["working"] = inference.ReadSpec(image_size=image_size, segment=seg, image_stats=True,
                                              working_size=224)
    return paths


def _cpu_ms(fn, *args) -> float:
    t = time.process_time()
    fn(*args)
    return (time.process_time() - t) * 1e3


def time_size(files: list[str], paths: dict, rounds: int) -> dict[str, float]:
    """Median over rounds of the mean CPU ms per image: decode and every read path, interleaved per image."""
    data = [Path(f).read_bytes() for f in files]
    uris = [storage.path_to_uri(f) for f in files]
    for u, d in zip(uris, data):   # warm-up (page cache, lazy imports): not timed
        decode_rgb(d)
        for spec in paths.values():
            assert inference.read_one(spec, u, len(d), None)["status"] == "ok"
    per_round = {k: [] for k in ("decode", *paths)}
    for _ in range(rounds):
        sums = dict.fromkeys(per_round, 0.0)
        for u, d in zip(uris, data):
            sums["decode"] += _cpu_ms(decode_rgb, d)
            for name, spec in paths.items():
                sums[name] += _cpu_ms(inference.read_one, spec, u, len(d), None)
        for k, v in sums.items():
            per_round[k].append(v / len(files))
    return {k: statistics.median(v) for k, v in per_round.items()}


def _steps_original(d: bytes, spec) -> dict[str, float]:
    from alle_dist.imaging.model_input import preprocess

    t0 = time.process_time()
    rgb = decode_rgb(d, spec.max_pixels)
    t1 = time.process_time()
    field_stats.features(rgb, spec.segment)
    t2 = time.process_time()
    preprocess(rgb, spec.image_size, spec.segment)
    t3 = time.process_time()
    return {"decode": t1 - t0, "field statistics": t2 - t1, "segment + resize": t3 - t2}


def _steps_working(d: bytes, spec) -> dict[str, float]:
    from alle_dist.imaging.model_input import decode, preprocess

    t0 = time.process_time()
    rgb = decode(d, spec.working_size, spec.max_pixels)
    t1 = time.process_time()
    prepared = preprocess(rgb, spec.image_size, spec.segment, spec.working_size)
    t2 = time.process_time()
    field_stats.features_of(prepared.field)
    t3 = time.process_time()
    return {"decode (reduced)": t1 - t0, "resize + HSV + mask + model input": t2 - t1, "field statistics": t3 - t2}


def breakdown(files: list[str], paths: dict, rounds: int) -> dict[str, dict[str, float]]:
    """Each path's steps timed apart: median over rounds of the mean CPU ms per image."""
    data = [Path(f).read_bytes() for f in files]
    steps = {"original": _steps_original, "working": _steps_working}
    out = {}
    for name, spec in paths.items():
        per_round: dict[str, list[float]] = {}
        for _ in range(rounds):
            sums: dict[str, float] = {}
            for d in data:
                for k, v in steps[name](d, spec).items():
                    sums[k] = sums.get(k, 0.0) + v * 1e3 / len(data)
            for k, v in sums.items():
                per_round.setdefault(k, []).append(v)
        out[name] = {k: statistics.median(v) for k, v in per_round.items()}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=SHARED, help="folder of .jpg source fields (default: the shared images)")
    p.add_argument("--sizes", default=SIZES, help=f"comma-separated WxH (default {SIZES})")
    p.add_argument("--n-images", type=int, default=40, help="images per size (default 40)")
    p.add_argument("--rounds", type=int, default=5, help="timed passes over every image (default 5)")
    p.add_argument("--image-size", type=int, default=224, help="model input (default 224)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-breakdown", action="store_true", help="skip the per-step breakdown")
    args = p.parse_args()
    cv2.setNumThreads(1)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    paths = read_paths(args.image_size)
    results, steps = {}, {}
    with tempfile.TemporaryDirectory(prefix="readpath-") as tmp:
        made = make_images(args.data, sizes, args.n_images, args.seed, Path(tmp))
        for (w, h), files in made.items():
            results[f"{w}x{h}"] = time_size(files, paths, args.rounds)
            if not args.no_breakdown:
                steps[f"{w}x{h}"] = breakdown(files, paths, max(1, args.rounds // 2))
    print_table(results, steps, list(paths))
    print(json.dumps({"bench": "read_path", "cpu": _cpu_name(), "threads": 1, "n_images": args.n_images,
                      "rounds": args.rounds, "image_size": args.image_size, "jpeg_quality": 90,
                      "ms_per_image": {s: {k: round(v, 3) for k, v in r.items()} for s, r in results.items()},
                      "ratio_to_decode": {s: {k: round(r[k] / r["decode"], 3) for k in paths} for s, r in results.items()},
                      "images_per_s_one_core": {s: {k: round(1e3 / r[k], 1) for k in paths} for s, r in results.items()},
                      "steps_ms": {s: {k: {n: round(v, 3) for n, v in d.items()} for k, d in r.items()}
                                   for s, r in steps.items()}}))


def print_table(results: dict, steps: dict, paths: list[str]) -> None:
    head = ["image", "decode ms"] + [f"{k} ms" for k in paths] + [f"{k} / decode" for k in paths] + \
        [f"{k} img/s/core" for k in paths]
    print("| " + " | ".join(head) + " |\n|" + " --- |" * len(head))
    for size, r in results.items():
        cells = [size.replace("x", " × "), f"{r['decode']:.2f}"] + [f"{r[k]:.2f}" for k in paths] + \
            [f"{r[k] / r['decode']:.2f}×" for k in paths] + [f"{1e3 / r[k]:.0f}" for k in paths]
        print("| " + " | ".join(cells) + " |")
    for size, by_path in steps.items():
        for name, parts in by_path.items():
            print(f"  {size} {name}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in parts.items()))


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
