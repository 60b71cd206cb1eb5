"""Finite-sample guarantees for referral: numbers a lab can plan staffing with (pure numpy/scipy).

- `conformal_threshold`: a threshold on an unfamiliarity score (higher = more unusual) such that,
  with probability ≥ 1-δ over the calibration images, at most α of new exchangeable in-distribution
  images score above it (the calibration-conditional / "training-conditional" conformal bound of
  Vovk 2012, Bates et al. 2021, Prop. 2a): an order statistic of the calibration scores.
- `binomial_upper`, `rate_upper_bound`: the one-sided Clopper-Pearson upper bound on a rate, for a
  rule that was fixed before the images it is counted on; `binomial_exceeds`: the matching test of
  an observed count against a bound (evaluate's violation flag).
- `selective_risk_bound` (Geifman & El-Yaniv 2017, SGR) and `selective_risk_upper`: the error rate
  among accepted images, bounded at 1-δ.
- `augrc`, `aurc`: areas under the generalized / selective risk-coverage curves (Traub et al. 2024).

Why not a library: crepes, MAPIE and nonconform give marginal guarantees (average over calibration
draws) or conformal p-values; the calibration-conditional order statistic and the Clopper-Pearson
bound are each one scipy call, and both are checked by simulation in tests/unit/referral.
docs/referral-guarantees.md says what each guarantee means for a lab.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import special


def _check_level(name: str, value: float) -> float:
    if not (isinstance(value, (int, float, np.floating)) and 0 < value < 1):
        raise ValueError(f"{name} = {value!r}: must be a number strictly between 0 and 1, e.g. 0.05")
    return float(value)


def _vector(name: str, x, n: int | None = None) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name} has shape {a.shape}: pass a 1-D array, one value per image")
    if n is not None and len(a) != n:
        raise ValueError(f"{name} has {len(a)} values, expected {n}: pass one value per image, rows aligned")
    return a


def _boolean(name: str, x, n: int | None = None) -> np.ndarray:
    a = _vector(name, x, n)
    if a.dtype != bool:
        if not (np.issubdtype(a.dtype, np.number) and np.isin(a, (0, 1)).all()):
            raise ValueError(f"{name} must be boolean (or 0/1) per image; got values outside {{0, 1}}")
        a = a.astype(bool)
    return a


def _scores(x) -> np.ndarray:
    a = _vector("cal_scores", x)
    if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
        raise ValueError(f"cal_scores has dtype {a.dtype}: pass real-valued scores (NaN allowed)")
    return a.astype(np.float64)


# ---------------------------------------------------------------- the order-statistic threshold

def required_n(alpha: float, delta: float) -> int:
    """Smallest calibration size for which some order statistic meets (α, δ): (1-α)^n ≤ δ."""
    alpha, delta = _check_level("alpha", alpha), _check_level("delta", delta)
    n = math.ceil(math.log(delta) / math.log1p(-alpha))
    return n + 1 if (1 - alpha) ** n > delta else n    # guard the float rounding of ceil(log / log)


def conformal_rank(n: int, alpha: float, delta: float) -> int | None:
    """The 1-based rank k (ascending) of the threshold among n scores: the smallest k with
    BetaCDF(1-α; k, n+1-k) ≤ δ, i.e. P(Binomial(n, 1-α) ≥ k) ≤ δ. None when no k ≤ n meets it."""
    alpha, delta = _check_level("alpha", alpha), _check_level("delta", delta)
    if n < 1:
        return None
    # A new score exceeds the k-th smallest X_(k) with probability 1 - F(X_(k)), and F(X_(k)) ~ Beta(k, n+1-k).
    def violation(k: int) -> float:
        return float(special.betainc(k, n + 1 - k, 1 - alpha))

    if violation(n) > delta:
        return None
    lo, hi = 0, n                     # violation falls with k: violation(lo) > δ ≥ violation(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if violation(mid) <= delta else (mid, hi)
    return hi


def _alpha_at_rank(k: int, n: int, delta: float) -> float:
    """The smallest α' guaranteed at δ by the k-th smallest of n scores."""
    return float(1 - special.betaincinv(k, n + 1 - k, delta))


def conformal_threshold(cal_scores, alpha: float, delta: float) -> dict:
    """Threshold t on a score (higher = more unusual; refer when score > t) such that, with
    probability ≥ 1-δ over the calibration draw, P(new in-distribution image scores > t) ≤ α.

    t is the k-th smallest calibration score, k = `conformal_rank(n, α, δ)`. Assumes the new image
    and the calibration images are exchangeable (same lab, scanner, stain, population).
    Ties: valid as is, because refer means strictly above t (atoms only make exceedance rarer).
    NaN: a NaN score is unfamiliar, always referred; it counts as +inf in the calibration set
    (so NaNs push t up honestly). If the k-th score is itself NaN, no finite t meets (α, δ).

    Returns a JSON-able dict: method, alpha, delta, n, n_nan, feasible, k, threshold (None when
    infeasible), alpha_bound (the smallest α' guaranteed at δ with this k; when infeasible, what
    the largest score would guarantee, > α), delta_achieved (P(violation) at α for continuous
    scores, ≤ δ), n_required, calibration_referral_rate (share of calibration images above t or NaN).
    """
    s = _scores(cal_scores)
    alpha, delta = _check_level("alpha", alpha), _check_level("delta", delta)
    n = len(s)
    if n == 0:
        raise ValueError("cal_scores is empty: pass the calibration images' scores (validation + out-of-fold)")
    k = conformal_rank(n, alpha, delta)
    ordered = np.sort(s)                                  # NaN sorts last, i.e. as +inf
    out = {"method": "order_statistic_calibration_conditional", "alpha": alpha, "delta": delta, "n": n,
           "n_nan": int(np.isnan(s).sum()), "n_required": required_n(alpha, delta)}
    if k is None or np.isnan(ordered[k - 1]):
        reason = "n_too_small" if k is None else "too_many_nan_scores"
        return {**out, "feasible": False, "reason": reason, "k": k, "threshold": None,
                "alpha_bound": _alpha_at_rank(n, n, delta), "delta_achieved": None,
                "calibration_referral_rate": None}
    t = float(ordered[k - 1])
    return {**out, "feasible": True, "reason": None, "k": k, "threshold": t,
            "alpha_bound": _alpha_at_rank(k, n, delta),
            "delta_achieved": float(special.betainc(k, n + 1 - k, 1 - alpha)),
            "calibration_referral_rate": float(np.mean(~(s <= t)))}


# ---------------------------------------------------------------- rates of a rule already fixed

def binomial_upper(k, n, delta: float):
    """One-sided (1-δ) Clopper-Pearson upper bound on a proportion from k events in n trials.

    Broadcasts over arrays of k and n; returns a float for scalar input. 1.0 where k == n."""
    delta = _check_level("delta", delta)
    k_arr, n_arr = np.asarray(k), np.asarray(n)
    if not (np.issubdtype(k_arr.dtype, np.integer) and np.issubdtype(n_arr.dtype, np.integer)):
        raise ValueError("k and n must be integer counts (events, trials)")
    if np.any(n_arr < 1) or np.any(k_arr < 0) or np.any(k_arr > n_arr):
        raise ValueError("need 0 ≤ k ≤ n and n ≥ 1 (k events among n trials)")
    # The Beta(k+1, n-k) quantile; scipy.special rather than stats.beta: same function, ~50× less overhead.
    ub = np.where(k_arr >= n_arr, 1.0, special.betaincinv(k_arr + 1, np.maximum(n_arr - k_arr, 1), 1 - delta))
    return float(ub) if ub.ndim == 0 else ub


