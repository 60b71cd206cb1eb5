"""Bulk classification throughput: the whole `classify` job vs a bare in-process loop, same machine, one run.

    .venv/bin/python bench/classify_throughput.py [--device cpu|cuda] [--n-images N] [--batch-size B]
        [--backbones resnet50,densenet201] [--data SRC] [--num-cpus N] [--decode-threads N]
        [--models-only [--compile] [--steps N]]

Bare loop: read + sha256 + decode + segment + resize (a thread pool of --decode-threads, prefetching
ahead of the models, like a DataLoader) → both models → OOD scores + ensemble, in this process.
Job: `classify.run.setup` + `execute` on a private local Ray (read tasks → one model actor per GPU,
or CPU actors → decider tasks → the driver's MERGE commits into the Delta table), timed from
execute() start to the last commit, actor start-up included.

Models are untrained (`pretrained=none`, same compute as trained ones). Images: --data, else
../shared/data/leukemia, else a synthetic set; cycled through symlinks when --n-images exceeds them.
Prints one JSON line: both rates (images/s), their ratio (goal on one GPU ≥ 0.85) and the setup.

--models-only: the bare ensemble alone, the ceiling the read path has to feed: every member's
Predictor (bf16 autocast + channels_last on CUDA, as served) on one uint8 batch already in host
memory, --steps calls after a warm-up; --compile wraps each member's forward_features in
torch.compile first (goal on an H200 with bf16 + compile: ≥ 8 000 images/s).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
from alle_dist.classify import pipeline as cls_pipeline
from alle_dist.classify import run as cls_run
from alle_dist.classify import planning
from alle_dist.config import ClassifyConfig, JobConfig
from alle_dist.io import storage
from alle_dist.models import inference

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))   # helpers_run.make_run_dir: the tests' real run directory


SHARED = ROOT.parent / "shared" / "data" / "leukemia"


def inputs(args, tmp: str) -> str:
    """A folder of exactly --n-images images (symlinks cycling over the source files)."""
    src = args.data or (str(SHARED) if SHARED.is_dir() else None)
    if src is None:
        from alle_dist.testing import synthetic
        src = synthetic.generate(f"{tmp}/syn", n_per_class=max(args.n_images // 4, 8))
    files = storage.list_images(src)
    if storage.is_s3(src):
        return src  # the job reads the prefix as it is
    out = Path(tmp) / "in"
    for i in range(args.n_images):
        rel = files[i % len(files)]
        link = out / f"c{i // len(files)}" / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path(src, rel).resolve())
    return str(out)


def bare_loop(plan: cls_run.Job, device: str, batch_size: int, threads: int) -> float:
    """images/s of read + decode + segment (threads, prefetched) → models → ensemble in one process."""
    core = cls_pipeline.Classifier(plan.models, "bare", device)
    todo = pa.concat_tables([planning.plan_chunk(c, planning.empty_index(False), False).todo for c in plan.chunks])
    chunks = [todo.slice(i, batch_size) for i in range(0, todo.num_rows, batch_size)]
    core(inference.read_batch(chunks[0], plan.prep))               # warm-up: not timed
    t = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        n = sum(core(b).num_rows for b in pool.map(lambda c: inference.read_batch(c, plan.prep), chunks))
    _sync(device)
    return n / (time.perf_counter() - t)


def models_only(plan: cls_run.Job, device: str, batch_size: int, steps: int, compile_: bool) -> float:
    """images/s of the ensemble's members on a uint8 batch in host memory: no read path, no decider."""
    import numpy as np
    import torch

    runner = inference.ModelRunner(cls_pipeline.model_dirs(plan.models), device)
    if compile_:
        for p in runner.predictors.values():   # the Predictor calls forward_features, not forward
            p.model.forward_features = torch.compile(p.model.forward_features)
    images = np.random.default_rng(0).integers(0, 256, (batch_size, runner.image_size, runner.image_size, 3),
                                               dtype=np.uint8)
    for _ in range(2):                         # warm-up (and compilation): not timed
        [p(images) for p in runner.predictors.values()]
    _sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        [p(images) for p in runner.predictors.values()]
    _sync(device)
    return steps * batch_size / (time.perf_counter() - t)


def job(plan: cls_run.Job) -> float:
    t = time.perf_counter()
    problems = cls_run.execute(plan)
    if problems:
        raise SystemExit(f"classify job incomplete: {problems}")
    return plan.counts["committed"] / (time.perf_counter() - t)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch
        torch.cuda.synchronize()


def main() -> None:
    import torch

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--n-images", type=int, default=None, help="default: 8192 on GPU, 512 on CPU")
    p.add_argument("--batch-size", type=int, default=None, help="images per model call (default: 256 GPU, 64 CPU)")
    p.add_argument("--backbones", default=None,
                   help="default: resnet50,densenet201 on GPU; test_resnet,test_efficientnet on CPU")
    p.add_argument("--image-size", type=int, default=None, help="model input (default: 224 GPU, 64 CPU)")
    p.add_argument("--data", default=None, help="folder or s3:// prefix of images")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    p.add_argument("--decode-threads", type=int, default=None, help="bare loop's decode threads (default: all CPUs)")
    p.add_argument("--models-only", action="store_true", help="time the bare ensemble alone (no read path)")
    p.add_argument("--compile", action="store_true", help="with --models-only: torch.compile each member")
    p.add_argument("--steps", type=int, default=20, help="with --models-only: timed batches")
    args = p.parse_args()
    gpu = args.device.startswith("cuda")
    args.n_images = args.n_images or (8192 if gpu else 512)
    batch = args.batch_size or (256 if gpu else 64)
    backbones = (args.backbones or ("resnet50,densenet201" if gpu else "test_resnet,test_efficientnet")).split(",")
    size = args.image_size or (224 if gpu else 64)
    cpus = args.num_cpus or os.cpu_count()
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

    from helpers_run import make_run_dir
    tmp = tempfile.mkdtemp(prefix="clsbench-")
    run = str(make_run_dir(Path(tmp) / "run", backbones=tuple(backbones), image_size=size, gamma=0.7))
    src = inputs(args, tmp)
    cfg = JobConfig(classify=ClassifyConfig(batch_size=batch, commit_rows=50_000, gpus=1 if gpu else 0))
    setup = {"bench": "classify_throughput", "device": args.device,
             "card": torch.cuda.get_device_name(0) if gpu else None, "cpus": cpus, "batch_size": batch,
             "backbones": backbones, "image_size": size}
    if args.models_only:
        rate = models_only(cls_run.setup(run, src, f"{tmp}/bare", cfg), args.device, batch, args.steps, args.compile)
        print(json.dumps({**setup, "mode": "models_only", "precision": "bf16" if gpu else "fp32",
                          "compile": args.compile, "steps": args.steps, "ensemble_images_per_s": round(rate, 1),
                          "goal_images_per_s_h200": 8000}))
        return
    bare = bare_loop(cls_run.setup(run, src, f"{tmp}/bare", cfg), args.device, batch,
                     args.decode_threads or cpus)

    from alle_dist.runtime import init_ray
    init_ray(num_cpus=cpus)
    whole = job(cls_run.setup(run, src, f"{tmp}/out", cfg))
    print(json.dumps({
        **setup, "n_images": args.n_images,
        "bare_loop_images_per_s": round(bare, 1), "job_images_per_s": round(whole, 1),
        "ratio_job_to_bare": round(whole / bare, 3), "goal_ratio_gpu": 0.85,
    }))


if __name__ == "__main__":
    main()
