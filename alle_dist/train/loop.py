"""The Ray Train worker: the paper's recipe (Adam, cross-entropy) with per-epoch validation and
checkpoints that resume. Core pieces (`train_epoch`, `train_step`, `evaluate`, `replica_digest`) are
Ray-free; `train_loop` runs on each Train worker, fed by Ray Data shards.

The loop gets one frozen `LoopConfig` (the recipe) and a separate `TestHooks` (fault injection for
the resume tests), never a loose dict.
"""
from __future__ import annotations

import hashlib
import tempfile
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..io import storage
from ..models import persistence
from ..models import registry
from ..models.predictor import to_model_input
from ..models.preprocessing import Preprocessing


@dataclass(frozen=True)
class TestHooks:
    """Fault injection for the resume tests (all off by default)."""
    fail_at_epoch: int | None = None     # the last rank raises once at the start of this epoch
    fail_marker: str | None = None       # a file that remembers the failure happened (across restarts)
    pause_s: float = 0.0                 # each worker pauses after reporting an epoch


@dataclass(frozen=True)
class LoopConfig:
    """What a Train worker needs: the recipe, the input geometry and the meta to checkpoint."""
    backbone: str
    classes: tuple[str, ...]
    prep: Preprocessing                  # input size and normalisation (the read tasks segment and resize)
    pretrained: str
    lr: float
    epochs: int
    batch_size: int
    seed: int
    compile: bool = False
    meta: dict = field(default_factory=dict)   # written into every checkpoint's meta.json
    hooks: TestHooks = TestHooks()


# ---------------------------------------------------------------- core (Ray-free)

def train_epoch(model, opt, batches, image_size: int, mean, std, amp: bool) -> tuple[float, int]:
    """One pass over `batches` ({"image": uint8 NHWC, "label"} on the device): (summed loss, images)."""
    model.train()
    total, n = torch.zeros((), dtype=torch.float64, device=mean.device), 0
    for batch in batches:
        loss = train_step(model, opt, batch["image"], batch["label"], image_size, mean, std, amp)
        total += loss * len(batch["label"])  # summed on the device: no GPU sync per step
        n += len(batch["label"])
    return float(total), n


def train_step(model, opt, images, labels, image_size: int, mean, std, amp: bool) -> torch.Tensor:
    """One Adam step on a uint8 NHWC batch already on the device; returns the (detached) loss."""
    x = to_model_input(images, image_size, mean, std)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        loss = F.cross_entropy(model(x), labels)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


@torch.no_grad()
def evaluate(model, batches, image_size: int, mean, std, amp: bool) -> tuple[float, int, int]:
    """(summed cross-entropy, correct, images) over `batches`, without augmentation."""
    model.eval()
    total, correct, n = 0.0, 0, 0
    for batch in batches:
        x = to_model_input(batch["image"], image_size, mean, std)
        y = batch["label"]
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            logits = model(x).float()
        total += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
        n += len(y)
    return total, correct, n


def replica_digest(model: torch.nn.Module) -> str:
    """sha256 of the parameters: equal on every DDP rank when gradients are synchronised."""
    h = hashlib.sha256()
    for name, p in persistence.unwrap(model).named_parameters():
        h.update(name.encode())
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------- Ray Train worker

def _all_sum(values: list[float], device) -> list[float]:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def _all_digests(model) -> list[str]:
    import torch.distributed as dist

    digest = replica_digest(model)
    if not (dist.is_available() and dist.is_initialized()):
        return [digest]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, digest)
    return out


def _setup(loop_cfg: LoopConfig, device):
    """Model (restored from the Train checkpoint if there is one), optimizer, history, resume point."""
    import ray.train
    import ray.train.torch

    ckpt = ray.train.get_checkpoint()
    restored = None
    if ckpt is not None:
        with ckpt.as_directory() as d:
            restored = persistence.read_checkpoint(d)
    model = registry.create(loop_cfg.backbone, len(loop_cfg.classes), "none" if restored else loop_cfg.pretrained)
    if restored:
        model.load_state_dict(restored[0])
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(model)
    if loop_cfg.compile and device.type == "cuda":
        model = torch.compile(model)
    opt = torch.optim.Adam(model.parameters(), lr=loop_cfg.lr)
    meta = restored[2] if restored else {}
    if restored:
        persistence.restore_optimizer(opt, restored[1], meta["optimizer"]["param_groups"])
    return model, opt, list(meta.get("epochs", [])), list(meta.get("resumed_at", []))


