"""The unfamiliar-image rule: which referral signals fire, and their thresholds fitted on
in-distribution images. Shared by tune (fitting), evaluate and classify (applying).

`TABLE` is the referral vocabulary's one owner: each signal's config name (tune.referral_signals, and
the `ReferralRule` field holding its threshold), the reason a row gets when it fires (`refer_reason`),
the key its threshold is stored under (ensemble.json's "referral" and a result row's `thresholds`
map) and the reason in words. Signals: a backbone's feature distance to the training data, a
segmentation mask fraction outside the range seen (too little kept: blank or red-cells-only fields;
too much), the whole field's image statistics (focus, noise, stain colour, shape of the stained
objects; models.field_stats) far from the training fields', or the networks disagreeing more than
ever seen. The confidence rule (γ, reason `low_confidence`) lives with the ensemble (ensemble.weighted).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .. import schema
from ..config import REFERRAL_SIGNALS, TuneConfig
from ..errors import ConfigError
from . import bounds


@dataclass(frozen=True)
class Signal:
    name: str      # config name (tune.referral_signals) = the ReferralRule field of its threshold
    reason: str    # the refer_reason when it fires
    key: str       # its threshold's stored key (per backbone for ood_score: schema.backbone_ood_column)
    words: str     # the reason as a haematologist reads it: "title: explanation"


# In the order reasons are listed when several fire.
TABLE = (
    Signal("mask_low", "empty_field", "mask_fraction_low",
           "empty field: the segmentation kept too little stained area (blank or red cells only)"),
    Signal("mask_high", "odd_mask", "mask_fraction_high",
           "odd mask: the segmentation kept more stained area than any training image"),
    Signal("image_score", "odd_image", "image_score",
           "odd image: focus, noise, stain colour or shapes unlike the training fields"),
    Signal("ood_score", "unfamiliar", "ood_score",
           "unfamiliar: a network's features were far from every training image"),
    Signal("disagreement", "disagreement", "disagreement",
           "disagreement: the networks disagreed more than on any validation image"),
)
LOW_CONFIDENCE = "low_confidence"   # the γ rule's reason (ensemble.weighted.apply)
REASONS = tuple(s.reason for s in TABLE) + (LOW_CONFIDENCE,)
REASON_WORDS = {**{s.reason: s.words for s in TABLE},
                LOW_CONFIDENCE: "low confidence: the top weighted score was below γ"}
BY_NAME = {s.name: s for s in TABLE}
SIGNALS = REFERRAL_SIGNALS          # config's list of the names above (a unit test keeps the two equal)
DEFAULT_SIGNALS = TuneConfig.referral_signals
# Before alle_dist 0.1's vocabulary table, ensemble.json nested the mask thresholds.
_LEGACY_MASK = {"low": "mask_low", "high": "mask_high"}


def reasons_in_words(reason: str | None) -> list[str]:
    """A row's `refer_reason` ('+'-joined REASONS) as sentences, in the table's order."""
    fired = set((reason or "").split("+")) - {""}
    return [REASON_WORDS.get(r, r) for r in REASONS if r in fired] + sorted(fired - set(REASONS))


@dataclass(frozen=True)
class ReferralRule:
    """Thresholds of the unfamiliar-image rule (None / {} = that signal is off) and how they were fitted.

    Two serialisations, both keyed by TABLE's stored keys: `to_dict` / `from_dict` for ensemble.json's
    "referral" (plus the fit's provenance), `thresholds` for a classification row's `thresholds` map."""
    ood_score: dict = field(default_factory=dict)   # backbone → feature-distance threshold
    mask_low: float | None = None
    mask_high: float | None = None
    image_score: float | None = None
    disagreement: float | None = None
    fit: dict = field(default_factory=dict)         # method, signals, quantiles, coverage: provenance only

    def _scalars(self) -> dict[str, float]:
        """{stored key: threshold} of the scalar signals in force."""
        return {s.key: float(getattr(self, s.name)) for s in TABLE
                if s.name != "ood_score" and getattr(self, s.name) is not None}

    def to_dict(self) -> dict:
        doc = {**self.fit, "ood_score": dict(self.ood_score), **self._scalars()}
        return doc if (self.fit or self.active) else {}

    def thresholds(self) -> dict[str, float]:
        """The `thresholds` map of a classification row: only the rules in force."""
        per_backbone = {schema.backbone_ood_column(b): float(t) for b, t in sorted(self.ood_score.items())}
        return {**self._scalars(), **per_backbone}

    @classmethod
    def from_dict(cls, doc: dict | None) -> "ReferralRule":
        doc = dict(doc or {})
        values = {s.name: doc.pop(s.key, None) for s in TABLE if s.name != "ood_score"}
        for side, name in _LEGACY_MASK.items():
            values[name] = values[name] if values[name] is not None else (doc.get("mask_fraction") or {}).get(side)
        doc.pop("mask_fraction", None)
        ood = {b: t for b, t in (doc.pop("ood_score", None) or {}).items() if t is not None}
        return cls(ood_score=ood, **values, fit=doc)

    @property
    def active(self) -> bool:
        return bool(self.ood_score) or bool(self._scalars())


def disagreement(probs: list[np.ndarray]) -> np.ndarray:
    """Largest total-variation distance between any two backbones' distributions, per row (0..1)."""
    n = len(probs[0])
    out = np.zeros(n)
    for i in range(len(probs)):
        for j in range(i + 1, len(probs)):
            out = np.maximum(out, 0.5 * np.abs(np.asarray(probs[i]) - np.asarray(probs[j])).sum(axis=1))
    return out


def referral_flags(rule: ReferralRule | dict, scaled: dict[str, np.ndarray], ood_scores: dict[str, np.ndarray],
                   mask_fraction: np.ndarray | None, image_score: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Which unfamiliar-image rules fire per row: {reason: bool N}. Rules the rule leaves off don't fire."""
    rule = rule if isinstance(rule, ReferralRule) else ReferralRule.from_dict(rule)
    n = len(next(iter(scaled.values())))
    flags = {s.reason: np.zeros(n, bool) for s in TABLE}
    for b, thr in rule.ood_score.items():
        if ood_scores is not None and ood_scores.get(b) is not None:
            flags["unfamiliar"] |= ~(np.asarray(ood_scores[b], np.float64) <= thr)   # NaN (no score) = unfamiliar
    if mask_fraction is not None:
        m = np.asarray(mask_fraction, np.float64)
        if rule.mask_low is not None:
            flags["empty_field"] |= ~(m >= rule.mask_low)
        if rule.mask_high is not None:
            flags["odd_mask"] |= m > rule.mask_high
    if rule.image_score is not None and image_score is not None:
        flags["odd_image"] |= ~(np.asarray(image_score, np.float64) <= rule.image_score)   # NaN counts as odd
    if rule.disagreement is not None and len(scaled) > 1:
        flags["disagreement"] |= disagreement(list(scaled.values())) > rule.disagreement
    return flags


def fit_image_rule(image_score: np.ndarray | None, image_reference: np.ndarray | None = None,
                   image_quantile: float = TuneConfig.image_quantile, referral_rate: float | None = None,
                   confidence: float = TuneConfig.confidence) -> dict:
    """The image-statistics rule's entries of a referral dict ({} without finite scores), fitted on the
    calibration set: the validation scores pooled with the training fields' out-of-fold ones.

    With `referral_rate` α: the calibration-conditional conformal threshold (referral.bounds), so that
    with probability ≥ `confidence` at most α of new in-distribution images are referred by this
    rule; an (α, confidence) the calibration set is too small for is a ConfigError. Without it
    (None): the plain `image_quantile` of the calibration scores, no guarantee."""
    if image_score is None or not np.all(np.isfinite(image_score)):
        return {}
    val = np.asarray(image_score, np.float64)
    oof = np.zeros(0) if image_reference is None else np.asarray(image_reference, np.float64)
    ref = np.r_[val, oof]
    sizes = {"n_val": int(len(val)), "n_oof": int(len(oof))}
    if referral_rate is None:
        return {"image_score": float(np.quantile(ref, image_quantile, method="higher")),
                "image_quantile": float(image_quantile), "image_reference_n": int(len(ref)),
                "image_rule": {"method": "quantile", "quantile": float(image_quantile), **sizes}}
    fit = bounds.conformal_threshold(ref, referral_rate, 1 - confidence)
    if not fit["feasible"]:
        raise ConfigError(_infeasible(fit, confidence, sizes))
    keep = ("method", "alpha", "delta", "n", "k", "alpha_bound", "delta_achieved", "n_required",
            "calibration_referral_rate")
    return {"image_score": fit["threshold"], "image_reference_n": int(len(ref)),
            "image_rule": {**{k: fit[k] for k in keep}, "confidence": float(confidence), **sizes}}


def smallest_rate(n: int, confidence: float) -> float:
    """The smallest referral rate α (rounded up to 0.001) that n calibration images can guarantee at
    `confidence`: (1-α)^n ≤ 1-confidence, the threshold then being the largest calibration score."""
    return math.ceil(1000 * (1 - (1 - confidence) ** (1 / n))) / 1000


def calibration_size(image_score: np.ndarray, image_reference: np.ndarray | None) -> int:
    """How many calibration images the image rule is fitted on (validation + out-of-fold training)."""
    return int(len(image_score)) + (0 if image_reference is None else int(len(image_reference)))


def _infeasible(fit: dict, confidence: float, sizes: dict) -> str:
    n = fit["n"]
    return (f"tune.referral_rate={fit['alpha']} at confidence {confidence}: the image rule needs n_required="
            f"{fit['n_required']} calibration images, this run has {n} ({sizes['n_val']} validation + "
            f"{sizes['n_oof']} out-of-fold training){'' if fit['reason'] == 'n_too_small' else ' with too many NaN'}"
            f"; it could guarantee --referral-rate {smallest_rate(n, confidence)} (or more), or use a lower "
            "--confidence, or --referral-rate none")


def fit_referral(scaled: dict[str, np.ndarray], ood_scores: dict[str, np.ndarray] | None,
                 mask_fraction: np.ndarray | None, target_coverage: float = 0.99,
                 already_referred: np.ndarray | None = None, signals=DEFAULT_SIGNALS,
                 image_score: np.ndarray | None = None, image_reference: np.ndarray | None = None,
                 image_quantile: float = TuneConfig.image_quantile, referral_rate: float | None = None,
                 confidence: float = TuneConfig.confidence) -> ReferralRule:
    """Thresholds of the unfamiliar-image rule from in-distribution (validation) images.

    The image-statistics signal has a budget of its own (`fit_image_rule`): with `referral_rate` α, the
    conformal threshold guaranteeing at most α referred at `confidence`, else the `image_quantile`,
    both over the validation image scores pooled with `image_reference` (the training fields'
    out-of-fold scores, models.field_stats.calibration), so a ~180-image validation split does not
    put it at whichever field happens to be its most extreme. Every other signal gets its threshold at one common tail
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
    image_rule = ({} if img is None else
                  fit_image_rule(img, image_reference, image_quantile, referral_rate, confidence))
    others = [s for s in signals if s != "image_score"]

    def rule(q: float | None) -> dict:
        r: dict = {"method": "quantile_union", "signals": list(signals), "quantile": q,
                   "target_coverage": target_coverage, **image_rule,
                   "ood_score": {b: float(np.quantile(s, q, method="higher")) for b, s in ood_scores.items()}}
        if mf is not None and "mask_low" in signals:
            r[BY_NAME["mask_low"].key] = float(np.quantile(mf, 1 - q, method="lower"))
        if mf is not None and "mask_high" in signals:
            r[BY_NAME["mask_high"].key] = float(np.quantile(mf, q, method="higher"))
        if dis is not None:
            r[BY_NAME["disagreement"].key] = float(np.quantile(dis, q, method="higher"))
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
    return ReferralRule.from_dict(best)


