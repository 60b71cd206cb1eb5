"""The audit's numbers (pure): what the reviews say, each with an exact interval and its n.

- `accepted_errors`: the error rate among the images the ensemble labelled, from the blind audit
  sample (reviews of kind `audit`): overall and per label given, each with its two-sided
  Clopper-Pearson interval, beside the γ rule's stated bound with the one-sided exact binomial
  p-value (H0: the true rate is at most the bound) and a verdict. An accepted image the reviewer
  called `other_cell` or `unusable` counts as an error (the ensemble gave it a confident class it
  does not have); those are also shown on their own, and the rate of wrong *classes* alone.
- `referred_outcomes`: what the referred images turned out to be: each class (and whether the
  ensemble's argmax was right), another cell type, unusable; by referral reason too.
- `run_rates`: each classify run's image-rule referral rate against the rule's conformal bound
  (classify.drift.assess), with its interval.

Intervals: referral.bounds.binomial_interval (Clopper-Pearson, (1-confidence)/2 on each side, as in
the model card); p-values: referral.bounds.binomial_p_above (binomtest's "greater"); verdicts:
referral.bounds.binomial_exceeds, the test evaluate uses, so the audit and the report can't disagree
on what "above the bound" means.
"""
from __future__ import annotations

from collections import Counter

from .. import schema
from ..classify import drift
from ..referral import bounds
from ..tune.select import too_few_for_a_bound

CONSISTENT, ABOVE = "consistent", "above the bound"


def interval(k: int, n: int, confidence: float) -> dict:
    """k of n: the rate and its exact two-sided (Clopper-Pearson) interval at `confidence`."""
    if not n:
        return {"k": 0, "n": 0, "rate": None, "low": None, "high": None}
    low, high = bounds.binomial_interval(int(k), int(n), confidence)
    return {"k": int(k), "n": int(n), "rate": k / n, "low": float(low), "high": float(high)}


def against(k: int, n: int, bound: float | None, delta: float) -> dict | None:
    """The observed k of n against a stated bound: one-sided exact p-value and the verdict at δ."""
    if bound is None or not n:
        return None
    p = bounds.binomial_p_above(int(k), int(n), float(bound))
    above = bounds.binomial_exceeds(int(k), int(n), float(bound), delta)
    return {"bound": float(bound), "delta": float(delta), "p_value": p, "verdict": ABOVE if above else CONSISTENT}


def gamma_bound(guarantees: dict | None, tested: dict | None = None) -> tuple[float | None, str | None]:
    """The bound on the error rate among accepted images to hold the audit against, and its basis: the
    one evaluate's report leads with, so the audit and the report can't compare against different
    numbers. SGR's certified bound when γ was set by SGR; else the test split's Clopper-Pearson bound
    from evaluate (`tested`: its γ row in metrics.json, of this very ensemble.json; valid, since
    nothing was fitted on the test images); without that report, tune's validation figure, which is
    optimistic, or none when the validation split was too small to state one."""
    gr = (guarantees or {}).get("gamma_rule") or {}
    if gr.get("set_by") == "sgr":
        return (gr.get("sgr") or {}).get("risk_bound"), "SGR"
    if tested and tested.get("test_upper") is not None:
        return tested["test_upper"], f"evaluate's test-split Clopper-Pearson, n={tested['n']}"
    fit = gr.get("validation") or {}
    if too_few_for_a_bound(fit):
        return None, (f"not enough validation images (n={fit.get('accepted')}, need ≥ {fit['n_required']}) "
                       "and no evaluate report of these models: run alle-dist evaluate")
    return fit.get("upper"), "validation Clopper-Pearson (optimistic)"


def accepted_errors(audits: list[dict], classes, guarantees: dict | None, confidence: float,
                    tested: dict | None = None) -> dict:
    """From audit reviews ({label, model_label}): error rates among accepted images."""
    delta = 1 - confidence
    wrong = [r for r in audits if r["label"] != r["model_label"]]
    kinds = Counter(r["label"] if r["label"] in schema.REVIEW_EXTRA_LABELS else "wrong_class" for r in wrong)
    bound, basis = gamma_bound(guarantees, tested)
    by_class = {}
    for c in classes:
        mine = [r for r in audits if r["model_label"] == c]
        by_class[c] = interval(sum(r["label"] != c for r in mine), len(mine), confidence)
    return {**interval(len(wrong), len(audits), confidence),
            "wrong_class": interval(kinds["wrong_class"], len(audits), confidence),
            schema.OTHER_CELL: kinds[schema.OTHER_CELL], schema.UNUSABLE: kinds[schema.UNUSABLE],
            "stated": against(len(wrong), len(audits), bound, delta), "basis": basis, "by_class": by_class}


def outcome_of(r: dict) -> str:
    """A referred image's outcome: 'class, argmax right' / 'class, argmax wrong' / other_cell / unusable."""
    if r["label"] in schema.REVIEW_EXTRA_LABELS:
        return r["label"]
    return "argmax_right" if r["label"] == r["predicted_class"] else "argmax_wrong"


def referred_outcomes(referred: list[dict], classes) -> dict:
    """From referred reviews ({label, predicted_class, refer_reason}): what they turned out to be."""
    per_class = {c: {"n": sum(r["label"] == c for r in referred),
                     "argmax_right": sum(r["label"] == c and r["predicted_class"] == c for r in referred)}
                 for c in classes}
    by_reason: dict[str, Counter] = {}
    for r in referred:
        for reason in (r["refer_reason"] or "").split("+"):
            if reason:
                by_reason.setdefault(reason, Counter())[outcome_of(r)] += 1
    extra = {k: sum(r["label"] == k for r in referred) for k in schema.REVIEW_EXTRA_LABELS}
    return {"n": len(referred), "classes": per_class, **extra,
            "argmax_right": sum(v["argmax_right"] for v in per_class.values()),
            "by_reason": {k: dict(v) for k, v in sorted(by_reason.items())}}


def run_rates(runs: list[dict], image_rule: dict | None, confidence: float) -> list[dict]:
    """Per run ({run_id, started_at, referred, n}): its image-rule referral rate, interval and drift."""
    out = []
    for r in runs:
        d = drift.assess(r["referred"], r["n"], image_rule)
        out.append({"run_id": r["run_id"], "started_at": r.get("started_at"), **d,
                    **{k: v for k, v in interval(r["referred"], r["n"], confidence).items() if k in ("low", "high")}})
    return out


def audit(reviews: list[dict], classes, guarantees: dict | None, runs: list[dict], confidence: float,
          tested: dict | None = None) -> dict:
    """The whole audit doc (audit.json) from the reviews table's rows, the stated guarantees (and
    evaluate's γ row, `tested`) and the runs."""
    audits = [r for r in reviews if r["kind"] == schema.AUDIT]
    referred = [r for r in reviews if r["kind"] == schema.REFERRED]
    return {"confidence": confidence, "reviews": len(reviews),
            "accepted": accepted_errors(audits, classes, guarantees, confidence, tested),
            "referred": referred_outcomes(referred, classes),
            "runs": run_rates(runs, (guarantees or {}).get("image_rule"), confidence)}
