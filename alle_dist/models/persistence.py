"""Model files: `model.safetensors` + `meta.json`, local or s3://; sha256 checked on every load.

Also the side files of a model folder (`ood.safetensors`) and training checkpoints (the model files
plus `optimizer.safetensors`, the Adam state without pickle).

Never pickles: weights (and optimiser state, OOD statistics) are safetensors, everything else JSON.
A file whose bytes don't match the sha256 recorded beside it, or that won't parse, raises
`ModelIntegrityError`: a damaged model or checkpoint is an error, never a silent fresh start.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np
import torch
from torch import nn

from ..errors import ModelIntegrityError, StorageError
from ..io import storage
from ..rundir import ModelDir
from . import preprocessing

WEIGHTS_FILE, META_FILE = ModelDir.WEIGHTS, ModelDir.META
FORMAT_VERSION = 1
# Besides these, a readable preprocessing record (models.preprocessing.read).
REQUIRED_META = ("architecture", "classes")


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP (`.module`) and torch.compile (`._orig_mod`) wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def save_tensors(uri: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> str:
    """Write a safetensors file atomically; returns the sha256 of its bytes."""
    from safetensors.torch import save

    data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)
    storage.write_bytes(uri, data)
    return hashlib.sha256(data).hexdigest()


def load_tensors(uri: str, sha256: str | None) -> dict[str, torch.Tensor]:
    """Read a safetensors file, checking its bytes against `sha256` (None = only parse)."""
    from safetensors.torch import load

    try:
        data = storage.read_bytes(uri)
    except (FileNotFoundError, OSError) as exc:
        raise ModelIntegrityError(f"{uri}: missing or unreadable ({exc}); the model folder is incomplete: "
                                  "retrain or restore it") from None
    actual = hashlib.sha256(data).hexdigest()
    if sha256 is not None and actual != sha256:
        raise ModelIntegrityError(f"{uri}: sha256 {actual[:12]}… does not match {sha256[:12]}… recorded in "
                                  f"{META_FILE}; the file was changed or damaged: retrain or restore it")
    try:
        return load(data)
    except Exception as exc:  # noqa: BLE001 - any parser failure means a damaged file
        raise ModelIntegrityError(f"{uri}: not a valid safetensors file ({exc}); retrain or restore it") from None


INTEGRITY = "meta_sha256"   # meta.json's own hash: edits behind the weights' hash are caught


def _canonical(meta: dict) -> bytes:
    body = {k: v for k, v in meta.items() if k != INTEGRITY}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()


def write_meta(model_dir: str, meta: dict) -> dict:
    """Write the meta file with its own sha256 (over everything else in it, the weights' and the referral
    statistics' sha256 included): that hash is the model's identity (`model_id`)."""
    final = {**meta, INTEGRITY: hashlib.sha256(_canonical(meta)).hexdigest()}
    storage.write_json(storage.join(model_dir, META_FILE), final)
    return final


def model_id(meta: dict) -> str:
    """The model's identity: covers its weights, its meta.json (preprocessing, classes, lineage) and its
    referral statistics, since meta.json records their sha256 and its own hash covers those."""
    return meta[INTEGRITY]


def read_meta(model_dir: str) -> dict:
    uri = storage.join(model_dir, META_FILE)
    if not storage.exists(uri):
        raise StorageError(f"{model_dir}: no {META_FILE} here; train the model first (alle-dist train) "
                           "or check the path")
    try:
        meta = json.loads(storage.read_bytes(uri))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelIntegrityError(f"{uri}: not valid JSON ({exc}); retrain or restore it") from None
    missing = [k for k in REQUIRED_META + ("sha256", INTEGRITY) if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise ModelIntegrityError(f"{uri}: missing key(s) {missing}; retrain or restore it")
    preprocessing.read(meta)   # a model without a usable input record can't be used anywhere
    if hashlib.sha256(_canonical(meta)).hexdigest() != meta[INTEGRITY]:
        raise ModelIntegrityError(f"{uri}: edited after it was written (its {INTEGRITY} does not match its "
                                  "contents); retrain the model or restore the original file")
    return meta


def check_files(model_dir: str) -> dict:
    """The model's meta (its own hash checked) after checking the weights' and the OOD statistics' bytes against
    the sha256 it records, without parsing them: what every stage that reads a model (train's "already
    trained", tune, evaluate, classify) runs once before any work. ModelIntegrityError names the file."""
    meta = read_meta(model_dir)
    files = [(meta.get("weights_file", WEIGHTS_FILE), meta["sha256"])]
    if isinstance(meta.get("ood"), dict):
        files.append((meta["ood"]["file"], meta["ood"]["sha256"]))
    for name, expected in files:
        uri = storage.join(model_dir, name)
        try:
            actual = _sha256_of(uri)
        except OSError as exc:
            raise ModelIntegrityError(f"{uri}: missing or unreadable ({storage.first_line(exc)}); the model folder "
                                      "is incomplete: retrain it (`alle-dist train --retrain`) or restore it") from None
        if actual != expected:
            raise ModelIntegrityError(f"{uri}: sha256 {actual[:12]}… does not match {expected[:12]}… recorded in "
                                      f"{META_FILE} (changed or damaged, e.g. cut short); retrain it (`alle-dist "
                                      "train --retrain`) or restore the file")
    return meta


def _sha256_of(uri: str) -> str:
    fs, path = storage.resolve(uri)
    h = hashlib.sha256()
    with fs.open_input_stream(path) as f:
        while block := f.read(8 << 20):
            h.update(block)
    return h.hexdigest()


def save_model(model_dir: str, model: nn.Module, meta: dict) -> dict:
    """Write the weights, then meta.json (with their sha256) last: meta.json marks a complete model."""
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ValueError(f"save_model: meta lacks {missing}")
    preprocessing.read(meta)
    sha = save_tensors(storage.join(model_dir, WEIGHTS_FILE), unwrap(model).state_dict())
    return write_meta(model_dir, {**meta, "format": FORMAT_VERSION, "weights_file": WEIGHTS_FILE, "sha256": sha})


def load_state(model_dir: str) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, meta) after checking the weights against meta's sha256."""
    meta = read_meta(model_dir)
    return load_tensors(storage.join(model_dir, meta.get("weights_file", WEIGHTS_FILE)), meta["sha256"]), meta


def load_model(model_dir: str, device="cpu") -> tuple[nn.Module, dict]:
    """The model (eval mode, on `device`) and its meta; sha256 checked, nothing unpickled."""
    from . import registry

    state, meta = load_state(model_dir)
    model = registry.create(meta["architecture"], num_classes=len(meta["classes"]), pretrained="none")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelIntegrityError(f"{model_dir}: weights don't fit {meta['architecture']} "
                                  f"({str(exc).splitlines()[0]}); retrain or restore it") from None
    return model.to(device).eval(), meta


def copy_model(src_dir: str, dst_dir: str, **meta_updates) -> dict:
    """Publish a (checkpoint) model elsewhere: the same weight bytes, sha256 checked, meta updated."""
    meta = read_meta(src_dir)
    src = storage.join(src_dir, meta.get("weights_file", WEIGHTS_FILE))
    data = storage.read_bytes(src)
    if hashlib.sha256(data).hexdigest() != meta["sha256"]:
        load_tensors(src, meta["sha256"])  # raises the one integrity message
    storage.write_bytes(storage.join(dst_dir, WEIGHTS_FILE), data)
    final = {k: v for k, v in {**meta, **meta_updates}.items() if v is not None}  # None drops a key
    final["weights_file"] = WEIGHTS_FILE
    return write_meta(dst_dir, final)


# ---------------------------------------------------------------- side files of a model folder

OOD_FILE = ModelDir.OOD


def save_ood(model_dir: str, stats: dict) -> dict:
    """Write the referral statistics (models.feature_distance, models.field_stats) beside a model; their sha256 goes into its meta.json."""
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in stats.items()}
    sha = save_tensors(storage.join(model_dir, OOD_FILE), tensors)
    return write_meta(model_dir, {**read_meta(model_dir), "ood": {"file": OOD_FILE, "sha256": sha}})


