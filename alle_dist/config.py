"""One frozen config type per stage, composed into one job config.

Precedence: the dataclass defaults < the stage's section of a YAML file (`--config FILE`) <
the command line. Every stage saves the resolved config beside its outputs (`save_resolved`).
A YAML section is named like the stage (`prepare:`, `segment:`, `augment:`, `train:`, `tune:`,
`evaluate:`, `classify:`, `stress:`, `review:`, `audit:`, `export:`: each class's SECTION); an
unknown key is an error that lists the valid ones, a value of the wrong type an error that names it
(`fields.build` checks every value against the field's annotation).

Command-line flags are generated from the same fields (`fields.add_flags`, `fields.overrides`), so a
flag and its YAML key can't drift apart. This module imports no pyarrow, torch or Ray (`alle-dist --help` stays fast):
`io.storage` is imported where a file is read or written.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

import yaml

from .constants import MAX_PIXELS, NEAR_RADIUS
from .errors import ConfigError
from .fields import build


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass(frozen=True)
class PrepareConfig:
    SECTION: ClassVar[str] = "prepare"
    seed: int = 0
    test_fraction: float = 0.35        # the paper's 65 / 35 split
    val_fraction: float = 0.10         # of the train split
    hash_workers: int | None = None    # Ray Data tasks for reading + hashing; None = cluster CPUs
    # Hamming radius of the perceptual-hash near-duplicate groups (docs/near-duplicates.md: 10 on the
    # shared images; 0 joins only identical hashes, -1 turns near-duplicate grouping off).
    near_radius: int = NEAR_RADIUS

    def __post_init__(self):
        _check(-1 <= self.near_radius <= 63, f"prepare.near_radius={self.near_radius}: must be in -1..63")
        _check(0 < self.test_fraction < 1, f"prepare.test_fraction={self.test_fraction}: must be in (0, 1)")
        _check(0 <= self.val_fraction < 1, f"prepare.val_fraction={self.val_fraction}: must be in [0, 1)")


@dataclass(frozen=True)
class SegmentConfig:
    SECTION: ClassVar[str] = "segment"
    # OpenCV HSV (H in 0..179, S and V in 0..255). Chosen on the shared real images: see docs/segmentation.md.
    hsv_lower: tuple[int, int, int] = (120, 30, 40)
    hsv_upper: tuple[int, int, int] = (179, 255, 255)
    open_kernel: int = 3               # morphological opening removes speckle
    close_kernel: int = 5              # closing fills small holes in the nucleus
    min_component_px: int = 40         # drop specks (red-cell rims, debris) smaller than this; 0 = keep all
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
        _check(min(self.open_kernel, self.close_kernel, self.min_component_px) >= 0,
               "segment.open_kernel, close_kernel and min_component_px must be >= 0")


AUGMENT_RECIPES = ("paper", "stain")
STAIN_NORMS = ("reinhard", "macenko")


@dataclass(frozen=True)
class AugmentConfig:
    SECTION: ClassVar[str] = "augment"
    image_size: int = 224              # 227 for AlexNet (the backbone registry says)
    rotation_deg: float = 30.0         # random rotation in both directions
    translate: float = 0.1             # fraction of width / height, both ways
    scale_min: float = 0.9             # x and y scaled independently in [scale_min, scale_max]
    scale_max: float = 1.1
    flips: bool = True
    # "paper": the geometric recipe above. "stain": the same, after a photometric step on the decoded
    # field, before segmentation (train.augment.photometric_transform) with these strengths:
    recipe: str = "paper"
    stain_scale: float = 0.15          # each stain's optical density (HED) × U(1 - s, 1 + s)
    stain_shift: float = 0.02          # ... + U(-s, s) (HED units; a stained pixel is ~0.05-0.3)
    brightness: float = 0.15           # × U(1 - b, 1 + b)
    contrast: float = 0.15             # about the mean, × U(1 - c, 1 + c)
    gamma: float = 0.25                # exponent exp(U(-g, g))
    blur_p: float = 0.3                # share of fields blurred ...
    blur_sigma: float = 1.0            # ... by a Gaussian of sigma U(0.1, blur_sigma) px

    def __post_init__(self):
        _check(self.image_size >= 16, "augment.image_size must be >= 16")
        _check(0 < self.scale_min <= self.scale_max, "augment.scale_min must be in (0, scale_max]")
        _check(self.recipe in AUGMENT_RECIPES,
               f"augment.recipe={self.recipe!r}: choose one of {list(AUGMENT_RECIPES)}")
        for name in ("stain_scale", "brightness", "contrast"):
            _check(0 <= getattr(self, name) < 1, f"augment.{name}={getattr(self, name)}: must be in [0, 1)")
        _check(min(self.stain_shift, self.gamma, self.blur_sigma) >= 0,
               "augment.stain_shift, gamma and blur_sigma must be >= 0")
        _check(0 <= self.blur_p <= 1, f"augment.blur_p={self.blur_p}: must be in [0, 1]")


CONTROLS = ("background",)


@dataclass(frozen=True)
class TrainConfig:
    SECTION: ClassVar[str] = "train"
    backbone: str = "resnet50"
    epochs: int = 10                   # the paper's recipe: Adam, lr 1e-4, 10 epochs, batch 32, 224²
    batch_size: int = 32               # per worker
    lr: float = 1e-4
    image_size: int | None = None      # None = the backbone's default (224; 227 for AlexNet)
    workers: int | None = None         # None = one per GPU in the cluster (2 CPU workers without GPUs)
    gpus_per_worker: float | None = None   # None = 1 when the cluster has GPUs, else 0
    pretrained: str = "hub"            # hub | none | PATH to a weights file
    limit: int | None = None           # use at most this many images of each split (tests, smoke runs)
    seed: int = 0
    segmented: bool = True             # train on HSV-segmented images (the paper) or the originals
    max_failures: int = 2              # worker-group restarts from the last checkpoint
    compile: bool = False              # torch.compile on GPU
    # Shortcut control (CONTROLS): "background" trains on the fields with the segmented cells inpainted
    # away (imaging.hsv.remove_cells), into RUN/models/<backbone>__control-background; never tuned on.
    control: str | None = None
    # Stain normalisation (STAIN_NORMS) before segmentation, to a reference fitted on `stain_fit_images`
    # training fields (imaging.stain); recorded in the model's preprocessing. None: off (the paper).
    stain_norm: str | None = None
    stain_fit_images: int = 64

    def __post_init__(self):
        _check(self.stain_norm is None or self.stain_norm in STAIN_NORMS,
               f"train.stain_norm={self.stain_norm!r}: choose one of {list(STAIN_NORMS)} or leave it unset")
        _check(self.stain_fit_images >= 1, "train.stain_fit_images must be >= 1")
        _check(self.control is None or self.control in CONTROLS,
               f"train.control={self.control!r}: choose one of {list(CONTROLS)} or leave it unset")
        _check(self.epochs >= 1, "train.epochs must be >= 1")
        _check(self.batch_size >= 1, "train.batch_size must be >= 1")
        _check(self.lr > 0, "train.lr must be > 0")
        # Ray Train's num_workers=0 (local mode) keeps no checkpoints: nothing to publish or resume.
        _check(self.workers is None or self.workers >= 1, "train.workers must be >= 1")
        _check(self.limit is None or self.limit >= 1, "train.limit must be >= 1")
        _check(self.max_failures >= 0, "train.max_failures must be >= 0")


# Signals of the unfamiliar-image rule (referral.signals.TABLE; a test keeps the two lists equal): ood_score (each backbone's
# feature distance to the training data), mask_low / mask_high (the segmentation kept too little / too
# much), image_score (the field's image statistics, models.field_stats), disagreement (between the
# networks).
REFERRAL_SIGNALS = ("ood_score", "mask_low", "mask_high", "image_score", "disagreement")
TUNE_OBJECTIVES = ("accuracy_referral_as_error", "accuracy_on_accepted", "macro_f1_referral_as_error")


@dataclass(frozen=True)
class TuneConfig:
    SECTION: ClassVar[str] = "tune"
    backbones: tuple[str, ...] = ("densenet201", "resnet50")
    objective: str = "accuracy_referral_as_error"
    min_coverage: float = 0.98         # in-distribution coverage floor (validation)
    num_samples: int = 40              # trials of the continuous search (besides the paper's grid)
    seed: int = 0
    temperature_scaling: bool = True
    # γ of the continuous search; below 1 / (number of classes) γ refers nothing, so the floor lets the
    # search reach "no confidence referral" when that is what the coverage floor needs.
    gamma_range: tuple[float, float] = (0.25, 0.95)
    # Each trial takes milliseconds; more concurrent trials only add worker start-ups.
    max_concurrent_trials: int = 2
    referral: bool = True              # fit the unfamiliar-image rule (feature distance, mask, disagreement)
    # Validation coverage the whole rule (γ + unfamiliar) keeps. Above the 98 % goal on purpose: the
    # validation split is small (~180 real images), so the fitted thresholds are noisy on test.
    referral_coverage: float = 0.99
    # Signals of the unfamiliar-image rule (REFERRAL_SIGNALS); the default: see docs/referral.md.
    referral_signals: tuple[str, ...] = ("image_score",)
    # Share of in-distribution fields (training out-of-fold + validation) the image-statistics rule
    # keeps: its threshold is this quantile of their image scores (a budget of its own, see
    # referral.signals.fit_referral).
    image_quantile: float = 0.995
    # The image rule's guarantee (docs/referral-guarantees.md): with probability ≥ `confidence` over
    # the calibration images, at most `referral_rate` of new in-distribution images are referred by it
    # (None: the uncalibrated `image_quantile` instead). 1 % at 95 % needs ≥ 299 calibration images;
    # a real run has ~1 800 (180 validation + ~1 620 out-of-fold training), which puts the threshold
    # at rank 11 from the top, next to the old 99.5 % quantile's rank 10, now with a stated promise.
    referral_rate: float | None = 0.01
    confidence: float = 0.95
    # SGR (Geifman & El-Yaniv 2017) on validation: the error rate among γ-accepted images it certifies
    # at `confidence` (reported in ensemble.json); gamma_by_sgr sets γ to SGR's threshold for it.
    risk_target: float = 0.05
    gamma_by_sgr: bool = False
    training_samples: int = 4          # --tune-training: trials over training hyperparameters
    training_lr: tuple[float, float] = (1e-5, 1e-3)  # log-uniform range of --tune-training's lr

    def __post_init__(self):
        object.__setattr__(self, "backbones", tuple(self.backbones))
        object.__setattr__(self, "gamma_range", tuple(float(g) for g in self.gamma_range))
        object.__setattr__(self, "training_lr", tuple(float(g) for g in self.training_lr))
        object.__setattr__(self, "referral_signals", tuple(self.referral_signals))
        _check(set(self.referral_signals) <= set(REFERRAL_SIGNALS),
               f"tune.referral_signals={list(self.referral_signals)}: choose from {list(REFERRAL_SIGNALS)}")
        _check(len(self.backbones) >= 1, "tune.backbones: give at least one backbone")
        _check(len(set(self.backbones)) == len(self.backbones), f"tune.backbones={list(self.backbones)}: duplicates")
        _check(0 <= self.min_coverage <= 1, "tune.min_coverage must be in [0, 1]")
        _check(0 < self.referral_coverage <= 1, "tune.referral_coverage must be in (0, 1]")
        _check(0 < self.image_quantile <= 1, "tune.image_quantile must be in (0, 1]")
        _check(self.referral_rate is None or 0 < self.referral_rate < 1,
               f"tune.referral_rate={self.referral_rate}: must be in (0, 1), e.g. 0.01, or null")
        _check(0 < self.confidence < 1, f"tune.confidence={self.confidence}: must be in (0, 1), e.g. 0.95")
        _check(0 < self.risk_target < 1, f"tune.risk_target={self.risk_target}: must be in (0, 1), e.g. 0.05")
        _check(self.num_samples >= 0, "tune.num_samples must be >= 0")
        _check(self.training_samples >= 1, "tune.training_samples must be >= 1")
        _check(self.max_concurrent_trials >= 1, "tune.max_concurrent_trials must be >= 1")
        _check(len(self.gamma_range) == 2 and 0 <= self.gamma_range[0] <= self.gamma_range[1] <= 1,
               f"tune.gamma_range={list(self.gamma_range)}: need [low, high] within [0, 1]")
        _check(len(self.training_lr) == 2 and 0 < self.training_lr[0] <= self.training_lr[1],
               f"tune.training_lr={list(self.training_lr)}: need [low, high] with 0 < low <= high")
        _check(self.objective in TUNE_OBJECTIVES,
               f"tune.objective={self.objective!r}: choose one of {list(TUNE_OBJECTIVES)}")


@dataclass(frozen=True)
class EvaluateConfig:
    SECTION: ClassVar[str] = "evaluate"
    max_corrections_copied: int = 1000


@dataclass(frozen=True)
class ClassifyConfig:
    SECTION: ClassVar[str] = "classify"
    batch_size: int = 64               # images per model call (one actor batch); 256+ suits a big GPU
    gpus: int | None = None            # GPU actors; None = every GPU in the cluster
    cpu_workers: int | None = None     # CPU actors when there is no GPU; None = half the cluster CPUs
    decode_tasks: int | None = None    # concurrent read + decode tasks; None = as many as CPUs allow
    read_cpus: float = 0.5             # CPUs per read + decode task (< 1: reads wait on I/O too)
    max_pixels: int = MAX_PIXELS       # larger images are refused before a full decode
    commit_rows: int = 50_000          # result rows per commit to DST (the driver buffers one commit)
    commit_seconds: float = 60.0       # ... or commit what is buffered once this much time has passed
    wave_rows: int = 200_000           # inputs to read per Ray Data pass (the driver holds one wave's plan)
    verify_sha256: bool = True         # a rerun re-reads path+size matches to confirm their sha256

    def __post_init__(self):
        _check(self.batch_size >= 1, f"classify.batch_size={self.batch_size}: must be >= 1")
        for name in ("commit_rows", "wave_rows"):
            _check(getattr(self, name) >= 1, f"classify.{name}={getattr(self, name)}: must be >= 1")
        _check(self.commit_seconds > 0, f"classify.commit_seconds={self.commit_seconds}: must be > 0")
        _check(0 < self.read_cpus <= 64, f"classify.read_cpus={self.read_cpus}: must be in (0, 64]")
        _check(self.max_pixels >= 1, f"classify.max_pixels={self.max_pixels}: must be >= 1")
        for name in ("gpus", "cpu_workers", "decode_tasks"):
            v = getattr(self, name)
            _check(v is None or v >= (0 if name == "gpus" else 1), f"classify.{name}={v}: out of range")


# stress.shifts.SHIFTS (a unit test keeps the two lists equal).
STRESS_SHIFTS = ("stain", "hue", "brightness_gamma", "blur", "noise", "jpeg", "rescale")


@dataclass(frozen=True)
class StressConfig:
    SECTION: ClassVar[str] = "stress"
    shifts: tuple[str, ...] = STRESS_SHIFTS
    limit: int | None = None           # a seeded subset of this many test images (None: the whole split)
    seed: int = 0                      # the subset and every shift's per-image draws
    goal_factor: float = 2.0           # goal: confident-error rate under a shift ≤ this × the unshifted one

    def __post_init__(self):
        object.__setattr__(self, "shifts", tuple(self.shifts))
        _check(bool(self.shifts) and set(self.shifts) <= set(STRESS_SHIFTS),
               f"stress.shifts={list(self.shifts)}: choose from {list(STRESS_SHIFTS)}")
        _check(self.limit is None or self.limit >= 1, "stress.limit must be >= 1")
        _check(self.goal_factor >= 1, "stress.goal_factor must be >= 1")


@dataclass(frozen=True)
class ReviewConfig:
    SECTION: ClassVar[str] = "review"
    audit: int = 50                    # blind audit sample: accepted images drawn at random, stratified by class
    limit: int | None = None           # at most this many referred images per batch (None = every one not reviewed)
    seed: int | None = None            # the audit draw's seed; None = a fresh one (recorded in the batch)
    image_px: int = 384                # longest side of the original field on the review page

    def __post_init__(self):
        _check(self.audit >= 0, f"review.audit={self.audit}: must be >= 0")
        _check(self.limit is None or self.limit >= 0, f"review.limit={self.limit}: must be >= 0")
        _check(64 <= self.image_px <= 2048, f"review.image_px={self.image_px}: must be in 64..2048")


@dataclass(frozen=True)
class AuditConfig:
    SECTION: ClassVar[str] = "audit"
    # Level of the intervals and tests; None = the rule's own (1 - δ from ensemble.json, else 0.95).
    confidence: float | None = None

    def __post_init__(self):
        _check(self.confidence is None or 0 < self.confidence < 1,
               f"audit.confidence={self.confidence}: must be in (0, 1), e.g. 0.95")


_SEMVER = re.compile(r"^\d+\.\d+\.\d+([-+][0-9A-Za-z.-]+)?$")


@dataclass(frozen=True)
class ExportConfig:
    SECTION: ClassVar[str] = "export"
    version: str = "1.0.0"             # the bundle's version (semantic versioning, as MONAI bundles)
    changelog: str | None = None       # this version's entry in metadata.json's changelog
    license: str = "apache-2.0"        # the model card's license (Hugging Face identifiers)
    zip: bool = False                  # also write BUNDLE.zip
    onnx: bool = False                 # also write each member as ONNX, parity checked with onnxruntime
    onnx_opset: int = 17
    parity_images: int = 8             # real images the ONNX parity check runs on
    parity_tolerance: float = 1e-4     # largest |p_onnx - p_torch| accepted

    def __post_init__(self):
        _check(bool(_SEMVER.match(self.version)), f"export.version={self.version!r}: give MAJOR.MINOR.PATCH, e.g. 1.0.0")
        _check(7 <= self.onnx_opset <= 23, f"export.onnx_opset={self.onnx_opset}: must be in 7..23 (default 17)")
        _check(self.parity_images >= 1, f"export.parity_images={self.parity_images}: must be >= 1")
        _check(0 < self.parity_tolerance < 1, f"export.parity_tolerance={self.parity_tolerance}: must be in (0, 1)")


STAGE_CONFIGS: dict[str, type] = {cls.SECTION: cls for cls in (
    PrepareConfig, SegmentConfig, AugmentConfig, TrainConfig, TuneConfig, EvaluateConfig, ClassifyConfig,
    StressConfig, ReviewConfig, AuditConfig, ExportConfig)}


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
    stress: StressConfig = field(default_factory=StressConfig)
    review: ReviewConfig = field(default_factory=ReviewConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_yaml(path: str | None) -> dict[str, Any]:
    """The stage sections of a YAML file; a missing file or bad YAML is one ConfigError line."""
    from .io import storage

    if not path:
        return {}
    if not storage.exists(path):
        raise ConfigError(f"--config {path}: no such file; give the path of a YAML config file")
    try:
        data = yaml.safe_load(storage.read_bytes(path)) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(exc)}") from None
    _check(isinstance(data, dict), f"{path}: a config file must be a mapping of stage sections")
    unknown = set(data) - set(STAGE_CONFIGS)
    _check(not unknown, f"{path}: unknown section(s) {sorted(unknown)}; valid: {sorted(STAGE_CONFIGS)}")
    for name, section in data.items():
        _check(section is None or isinstance(section, dict),
               f"{path}: section `{name}:` must hold `key: value` lines, not {section!r}")
    return data


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{getattr(exc, 'problem', None) or exc}{where}".replace("\n", " ")


def job_config(yaml_path: str | None = None, **overrides: dict[str, Any]) -> JobConfig:
    """The JobConfig from a YAML file and per-stage overrides, e.g. train={"epochs": 2}."""
    data = load_yaml(yaml_path)
    parts = {name: build(cls, data.get(name), overrides.get(name)) for name, cls in STAGE_CONFIGS.items()}
    return JobConfig(**parts)


def save_resolved(uri: str, cfg: JobConfig, **extra: Any) -> None:
    """Write the resolved config (plus stage arguments such as paths) as YAML at `uri`."""
    from .io import storage

    doc = {**extra, **cfg.to_dict()}
    storage.write_bytes(uri, yaml.safe_dump(_plain(doc), sort_keys=False).encode())


def _plain(obj):
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj
