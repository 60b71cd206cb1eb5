"""The weighted threshold ensemble and the referral rule: the one function evaluate and classify share.

Core only (numpy, no Ray). EP = argmax Σᵢ wᵢ·pᵢ over the backbones' (temperature-scaled) softmax
outputs, weights on the simplex. An image is *referred* (label -1, `refer`) instead of labelled when

- its top weighted score is below γ (`low_confidence`; a score exactly equal to γ is confident), or
- the unfamiliar-image rule fires: any measured signal lies beyond the threshold fitted on
  in-distribution validation images (`fit_referral`): a backbone's feature distance to the training
  data (`unfamiliar`), a segmentation mask fraction outside the range seen (`empty_field` when too
  little was kept, e.g. blank or red-cells-only fields; `odd_mask` when too much), the whole field's
  image statistics (focus, noise, stain colour, shape of the stained objects; alle_dist.imagestats)
  far from the training fields' (`odd_image`), or the two networks disagreeing more than ever seen
  (`disagreement`).

Ties in the weighted score go to the lowest class index (np.argmax), i.e. the first class in the
sorted class list.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from . import storage
from .config import REFERRAL_SIGNALS, ConfigError, TuneConfig

SPEC_FILE = "ensemble.json"
_EPS = 1e-12
_SIMPLEX_TOL = 1e-6
_GAMMA_TOL = 1e-9
# Fixed order of reasons in Decision.reason when several rules fire.
REASONS = ("empty_field", "odd_mask", "odd_image", "unfamiliar", "disagreement", "low_confidence")


def check_weights(weights, n: int | None = None) -> tuple[float, ...]:
    """Weights as a tuple, or ConfigError when they are not on the simplex (≥ 0, sum 1)."""
    w = np.asarray(weights, dtype=np.float64).ravel()
    if n is not None and len(w) != n:
        raise ConfigError(f"ensemble weights {w.tolist()}: need one weight per backbone ({n})")
    if len(w) == 0 or not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ConfigError(f"ensemble weights {w.tolist()}: every weight must be finite and >= 0")
    if abs(w.sum() - 1.0) > _SIMPLEX_TOL:
        raise ConfigError(f"ensemble weights {w.tolist()} sum to {w.sum():.6g}: they must sum to 1 "
                          "(divide each by their sum)")
    return tuple(float(x) for x in w)


@dataclass(frozen=True)
class EnsembleSpec:
    """What RUN/ensemble.json holds (besides objective, metrics and trials)."""
    backbones: tuple[str, ...]
    classes: tuple[str, ...]
    weights: tuple[float, ...]
    gamma: float
    temperatures: tuple[float, ...] = ()      # per backbone; () = all 1.0 (no scaling)
    referral: dict = field(default_factory=dict)  # fit_referral's thresholds; {} = γ only

    def __post_init__(self):
        object.__setattr__(self, "backbones", tuple(self.backbones))
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "weights", check_weights(self.weights, len(self.backbones)))
        temps = tuple(float(t) for t in self.temperatures) or (1.0,) * len(self.backbones)
        if len(temps) != len(self.backbones) or not all(np.isfinite(t) and t > 0 for t in temps):
            raise ConfigError(f"ensemble temperatures {list(temps)}: need one value > 0 per backbone")
        object.__setattr__(self, "temperatures", temps)
        if not 0.0 <= float(self.gamma) <= 1.0:
            raise ConfigError(f"ensemble gamma={self.gamma}: must be in [0, 1]")
        object.__setattr__(self, "gamma", float(self.gamma))
        object.__setattr__(self, "referral", dict(self.referral or {}))


def spec_uri(run_dir: str) -> str:
    return storage.join(run_dir, SPEC_FILE)


def save_spec(run_dir: str, spec: EnsembleSpec, **extra) -> None:
    """Write RUN/ensemble.json: the spec's fields first, then extras (objective, metrics, trials)."""
    doc = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(spec).items()}
    storage.write_json(spec_uri(run_dir), {**doc, **extra})


def load_spec(run_dir: str) -> EnsembleSpec:
    uri = spec_uri(run_dir)
    if not storage.exists(uri):
        raise storage.StorageError(f"{uri}: not found; run `alle-dist tune --run-dir {run_dir}` first")
    doc = storage.read_json(uri)
    names = {f.name for f in dataclasses.fields(EnsembleSpec)}
    missing = {"backbones", "classes", "weights", "gamma"} - set(doc)
    if missing:
        raise ConfigError(f"{uri}: missing key(s) {sorted(missing)}; rerun `alle-dist tune`")
    return EnsembleSpec(**{k: v for k, v in doc.items() if k in names})


