"""One frozen config type per stage, composed into one job config.

Precedence: the dataclass defaults < the stage's section of a YAML file (`--config FILE`) <
the command line. Every stage saves the resolved config beside its outputs (`save_resolved`).
A YAML section is named like the stage (`prepare:`, `segment:`, `augment:`, `train:`, `tune:`,
`evaluate:`, `classify:`); an unknown key is an error that lists the valid ones.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import yaml

from . import storage


class ConfigError(ValueError):
    """A config value that can't be used; the message names the key and the fix."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass(frozen=True)
class PrepareConfig:
    seed: int = 0
    test_fraction: float = 0.35        # the paper's 65 / 35 split
    val_fraction: float = 0.10         # of the train split
    hash_workers: int | None = None    # Ray Data tasks for reading + hashing; None = cluster CPUs

    def __post_init__(self):
        _check(0 < self.test_fraction < 1, f"prepare.test_fraction={self.test_fraction}: must be in (0, 1)")
        _check(0 <= self.val_fraction < 1, f"prepare.val_fraction={self.val_fraction}: must be in [0, 1)")


@dataclass(frozen=True)
class SegmentConfig:
    # OpenCV HSV (H in 0..179, S and V in 0..255). Chosen on the shared real images: see docs/segmentation.md.
    hsv_lower: tuple[int, int, int] = (120, 30, 40)
    hsv_upper: tuple[int, int, int] = (179, 255, 255)
    open_kernel: int = 3               # morphological opening removes speckle
    close_kernel: int = 5              # closing fills small holes in the nucleus
    min_component_px: int = 0          # connected components smaller than this are dropped (0 = keep all)
    background: int = 0                # value of masked-out pixels

    def __post_init__(self):
        object.__setattr__(self, "hsv_lower", tuple(int(v) for v in self.hsv_lower))
        object.__setattr__(self, "hsv_upper", tuple(int(v) for v in self.hsv_upper))
        for name in ("hsv_lower", "hsv_upper"):
            v = getattr(self, name)
            _check(len(v) == 3 and 0 <= v[0] <= 179 and all(0 <= x <= 255 for x in v[1:]),
                   f"segment.{name}={list(v)}: need [H 0-179, S 0-255, V 0-255]")
        _check(all(lo <= hi for lo, hi in zip(self.hsv_lower, self.hsv_upper)),
               "segment.hsv_lower must be <= segment.hsv_upper in every channel")


@dataclass(frozen=True)
class AugmentConfig:
    image_size: int = 224              # 227 for AlexNet (the backbone registry says)
    rotation_deg: float = 30.0         # random rotation in both directions
    translate: float = 0.1             # fraction of width / height, both ways
    scale_min: float = 0.9             # x and y scaled independently in [scale_min, scale_max]
    scale_max: float = 1.1
    flips: bool = True

    def __post_init__(self):
        _check(self.image_size >= 16, "augment.image_size must be >= 16")
        _check(0 < self.scale_min <= self.scale_max, "augment.scale_min must be in (0, scale_max]")


@dataclass(frozen=True)
class TrainConfig:
    backbone: str = "resnet50"
    epochs: int = 10                   # the paper's recipe: Adam, lr 1e-4, 10 epochs, batch 32, 224²
    batch_size: int = 32               # per worker
    lr: float = 1e-4
    image_size: int | None = None      # None = the backbone's default (224; 227 for AlexNet)
    workers: int | None = None         # None = one per GPU in the cluster (2 CPU workers without GPUs)
    gpus_per_worker: float | None = None   # None = 1 when the cluster has GPUs, else 0
    pretrained: str = "hub"            # hub | none | PATH to a weights file
    limit: int | None = None           # use at most this many training images (tests, smoke runs)
    seed: int = 0
    segmented: bool = True             # train on HSV-segmented images (the paper) or the originals
    max_failures: int = 2              # worker-group restarts from the last checkpoint
    compile: bool = False              # torch.compile on GPU

    def __post_init__(self):
        _check(self.epochs >= 1, "train.epochs must be >= 1")
        _check(self.batch_size >= 1, "train.batch_size must be >= 1")
        _check(self.lr > 0, "train.lr must be > 0")


@dataclass(frozen=True)
class TuneConfig:
    backbones: tuple[str, ...] = ("densenet201", "resnet50")
    objective: str = "accuracy_referral_as_error"
    min_coverage: float = 0.98         # in-distribution coverage floor (validation)
    num_samples: int = 40              # trials of the continuous search (besides the paper's grid)
    seed: int = 0
    temperature_scaling: bool = True

    def __post_init__(self):
        object.__setattr__(self, "backbones", tuple(self.backbones))
        _check(len(self.backbones) >= 1, "tune.backbones: give at least one backbone")
        _check(0 <= self.min_coverage <= 1, "tune.min_coverage must be in [0, 1]")


@dataclass(frozen=True)
class EvaluateConfig:
    max_corrections_copied: int = 1000


@dataclass(frozen=True)
class ClassifyConfig:
    batch_size: int = 64
    gpus: int | None = None            # GPU actors; None = every GPU in the cluster
    cpu_workers: int | None = None     # CPU actors when there is no GPU; None = sized from the cluster
    decode_tasks: int | None = None
    max_pixels: int = 50_000_000       # larger images are refused before a full decode
    rows_per_file: int = 100_000


STAGE_CONFIGS: dict[str, type] = {
    "prepare": PrepareConfig, "segment": SegmentConfig, "augment": AugmentConfig,
    "train": TrainConfig, "tune": TuneConfig, "evaluate": EvaluateConfig, "classify": ClassifyConfig,
}


@dataclass(frozen=True)
class JobConfig:
    """Every stage's config; what `save_resolved` writes beside a stage's outputs."""
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    classify: ClassifyConfig = field(default_factory=ClassifyConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_yaml(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    data = yaml.safe_load(storage.read_bytes(path)) or {}
    _check(isinstance(data, dict), f"{path}: a config file must be a mapping of stage sections")
    unknown = set(data) - set(STAGE_CONFIGS)
    _check(not unknown, f"{path}: unknown section(s) {sorted(unknown)}; valid: {sorted(STAGE_CONFIGS)}")
    return data


def build(cls: type, section: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None):
    """cls from defaults < section < overrides (None values in overrides are ignored)."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = dict(section or {})
    unknown = set(values) - names
    _check(not unknown, f"{cls.__name__}: unknown key(s) {sorted(unknown)}; valid: {sorted(names)}")
    values.update({k: v for k, v in (overrides or {}).items() if k in names and v is not None})
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(f"{cls.__name__}: {exc}") from None


def job_config(yaml_path: str | None = None, **overrides: dict[str, Any]) -> JobConfig:
    """The JobConfig from a YAML file and per-stage overrides, e.g. train={"epochs": 2}."""
    data = load_yaml(yaml_path)
    parts = {name: build(cls, data.get(name), overrides.get(name)) for name, cls in STAGE_CONFIGS.items()}
    return JobConfig(**parts)


def save_resolved(uri: str, cfg: JobConfig, **extra: Any) -> None:
    """Write the resolved config (plus stage arguments such as paths) as YAML at `uri`."""
    doc = {**extra, **cfg.to_dict()}
    storage.write_bytes(uri, yaml.safe_dump(_plain(doc), sort_keys=False).encode())


def _plain(obj):
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj
