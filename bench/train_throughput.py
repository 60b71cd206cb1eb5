"""Training throughput: the Ray Train job vs a bare PyTorch loop, and DenseNet-201 vs ResNet-50.

Both sides run the same `alle_dist.train.train_step` (uint8 batch → device → normalise → Adam step;
bf16 autocast on CUDA) on the same device, model and batch, on synthetic uint8 images, so the ratio
measures what Ray Train + Ray Data feeding cost. Goals on a GPU: Ray ≥ 0.9x bare; DenseNet-201
≥ 0.45x ResNet-50 images/s. Printed, never asserted; the last line is one JSON object.

    python bench/train_throughput.py --device cuda --backbone resnet50 --batch-size 64 --steps 30
    python bench/train_throughput.py --mode members --device cuda --batch-size 128 --channels-last --compile
    python bench/train_throughput.py --device cpu --backbone test_resnet --image-size 64 --steps 5   # tiny CPU run
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
from alle_dist.models import registry
from alle_dist.train.loop import train_step

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))



def _images(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), rng.integers(0, 4, n).astype(np.int64)


def _model(opts, device):
    # Imported here, not reached as torch.backends.cudnn: this script's functions are pickled by value
    # for the Ray workers, and cloudpickle can't pickle cudnn's module object.
    from torch.backends import cudnn

    # Fixed input shapes: let cuDNN time its algorithms once (DenseNet's many conv shapes gain most).
    cudnn.benchmark = opts["cudnn_benchmark"]
    model = registry.create(opts["backbone"], 4, "none").to(device)
    if opts["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    return model


def timed_steps(model, batches, opts, device) -> float:
    """images/s over the batches after `warmup` steps; the same code in both loops."""
    size = opts["image_size"]
    mean, std = (torch.tensor(v, device=device) for v in registry.default_normalisation(opts["backbone"]))
    step = torch.compile(model) if opts["compile"] else model
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    amp, n, t0 = device.type == "cuda", 0, None
    for i, (img, lab) in enumerate(batches):
        if i == opts["warmup"]:
            _sync(device)
            t0, n = time.perf_counter(), 0
        train_step(step, opt, img.to(device, non_blocking=True), lab.to(device, non_blocking=True),
                   size, mean, std, amp)
        n += len(lab)
    _sync(device)
    return n / (time.perf_counter() - t0)


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare(opts) -> float:
    device = torch.device(opts["device"])
    torch.set_num_threads(opts["threads"])  # as many as the Ray worker gets (its CPU resource)
    bs, steps = opts["batch_size"], opts["steps"] + opts["warmup"]
    x, y = _images(bs * steps, opts["image_size"])
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    if device.type == "cuda":
        xt, yt = xt.pin_memory(), yt.pin_memory()
    batches = ((xt[i * bs:(i + 1) * bs], yt[i * bs:(i + 1) * bs]) for i in range(steps))
    return timed_steps(_model(opts, device), batches, opts, device)


def _ray_worker(opts) -> float:
    import ray.train
    import ray.train.torch

    device = ray.train.torch.get_device()
    torch.set_num_threads(opts["threads"])
    model = ray.train.torch.prepare_model(_model(opts, device))
    shard = ray.train.get_dataset_shard("train")
    it = shard.iter_torch_batches(batch_size=opts["batch_size"], drop_last=True, prefetch_batches=4,
                                  dtypes={"image": torch.uint8, "label": torch.int64})
    return timed_steps(model, ((b["image"], b["label"]) for b in it), opts, device)


def _with_labels(batch: dict) -> dict:
    """Throughput does not depend on the labels: class = row position mod 4."""
    return {"image": batch["data"], "label": np.arange(len(batch["data"]), dtype=np.int64) % 4}


def ray_train(opts) -> float:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from alle_dist.runtime import init_ray

    init_ray(opts["num_cpus"])
    bs, steps = opts["batch_size"], opts["steps"] + opts["warmup"]
    x, _ = _images(bs * steps, opts["image_size"])
    ds = ray.data.from_numpy(x).map_batches(_with_labels, batch_size=bs)
    gpu = opts["device"] == "cuda"
    trainer = TorchTrainer(
        _ray_worker, train_loop_config=opts, datasets={"train": ds},
        scaling_config=ScalingConfig(num_workers=1, use_gpu=gpu, resources_per_worker={"CPU": opts["threads"], **({"GPU": 1} if gpu else {})}),
        run_config=RunConfig(name=f"bench-{os.getpid()}-{time.time_ns()}", storage_path="/tmp/alle_dist_bench"))
    return trainer.fit().return_value  # rank 0's images/s


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mode", choices=["ray", "members", "all"], default="ray",
                   help="ray: Ray Train vs bare loop; members: densenet201 vs resnet50 (bare loop); all: both")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="default: on for CUDA")
    p.add_argument("--num-cpus", type=int, default=None)
    p.add_argument("--cudnn-benchmark", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads of both loops (= the Ray worker's CPUs); default 1 on CPU, 4 on CUDA")
    a = p.parse_args()
    opts = {k: getattr(a, k) for k in ("device", "backbone", "batch_size", "steps", "warmup", "image_size",
                                       "compile", "num_cpus", "threads", "cudnn_benchmark")}
    opts["threads"] = a.threads or (4 if a.device == "cuda" else 1)
    opts["channels_last"] = a.channels_last if a.channels_last is not None else a.device == "cuda"
    out: dict = {"opts": opts, "torch": torch.__version__,
                 "gpu": torch.cuda.get_device_name(0) if a.device == "cuda" else None}
    if a.mode in ("ray", "all"):
        out["bare_images_per_s"] = bare(opts)
        out["ray_images_per_s"] = ray_train(opts)
        out["ray_vs_bare"] = out["ray_images_per_s"] / out["bare_images_per_s"]
        print(f"{a.backbone}: bare {out['bare_images_per_s']:.1f} img/s, Ray Train {out['ray_images_per_s']:.1f} "
              f"img/s, ratio {out['ray_vs_bare']:.3f} (goal >= 0.9 on GPU)")
    if a.mode in ("members", "all"):
        rates = {b: bare({**opts, "backbone": b}) for b in ("densenet201", "resnet50")}
        out["members_images_per_s"] = rates
        out["densenet_vs_resnet"] = rates["densenet201"] / rates["resnet50"]
        print(f"densenet201 {rates['densenet201']:.1f} img/s, resnet50 {rates['resnet50']:.1f} img/s, "
              f"ratio {out['densenet_vs_resnet']:.3f} (goal >= 0.45 on GPU)")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