def scale(probs: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Temperature scaling on probabilities: softmax(log p / T) (softmax is shift-invariant)."""
    p = np.asarray(probs, dtype=np.float64)
    if temperature == 1.0:
        return p
    z = np.log(np.clip(p, _EPS, 1.0)) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def combine(probs: list[np.ndarray], weights, temperatures=None) -> np.ndarray:
    """Σᵢ wᵢ·scale(pᵢ, Tᵢ): N x C weighted scores; weights must be on the simplex."""
    w = check_weights(weights, len(probs))
    temps = temperatures if temperatures is not None else (1.0,) * len(probs)
    if len(temps) != len(probs):
        raise ConfigError(f"temperatures {list(temps)}: need one per backbone ({len(probs)})")
    shapes = {np.shape(p) for p in probs}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"combine: every backbone's probabilities must be the same N x C, got {shapes}")
    return sum(wi * scale(p, t) for wi, p, t in zip(w, probs, temps))


def disagreement(probs: list[np.ndarray]) -> np.ndarray:
    """Largest total-variation distance between any two backbones' distributions, per row (0..1)."""
    n = len(probs[0])
    out = np.zeros(n)
    for i in range(len(probs)):
        for j in range(i + 1, len(probs)):
            out = np.maximum(out, 0.5 * np.abs(np.asarray(probs[i]) - np.asarray(probs[j])).sum(axis=1))
    return out


@dataclass
class Decision:
    probs: np.ndarray          # N x C weighted scores
    label: np.ndarray          # N, int class index; -1 = refer
    confidence: np.ndarray     # N, top weighted score
    refer: np.ndarray          # N, bool
    reason: list               # N, None or '+'-joined REASONS that fired


def referral_flags(referral: dict, scaled: dict[str, np.ndarray], ood_scores: dict[str, np.ndarray],
                   mask_fraction: np.ndarray | None, image_score: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Which unfamiliar-image rules fire per row: {reason: bool N}. Rules absent from `referral` are off."""
    n = len(next(iter(scaled.values())))
    flags = {r: np.zeros(n, bool) for r in REASONS[:-1]}
    for b, thr in (referral.get("ood_score") or {}).items():
        if thr is not None and ood_scores is not None and ood_scores.get(b) is not None:
            s = np.asarray(ood_scores[b], np.float64)
            flags["unfamiliar"] |= ~(s <= thr)            # NaN (no score) counts as unfamiliar
    mf = referral.get("mask_fraction") or {}
    if mask_fraction is not None and mf:
        m = np.asarray(mask_fraction, np.float64)
        if mf.get("low") is not None:
            flags["empty_field"] |= ~(m >= mf["low"])
        if mf.get("high") is not None:
            flags["odd_mask"] |= m > mf["high"]
    thr = referral.get("image_score")
    if thr is not None and image_score is not None:
        flags["odd_image"] |= ~(np.asarray(image_score, np.float64) <= thr)   # NaN counts as odd
    thr = referral.get("disagreement")
    if thr is not None and len(scaled) > 1:
        flags["disagreement"] |= disagreement(list(scaled.values())) > thr
    return flags


def apply(spec: EnsembleSpec, probs: dict[str, np.ndarray], ood_scores: dict[str, np.ndarray] | None = None,
          mask_fraction: np.ndarray | None = None, image_score: np.ndarray | None = None) -> Decision:
    """Labels, confidences and referrals for N images from each backbone's N x C probabilities.

    The referral signals (each backbone's `ood_scores`, `mask_fraction`, `image_score`) are N-vectors;
    a rule of spec.referral whose signal is not given does not fire."""
    missing = [b for b in spec.backbones if b not in probs]
    if missing:
        raise ConfigError(f"ensemble needs probabilities of {missing}; have {sorted(probs)}")
    scaled = {b: scale(probs[b], t) for b, t in zip(spec.backbones, spec.temperatures)}
    p = combine([scaled[b] for b in spec.backbones], spec.weights)
    label = np.argmax(p, axis=1)                           # ties → lowest class index
    conf = p[np.arange(len(p)), label]
    flags = referral_flags(spec.referral, scaled, ood_scores, mask_fraction, image_score)
    # A score equal to γ is confident; the 1e-9 keeps a hand-computed boundary (0.5·0.9 + 0.5·0.7
    # vs γ = 0.8) on the confident side despite float rounding.
    flags["low_confidence"] = ~(conf >= spec.gamma - _GAMMA_TOL)
    refer = np.zeros(len(p), bool)
    for f in flags.values():
        refer |= f
    reason = ["+".join(r for r in REASONS if flags[r][i]) or None for i in range(len(p))]
    return Decision(probs=p, label=np.where(refer, -1, label), confidence=conf, refer=refer, reason=reason)


# Signals of the unfamiliar-image rule (config.REFERRAL_SIGNALS); the default is TuneConfig's.
SIGNALS = REFERRAL_SIGNALS
DEFAULT_SIGNALS = TuneConfig.referral_signals


def fit_image_rule(image_score: np.ndarray | None, image_reference: np.ndarray | None = None,
                   image_quantile: float = TuneConfig.image_quantile) -> dict:
    """The image-statistics rule's entries of a referral dict ({} without finite scores): the threshold
    at `image_quantile` of the validation scores pooled with the training fields' out-of-fold ones."""
    if image_score is None or not np.all(np.isfinite(image_score)):
        return {}
    ref = np.asarray(image_score, np.float64)
    if image_reference is not None:
        ref = np.r_[ref, np.asarray(image_reference, np.float64)]
    return {"image_score": float(np.quantile(ref, image_quantile, method="higher")),
            "image_quantile": float(image_quantile), "image_reference_n": int(len(ref))}


def fit_referral(scaled: dict[str, np.ndarray], ood_scores: dict[str, np.ndarray] | None,
                 mask_fraction: np.ndarray | None, target_coverage: float = 0.99,
                 already_referred: np.ndarray | None = None, signals=DEFAULT_SIGNALS,
                 image_score: np.ndarray | None = None, image_reference: np.ndarray | None = None,
                 image_quantile: float = TuneConfig.image_quantile) -> dict:
    """Thresholds of the unfamiliar-image rule from in-distribution (validation) images.

    The image-statistics signal has a budget of its own: its threshold is the `image_quantile` of
    the validation image scores pooled with `image_reference` (the training fields' out-of-fold
    scores, imagestats.calibration), so a ~180-image validation split does not put it at whichever
    field happens to be its most extreme. Every other signal gets its threshold at one common tail
    quantile q of its validation values (equivalently: refer when the largest per-signal rank
    exceeds q); q is the most aggressive value whose union rule, together with the image rule and
    `already_referred` (e.g. the γ rule), still covers at least `target_coverage` of the images;
    when even the most lenient rule (every threshold at the most extreme value seen) can't, that one
    is returned.
    """
    unknown = set(signals) - set(SIGNALS)
    if unknown:
        raise ConfigError(f"referral signals {sorted(unknown)}: unknown; choose from {list(SIGNALS)}")
    ood_scores = {b: s for b, s in (ood_scores or {}).items()
                  if "ood_score" in signals and s is not None and np.all(np.isfinite(s))}
    dis = disagreement(list(scaled.values())) if len(scaled) > 1 and "disagreement" in signals else None
    mf = None if mask_fraction is None else np.asarray(mask_fraction, np.float64)
    img = None if image_score is None or "image_score" not in signals else np.asarray(image_score, np.float64)
    img = img if img is not None and np.all(np.isfinite(img)) else None
    n = len(next(iter(scaled.values())))
    image_rule = fit_image_rule(img, image_reference, image_quantile) if img is not None else {}
    others = [s for s in signals if s != "image_score"]

    def rule(q: float | None) -> dict:
        r: dict = {"method": "quantile_union", "signals": list(signals), "quantile": q,
                   "target_coverage": target_coverage, **image_rule,
                   "ood_score": {b: float(np.quantile(s, q, method="higher")) for b, s in ood_scores.items()}}
        if mf is not None and {"mask_low", "mask_high"} & set(signals):
            r["mask_fraction"] = {
                "low": float(np.quantile(mf, 1 - q, method="lower")) if "mask_low" in signals else None,
                "high": float(np.quantile(mf, q, method="higher")) if "mask_high" in signals else None}
        if dis is not None:
            r["disagreement"] = float(np.quantile(dis, q, method="higher"))
        return r

    def coverage(r: dict) -> float:
        refer = np.zeros(n, bool) if already_referred is None else np.asarray(already_referred, bool).copy()
        for f in referral_flags(r, scaled, ood_scores, mf, img).values():
            refer |= f
        return 1.0 - refer.mean()

    if not others:                    # the image rule alone: nothing to search
        best = rule(None)
    else:
        lo, hi = float(target_coverage) / 2, 1.0      # coverage(q) grows with q; q = 1 keeps every image
        for _ in range(40):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if coverage(rule(mid)) >= target_coverage else (mid, hi)
        best = rule(hi)
    best["val_coverage"] = float(coverage(best))
    return best


@dataclass
class SplitProbs:
    """One split's cached outputs of several backbones, rows aligned by path."""
    paths: list[str]
    y: np.ndarray                      # class index per row (-1: label not in classes)
    classes: tuple[str, ...]
    probs: dict[str, np.ndarray]       # backbone → N x C
    ood: dict[str, np.ndarray]         # backbone → N feature distances
    mask_fraction: np.ndarray          # N
    image_score: np.ndarray | None = None   # N image-statistics distances (alle_dist.imagestats)
    image_reference: np.ndarray | None = None  # training fields' out-of-fold image scores (tune only)


def apply_split(spec: EnsembleSpec, data: SplitProbs) -> Decision:
    """apply() to one split's cached outputs, with every referral signal they carry."""
    return apply(spec, data.probs, data.ood, data.mask_fraction, data.image_score)


def image_reference(run_dir: str, backbones) -> np.ndarray | None:
    """The out-of-fold image scores of the training fields (imagestats.calibration) of the first
    backbone that has them: in-distribution reference values for the image rule's threshold."""
    from . import imagestats, modelio

    for b in backbones:
        mdir = model_dir(run_dir, b)
        meta = storage.join(mdir, modelio.META_FILE)
        if storage.exists(meta) and storage.read_json(meta).get("ood"):
            ref = imagestats.calibration(modelio.load_ood(mdir))
            if ref is not None:
                return ref
    return None


def model_dir(run_dir: str, backbone: str) -> str:
    return storage.join(run_dir, "models", backbone)


def model_classes(run_dir: str, backbone: str) -> tuple[str, ...] | None:
    meta = storage.join(model_dir(run_dir, backbone), "meta.json")
    return tuple(storage.read_json(meta)["classes"]) if storage.exists(meta) else None


def load_probs(run_dir: str, backbones, split: str) -> SplitProbs:
    """RUN/models/<b>/<split>_probs.parquet of each backbone, joined on path (order of the first)."""
    from . import schema

    tables, classes = {}, None
    for b in backbones:
        uri = storage.join(model_dir(run_dir, b), f"{split}_probs.parquet")
        if not storage.exists(uri):
            raise storage.StorageError(f"{uri}: not found; train backbone {b!r} first "
                                       f"(`alle-dist train --run-dir {run_dir} --backbone {b}`) or drop it")
        df = storage.read_parquet(uri).to_pandas()
        cls = model_classes(run_dir, b) or tuple(sorted(c[2:] for c in df.columns if c.startswith("p_")))
        if classes is not None and cls != classes:
            raise ConfigError(f"{b}: classes {list(cls)} differ from {list(classes)}; train on one manifest")
        classes, tables[b] = cls, df.drop_duplicates("path").set_index("path")
    first = tables[backbones[0]]
    paths = [p for p in first.index if all(p in t.index for t in tables.values())]
    cols = [schema.prob_column(c) for c in classes]
    index = {c: i for i, c in enumerate(classes)}
    return SplitProbs(
        paths=paths,
        y=np.array([index.get(v, -1) for v in first.loc[paths, "label"]], np.int64),
        classes=classes,
        probs={b: t.loc[paths, cols].to_numpy(np.float64) for b, t in tables.items()},
        ood={b: t.loc[paths, "ood_score"].to_numpy(np.float64) if "ood_score" in t else None
             for b, t in tables.items()},
        mask_fraction=(first.loc[paths, "mask_fraction"].to_numpy(np.float64)
                       if "mask_fraction" in first else None),
        # The same statistics for every backbone trained on one manifest: take the first that has them.
        image_score=next((t.loc[paths, "image_score"].to_numpy(np.float64) for t in tables.values()
                          if "image_score" in t and t["image_score"].notna().all()), None),
    )