def _maybe_fail(hooks: TestHooks, epoch: int, last_rank: bool) -> None:
    """The fault-injection hook: the last rank raises once at the start of that epoch (a marker file
    beside the checkpoints remembers that it did, across restarts and drivers)."""
    if epoch != hooks.fail_at_epoch or not last_rank or storage.exists(hooks.fail_marker):
        return
    storage.write_bytes(hooks.fail_marker, b"injected\n")
    raise RuntimeError(f"injected failure at epoch {epoch} (test hook)")


def train_loop(loop_cfg: LoopConfig) -> None:
    """Ray Train worker: the paper's recipe (Adam, CE) with per-epoch validation and checkpoints."""
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    amp = device.type == "cuda"
    torch.backends.cudnn.benchmark = amp  # fixed input size: cuDNN picks its fastest algorithms once
    model, opt, history, resumed_at = _setup(loop_cfg, device)
    start = history[-1]["epoch"] + 1 if history else 1
    if history and start <= loop_cfg.epochs:
        resumed_at.append(start)
    mean = torch.tensor(loop_cfg.prep.mean, device=device)
    std = torch.tensor(loop_cfg.prep.std, device=device)
    shards = ray.train.get_dataset_shard("train"), ray.train.get_dataset_shard("val")
    for epoch in range(start, loop_cfg.epochs + 1):
        _maybe_fail(loop_cfg.hooks, epoch, rank == world - 1)
        torch.manual_seed(loop_cfg.seed * 1000 + epoch * 10 + rank)  # dropout etc.: reproducible per epoch
        entry = _epoch(loop_cfg, model, opt, shards, epoch, device, mean, std, amp)
        entry["world_size"], entry["replica_digests"] = world, _all_digests(model)
        history.append(entry)
        _report(loop_cfg, entry, rank, model, opt, history, resumed_at)
        time.sleep(loop_cfg.hooks.pause_s)


def _epoch(loop_cfg: LoopConfig, model, opt, shards, epoch: int, device, mean, std, amp: bool) -> dict:
    """Train one epoch and validate; the history entry (summed over ranks)."""
    t0 = time.perf_counter()
    bs = loop_cfg.batch_size
    batches = shards[0].iter_torch_batches(batch_size=bs, device=device, local_shuffle_buffer_size=4 * bs,
                                           local_shuffle_seed=loop_cfg.seed + epoch)
    tl, tn = train_epoch(model, opt, batches, loop_cfg.prep.image_size, mean, std, amp)
    train_s = time.perf_counter() - t0
    vl, vc, vn = evaluate(persistence.unwrap(model), shards[1].iter_torch_batches(batch_size=bs, device=device),
                          loop_cfg.prep.image_size, mean, std, amp)
    tl, tn, vl, vc, vn = _all_sum([tl, tn, vl, vc, vn], device)
    return {"epoch": epoch, "train_loss": tl / max(tn, 1), "val_loss": vl / max(vn, 1),
            "val_acc": vc / max(vn, 1), "train_images": int(tn), "val_images": int(vn),
            "train_images_per_s": tn / max(train_s, 1e-9), "seconds": time.perf_counter() - t0}


def _report(loop_cfg: LoopConfig, entry: dict, rank: int, model, opt, history, resumed_at) -> None:
    """Every rank reports; rank 0 attaches the checkpoint (model + optimizer + history)."""
    import ray.train

    metrics = {k: entry[k] for k in ("epoch", "train_loss", "val_loss", "val_acc", "train_images_per_s",
                                     "seconds")}
    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as d:
        persistence.write_checkpoint(d, model, opt, {**loop_cfg.meta, "epochs": history, "resumed_at": resumed_at})
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