def binomial_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The two-sided exact (Clopper-Pearson) `confidence` interval of a proportion, k events in n
    trials: each side at (1 - confidence) / 2, so it never covers less than `confidence`."""
    half = (1 - _check_level("confidence", confidence)) / 2
    lower = 0.0 if k == 0 else float(special.betaincinv(k, n - k + 1, half))
    return lower, binomial_upper(int(k), int(n), half)


def binomial_p_above(k: int, n: int, bound: float) -> float:
    """The one-sided exact binomial p-value of H0 "the true rate is at most `bound`" from k events in
    n trials: P(Binomial(n, bound) ≥ k) (scipy.stats.binomtest's alternative="greater", computed
    as the regularised incomplete beta, ~50× less overhead)."""
    if not (0 <= k <= n and n >= 1):
        raise ValueError(f"need 0 ≤ k ≤ n and n ≥ 1 (k events among n trials), got k={k}, n={n}")
    if k == 0 or bound >= 1:
        return 1.0
    if bound <= 0:
        return 0.0
    return float(special.betainc(k, n - k + 1, bound))


def binomial_exceeds(k: int, n: int, bound: float, delta: float) -> bool:
    """Whether k events in n trials show, at level δ, that the true rate is above `bound`: the
    one-sided exact binomial test P(Binomial(n, bound) ≥ k) < δ. A raw comparison k / n > bound
    would flag about half of the splits of a rule whose true rate sits exactly at its bound."""
    return binomial_p_above(k, n, bound) < _check_level("delta", delta)


def rate_upper_bound(referred, delta: float) -> dict:
    """(1-δ) upper bound on a fixed rule's referral rate from its flags on n images (k referred).

    Valid only when the rule (every threshold, γ included) was fixed without these images, e.g.
    counted on the test split. Counted on the images its thresholds were fitted on (γ and the
    thresholds tuned on validation), the bound is optimistic: fitting pushed the observed rate down.
    Returns {method, delta, n, referred, rate, upper}."""
    r = _boolean("referred", referred)
    if len(r) == 0:
        raise ValueError("referred is empty: pass one referral flag per image")
    k, n = int(r.sum()), len(r)
    return {"method": "clopper_pearson", "delta": float(delta), "n": n, "referred": k,
            "rate": k / n, "upper": binomial_upper(k, n, delta)}


# ---------------------------------------------------------------- selective risk (γ rule)

def selective_risk_upper(errors, accepted, delta: float) -> dict:
    """(1-δ) Clopper-Pearson bound on the error rate among accepted images of a fixed split.

    Same caveat as `rate_upper_bound`: valid on images the rule was not fitted on.
    Returns {method, delta, n, accepted, errors, coverage, risk, upper}; risk and upper are None
    when nothing was accepted."""
    acc = _boolean("accepted", accepted)
    err = _boolean("errors", errors, len(acc))
    m, e = int(acc.sum()), int((err & acc).sum())
    out = {"method": "clopper_pearson", "delta": float(_check_level("delta", delta)), "n": len(acc),
           "accepted": m, "errors": e, "coverage": m / len(acc) if len(acc) else 0.0}
    if m == 0:
        return {**out, "risk": None, "upper": None}
    return {**out, "risk": e / m, "upper": binomial_upper(e, m, delta)}


def _risk_at(theta: float, conf: np.ndarray, err: np.ndarray, delta: float) -> tuple[int, int, float]:
    accepted = conf >= theta
    m, e = int(accepted.sum()), int(err[accepted].sum())
    return m, e, binomial_upper(e, m, delta)


def selective_risk_bound(confidence, correct, target_risk: float, delta: float) -> dict:
    """SGR (Geifman & El-Yaniv 2017, Algorithm 1): the lowest confidence threshold θ (accept when
    confidence ≥ θ, as γ does) whose selective risk is ≤ `target_risk` with probability ≥ 1-δ.

    Binary search over the calibration confidences sorted ascending, ⌈log2 n⌉ steps, each step's
    bound the Clopper-Pearson upper bound at δ/⌈log2 n⌉ on the errors among the accepted (a union
    bound over the steps makes every step's bound hold at once). Of the steps whose bound is below
    the target, the one with the most coverage is returned. Ties: all images at θ are accepted.

    Returns {method, target_risk, delta, n, steps, feasible, threshold, coverage, accepted,
    risk (empirical, among accepted), risk_bound}; when infeasible, threshold is None and
    risk_bound is the smallest bound any step reached."""
    conf = _vector("confidence", confidence).astype(np.float64)
    err = ~_boolean("correct", correct, len(conf))
    target, delta = _check_level("target_risk", target_risk), _check_level("delta", delta)
    if len(conf) == 0 or np.isnan(conf).any():
        raise ValueError("confidence must be non-empty and without NaN: drop images without a prediction")
    srt, n = np.sort(conf), len(conf)
    steps = max(1, math.ceil(math.log2(n)))
    lo, hi, best, smallest = 0, n - 1, None, 1.0          # 0-based ranks into srt
    for _ in range(steps):
        z = (lo + hi + 1) // 2
        m, e, b = _risk_at(srt[z], conf, err, delta / steps)
        smallest = min(smallest, b)
        if b < target:
            hi = z
            if best is None or m > best[1]:
                best = (float(srt[z]), m, e, b)
        else:
            lo = z
    out = {"method": "sgr", "target_risk": target, "delta": delta, "n": n, "steps": steps}
    if best is None:
        return {**out, "feasible": False, "threshold": None, "coverage": 0.0, "accepted": 0,
                "risk": None, "risk_bound": smallest}
    theta, m, e, b = best
    return {**out, "feasible": True, "threshold": theta, "coverage": m / n, "accepted": m,
            "risk": e / m, "risk_bound": b}


# ---------------------------------------------------------------- risk-coverage areas

def _rc_points(confidence, correct) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coverage, errors accepted / n, and images accepted, from the (0, 0) point through every
    distinct confidence threshold t (accept confidence ≥ t), most confident first."""
    conf = _vector("confidence", confidence).astype(np.float64)
    err = ~_boolean("correct", correct, len(conf))
    if len(conf) == 0 or np.isnan(conf).any():
        raise ValueError("confidence must be non-empty and without NaN: drop images without a prediction")
    order = np.argsort(-conf, kind="stable")
    c, e = conf[order], np.cumsum(err[order])
    last = np.r_[np.flatnonzero(c[1:] != c[:-1]), len(c) - 1]   # last index of each tie group
    n = len(c)
    return np.r_[0.0, (last + 1) / n], np.r_[0.0, e[last] / n], np.r_[0, last + 1]


def _trapezoid(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))