def load_ood(model_dir: str) -> dict:
    """The model's OOD statistics (numpy float32 arrays), sha256 checked against its meta.json."""
    meta = read_meta(model_dir)
    if "ood" not in meta:
        raise StorageError(f"{model_dir}: no OOD statistics recorded; rerun `alle-dist train` for this backbone")
    tensors = load_tensors(storage.join(model_dir, meta["ood"]["file"]), meta["ood"]["sha256"])
    return {k: v.numpy() for k, v in tensors.items()}


# ---------------------------------------------------------------- training checkpoints

OPTIMIZER_FILE = ModelDir.OPTIMIZER


def optimizer_state(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    """(tensors for safetensors, JSON param groups): an optimizer state without pickle."""
    sd = opt.state_dict()
    tensors = {f"{i}.{k}": torch.as_tensor(v) for i, st in sd["state"].items() for k, v in st.items()}
    return tensors, sd["param_groups"]


def restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list) -> None:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": groups})


def write_checkpoint(path: str, model: nn.Module, opt: torch.optim.Optimizer, meta: dict) -> None:
    """A training checkpoint: the model files plus the optimizer state, both sha256-recorded."""
    tensors, groups = optimizer_state(opt)
    sha = save_tensors(storage.join(path, OPTIMIZER_FILE), tensors)
    save_model(path, model, {**meta, "optimizer": {"file": OPTIMIZER_FILE, "sha256": sha, "param_groups": groups}})


def read_checkpoint(path: str) -> tuple[dict, dict, dict]:
    """(model state, optimizer tensors, meta) of a checkpoint folder; sha256 checked on both files."""
    state, meta = load_state(path)
    opt = meta.get("optimizer") or {}
    if "sha256" not in opt:
        raise ModelIntegrityError(f"{path}: checkpoint meta.json has no optimizer record; "
                                  "train again with --retrain or restore the checkpoint")
    return state, load_tensors(storage.join(path, opt["file"]), opt["sha256"]), meta
