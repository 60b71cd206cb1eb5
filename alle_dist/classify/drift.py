"""Drift: is a classify run referring more images as unlike the training data than the image rule promises?

tune states, for the image-statistics rule (reason `odd_image`), a calibration-conditional bound
α' (ensemble.json guarantees → image_rule.alpha_bound; referral.bounds.conformal_threshold): with
probability ≥ 1-δ, at most α' of new images *like the training images* are referred by it. A run
whose share of odd_image referrals among its ok rows is significantly above α' (one-sided exact
binomial test at the rule's δ: referral.bounds.binomial_exceeds; p-value: referral.bounds.binomial_p_above)
is shown images unlike the training data: another stain, microscope or lab. The run record gets the
numbers (`assess`), the terminal one warning line (`warning`). The audit reads the same numbers per run.
"""
from __future__ import annotations

import pyarrow.compute as pc

from .. import schema
from ..io import storage
from ..referral import bounds

REASON = "odd_image"      # the image rule's reason in refer_reason (referral.signals.REASONS)


def stated_bound(image_rule: dict | None) -> tuple[float, float] | None:
    """(α', δ) of a calibrated image rule (ensemble.json's image_rule); None without a guarantee
    (rule off, or the uncalibrated quantile)."""
    rule = image_rule or {}
    if rule.get("alpha_bound") is None or rule.get("delta") is None:
        return None
    return float(rule["alpha_bound"]), float(rule["delta"])


def assess(k: int, n: int, image_rule: dict | None) -> dict:
    """k odd_image referrals among n ok rows against the rule's bound: rate, bound, δ, p-value, drift."""
    out = {"reason": REASON, "referred": int(k), "n": int(n), "rate": k / n if n else None,
           "bound": None, "delta": None, "p_value": None, "drift": None}
    bound = stated_bound(image_rule)
    if bound is None or not n:
        return out
    alpha, delta = bound
    p = bounds.binomial_p_above(int(k), int(n), alpha)
    return {**out, "bound": alpha, "delta": delta, "p_value": p,
            "drift": bool(bounds.binomial_exceeds(int(k), int(n), alpha, delta))}


def count(batches, run_id: str | None = None) -> tuple[int, int]:
    """(odd_image referrals, ok rows) over Arrow batches with run_id, status and refer_reason (of one run)."""
    k = n = 0
    for b in batches:
        ok = pc.equal(b.column("status"), schema.OK)
        if run_id is not None:
            ok = pc.and_(ok, pc.equal(b.column("run_id"), run_id))
        odd = pc.and_(ok, pc.fill_null(pc.match_substring(b.column("refer_reason"), REASON), False))
        n += int(pc.sum(ok).as_py() or 0)
        k += int(pc.sum(odd).as_py() or 0)
    return k, n


def warning(d: dict) -> str | None:
    """The one warning line of a drifting run (None when it is not)."""
    if not d.get("drift"):
        return None
    return (f"classify: warning: {d['referred']} of {d['n']} images ({100 * d['rate']:.1f} %) were referred as unlike "
            f"the training images, above the image rule's bound of {100 * d['bound']:.2f} % (p = {d['p_value']:.2g}): "
            "these images are probably from another stain, microscope or lab than the training data; have a "
            "haematologist review a sample (`alle-dist review build`), and retrain with such images "
            "(`alle-dist prepare --reviews`) before trusting labels on them")


def check_run(store, spec, run_id: str) -> dict | None:
    """The run's drift numbers for its run record, counted from its committed rows (one streamed scan
    of three columns), and the warning line on stderr when it drifts. A failure to count costs a
    warning, never the run's outcome (None)."""
    import sys

    try:
        k, n = count(store.batches(["run_id", "status", "refer_reason"]), run_id)
    except Exception as exc:  # noqa: BLE001 - a number for the record
        print(f"classify: warning: the referral rate could not be checked: {storage.first_line(exc)}", file=sys.stderr)
        return None
    d = assess(k, n, spec.referral.fit.get("image_rule"))
    if warning(d):
        print(warning(d), file=sys.stderr)
    return d