def augrc(confidence, correct) -> float:
    """Area under the generalized risk-coverage curve (Traub et al., NeurIPS 2024); lower is better.

    Generalized risk at threshold t = P(error and accepted) = errors with confidence ≥ t, over n.
    One curve point per distinct confidence (a tie group enters at once), plus (0, 0); trapezoidal
    area, as the authors' fd-shifts code does (it reports ×1000; this returns the raw area). Within
    a tie group the line equals the average over random orders of the group. Random confidence
    gives ≈ error_rate / 2, a perfect ranking error_rate² / 2."""
    cov, gr, _ = _rc_points(confidence, correct)
    return _trapezoid(cov, gr)


def aurc(confidence, correct) -> float:
    """Area under the selective risk-coverage curve on the same points as `augrc` (fd-shifts'
    linear AURC): selective risk = errors / accepted per distinct confidence, held flat from the
    most confident group to coverage 0; trapezoidal area. Without ties it differs from
    evaluate.metrics.coverage_risk's mean-over-ranks AURC by (first risk - last risk) / 2n."""
    cov, gr, m = _rc_points(confidence, correct)
    risk = gr[1:] * m[-1] / m[1:]                    # errors / accepted; m[-1] is n
    return _trapezoid(cov, np.r_[risk[0], risk])
