"""The weighted threshold ensemble: the one decision function tune, evaluate and classify share.

Core (numpy, no Ray). EP = argmax Σᵢ wᵢ·pᵢ over the backbones' (temperature-scaled) softmax
outputs, weights on the simplex. An image is *referred* (label -1, `refer`) instead of labelled when

- its top weighted score is below γ (`low_confidence`; a score exactly equal to γ is confident), or
- the unfamiliar-image rule fires (referral.signals: feature distance, mask fraction, image statistics,
  disagreement, each against a threshold fitted on in-distribution images).

RUN/ensemble.json holds an EnsembleSpec (`save_spec` / `load_spec`).

Ties in the weighted score go to the lowest class index (np.argmax), i.e. the first class in the
sorted class list.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError, StorageError
from ..io import storage
from ..referral.signals import LOW_CONFIDENCE, REASONS, ReferralRule, referral_flags
from ..rundir import RunDir

_EPS = 1e-12
_SIMPLEX_TOL = 1e-6
_GAMMA_TOL = 1e-9
# The paper's weight sets over (DenseNet-201, ResNet-50) and thresholds γ.
PAPER_WEIGHTS = ((0.5, 0.5), (0.6, 0.4), (0.4, 0.6), (0.3, 0.7), (0.7, 0.3))
PAPER_GAMMAS = (0.7, 0.8)


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
    referral: ReferralRule = field(default_factory=ReferralRule)  # the unfamiliar-image rule; empty = γ only

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
        rule = self.referral
        object.__setattr__(self, "referral", rule if isinstance(rule, ReferralRule) else ReferralRule.from_dict(rule))


def spec_doc(spec: EnsembleSpec) -> dict:
    """The spec as ensemble.json's leading keys (plain JSON types)."""
    doc = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}
    doc = {k: (list(v) if isinstance(v, tuple) else v) for k, v in doc.items()}
    doc["referral"] = spec.referral.to_dict()
    return doc


def save_spec(run_dir: str, spec: EnsembleSpec, **extra) -> None:
    """Write RUN/ensemble.json: the spec's fields first, then extras (objective, metrics, trials)."""
    storage.write_json(RunDir(run_dir).ensemble, {**spec_doc(spec), **extra})


def read_doc(run_dir: str) -> dict:
    """RUN/ensemble.json as a dict: every stage that reads it reads it here, so a file that is not JSON,
    not an object or lacks the spec's keys is one line (ConfigError, exit 2) naming it and the fix."""
    uri = RunDir(run_dir).ensemble
    if not storage.exists(uri):
        raise StorageError(f"{uri}: not found; run `alle-dist tune --run-dir {run_dir}` first")
    fix = f"rerun `alle-dist tune --run-dir {run_dir}` (or restore the file)"
    try:
        doc = storage.read_json(uri)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{uri}: not valid JSON ({str(exc).splitlines()[0]}); {fix}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{uri}: holds a JSON {type(doc).__name__}, not an object; {fix}")
    missing = {"backbones", "classes", "weights", "gamma"} - set(doc)
    if missing:
        raise ConfigError(f"{uri}: missing key(s) {sorted(missing)}; {fix}")
    return doc


def load_spec(run_dir: str) -> EnsembleSpec:
    doc = read_doc(run_dir)
    names = {f.name for f in dataclasses.fields(EnsembleSpec)}
    try:
        return EnsembleSpec(**{k: v for k, v in doc.items() if k in names})
    except ConfigError as exc:
        raise ConfigError(f"{RunDir(run_dir).ensemble}: {exc}; rerun `alle-dist tune --run-dir {run_dir}`") from None
    except (TypeError, ValueError, KeyError, AttributeError) as exc:   # a value of the wrong type
        raise ConfigError(f"{RunDir(run_dir).ensemble}: unusable ensemble spec ({exc}); rerun "
                          f"`alle-dist tune --run-dir {run_dir}`") from None


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


@dataclass
class Decision:
    probs: np.ndarray          # N x C weighted scores
    label: np.ndarray          # N, int class index; -1 = refer
    confidence: np.ndarray     # N, top weighted score
    refer: np.ndarray          # N, bool
    reason: list               # N, None or '+'-joined REASONS that fired
    gamma_accepted: np.ndarray  # N, bool: the γ rule alone accepts it (the other rules may still refer it)


def accepted_metrics(y: np.ndarray, label: np.ndarray) -> dict:
    """Coverage (share of images given a class) and accuracy among them, from labels with -1 = referred:
    the one computation tune and evaluate share. Nothing accepted: accuracy None (there is none); no
    images: coverage 0."""
    y, label = np.asarray(y), np.asarray(label)
    accepted = label >= 0
    return {"coverage": float(accepted.mean()) if len(y) else 0.0,
            "accuracy_on_accepted": float(np.mean(label[accepted] == y[accepted])) if accepted.any() else None}


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
    gamma_accepted = conf >= spec.gamma - _GAMMA_TOL
    flags[LOW_CONFIDENCE] = ~gamma_accepted
    refer = np.zeros(len(p), bool)
    for f in flags.values():
        refer |= f
    reason = ["+".join(r for r in REASONS if flags[r][i]) or None for i in range(len(p))]
    return Decision(probs=p, label=np.where(refer, -1, label), confidence=conf, refer=refer, reason=reason,
                    gamma_accepted=gamma_accepted)


