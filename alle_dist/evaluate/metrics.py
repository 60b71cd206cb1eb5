"""Test-split metrics (pure): per class one-vs-rest and overall, confusion, calibration, ROC,
coverage–risk (AURC and AUGRC), the paper's Table 3, the referral guarantees checked on the test split
(`guarantee_rows`) and the shortcut control's reading (`control_summary`).

Conventions: a referred image counts as predicted "no class" (a false negative of its true class,
a true negative of every other); `overall.accuracy` is the share of images given their true label
(a referral counts as an error); `overall.{precision,sensitivity,specificity,f1}` are macro averages
of the one-vs-rest per-class values; `ovr_accuracy_macro` is the macro average of per-class
one-vs-rest accuracy (the paper's style, which counts true negatives).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ensemble import split_probs
from ..ensemble import weighted
from ..ensemble.weighted import PAPER_GAMMAS, PAPER_WEIGHTS
from ..referral import bounds
from ..referral.signals import referral_flags
from ..tune.select import too_few_for_a_bound

ENSEMBLE = "ensemble"


def class_metrics(y: np.ndarray, pred: np.ndarray, classes) -> dict:
    """Per-class one-vs-rest metrics from sklearn with fixed labels (pred -1 = referred), + macro."""
    from sklearn.metrics import multilabel_confusion_matrix, precision_recall_fscore_support

    labels = list(range(len(classes)))
    prec, sens, f1, support = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    mcm = multilabel_confusion_matrix(y, pred, labels=labels)      # C x [[tn, fp], [fn, tp]]
    tn, fp, fn, tp = (mcm[:, i, j].astype(float) for i, j in ((0, 0), (0, 1), (1, 0), (1, 1)))
    spec = np.divide(tn, tn + fp, out=np.zeros_like(tn), where=(tn + fp) > 0)
    acc = (tp + tn) / max(len(y), 1)
    per_class = {c: {"precision": float(prec[i]), "sensitivity": float(sens[i]), "specificity": float(spec[i]),
                     "f1": float(f1[i]), "accuracy": float(acc[i]), "support": int(support[i]),
                     "tp": int(tp[i]), "fp": int(fp[i]), "fn": int(fn[i]), "tn": int(tn[i])}
                 for i, c in enumerate(classes)}
    overall = {k: float(np.mean([per_class[c][k] for c in classes]))
               for k in ("precision", "sensitivity", "specificity", "f1")}
    overall["accuracy"] = float(np.mean(pred == y)) if len(y) else 0.0
    overall["ovr_accuracy_macro"] = float(np.mean(acc))
    return {"per_class": per_class, "overall": overall}


def confusion(y: np.ndarray, pred: np.ndarray, num_classes: int) -> dict:
    """Counts and row percentages; the last column counts referrals."""
    from sklearn.metrics import confusion_matrix

    labels = list(range(num_classes)) + [-1]
    counts = confusion_matrix(y, pred, labels=labels)[:num_classes]
    rows = counts.sum(axis=1, keepdims=True)
    pct = np.divide(100.0 * counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    return {"counts": counts.tolist(), "percent": np.round(pct, 2).tolist()}


def ece(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> tuple[float, dict]:
    """Expected calibration error of the top-label confidence, and the reliability-diagram bins."""
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    correct = (pred == y).astype(float)
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    count = np.bincount(idx, minlength=bins).astype(float)
    acc = np.divide(np.bincount(idx, correct, bins), count, out=np.zeros(bins), where=count > 0)
    mean_conf = np.divide(np.bincount(idx, conf, bins), count, out=np.zeros(bins), where=count > 0)
    value = float(np.sum(count / max(len(y), 1) * np.abs(acc - mean_conf)))
    return value, {"edges": edges.tolist(), "count": count.tolist(), "accuracy": acc.tolist(),
                   "confidence": mean_conf.tolist()}


def coverage_risk(confidence: np.ndarray, correct: np.ndarray) -> dict:
    """Risk (error rate among accepted) at each coverage, accepting the most confident first; AURC
    (mean over ranks) and AUGRC (Traub et al. 2024: the area under P(error and accepted), which a
    system can't improve by referring almost everything; referral.bounds.augrc)."""
    order = np.argsort(-confidence, kind="stable")
    errors = np.cumsum(~correct[order])
    k = np.arange(1, len(order) + 1)
    risk = errors / k
    return {"coverage": (k / len(order)).tolist(), "risk": risk.tolist(),
            "aurc": float(np.mean(risk)) if len(risk) else 0.0,
            "augrc": bounds.augrc(confidence, correct) if len(risk) else 0.0}


def roc(probs: np.ndarray, y: np.ndarray, classes) -> dict:
    """Per-class one-vs-rest ROC curve and AUC (None where a class has no positives or negatives)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    out = {}
    for i, c in enumerate(classes):
        pos = y == i
        if pos.all() or not pos.any():
            out[c] = {"auc": None, "fpr": [], "tpr": []}
            continue
        fpr, tpr, _ = roc_curve(pos, probs[:, i])
        out[c] = {"auc": float(roc_auc_score(pos, probs[:, i])), "fpr": fpr.tolist(), "tpr": tpr.tolist()}
    return out


@dataclass
class ModelOutput:
    """One model's (or the ensemble's) test-split outputs."""
    name: str
    probs: np.ndarray          # N x C, as decided on (the ensemble's weighted scores)
    raw_probs: np.ndarray      # before temperature scaling (for the ECE comparison)
    pred: np.ndarray           # class index, -1 = referred
    confidence: np.ndarray
    reason: list


def model_outputs(data: split_probs.SplitProbs, spec: weighted.EnsembleSpec | None) -> dict[str, ModelOutput]:
    """Every single model's argmax (never referred), and the ensemble's decision under `spec`."""
    out = {}
    temps = dict(zip(spec.backbones, spec.temperatures)) if spec is not None else {}
    for b, p in data.probs.items():
        scaled = weighted.scale(p, temps.get(b, 1.0))      # argmax unchanged; calibration may improve
        out[b] = ModelOutput(b, scaled, p, p.argmax(1), scaled.max(1), [None] * len(p))
    if spec is not None:
        d = split_probs.apply_split(spec, data)
        raw = weighted.combine([data.probs[b] for b in spec.backbones], spec.weights)
        out[ENSEMBLE] = ModelOutput(ENSEMBLE, d.probs, raw, d.label, d.confidence, d.reason)
    return out


def model_metrics(o: ModelOutput, y: np.ndarray, classes) -> dict:
    m = class_metrics(y, o.pred, classes)
    ece_after, bins_after = ece(o.probs, y)
    ece_before, bins_before = ece(o.raw_probs, y)
    m.update({
        "n": int(len(y)), **weighted.accepted_metrics(y, o.pred), "n_referred": int(np.sum(o.pred < 0)),
        "ece": ece_after, "ece_before_temperature": ece_before,
        "confusion": confusion(y, o.pred, len(classes)),
        "roc": roc(o.probs, y, classes),
        "coverage_risk": coverage_risk(o.confidence, o.probs.argmax(1) == y),
        "reliability": {"before": bins_before, "after": bins_after},
        "referral_reasons": _count([r for r in o.reason if r]),
    })
    return m


def _count(items) -> dict:
    keys, counts = np.unique(np.asarray(items, dtype=object).astype(str), return_counts=True) if items else ([], [])
    return {str(k): int(v) for k, v in zip(keys, counts)}


def table3(data: split_probs.SplitProbs, spec: weighted.EnsembleSpec) -> list[dict]:
    """The paper's Table 3 on the test split: every weight set × γ (with the fitted temperatures and
    referral rule), in the order of spec.backbones (densenet201, resnet50 by default)."""
    rows = []
    if len(spec.backbones) != 2:
        return rows
    for w in PAPER_WEIGHTS:
        for g in PAPER_GAMMAS:
            s = weighted.EnsembleSpec(spec.backbones, spec.classes, w, g, spec.temperatures, spec.referral)
            d = split_probs.apply_split(s, data)
            m = class_metrics(data.y, d.label, spec.classes)["overall"]
            rows.append({"weights": list(w), "gamma": g, "coverage": float(1 - d.refer.mean()), **m})
    return rows


# ---------------------------------------------------------------- guarantees and the shortcut control

# The γ rule's row of doc["guarantees"] (metrics.json), by name: audit holds its reviews against it.
GAMMA_ROW = "γ rule: error rate among accepted test images"


def guarantee_row(name: str, bound, alpha, delta: float, k: int, n: int, basis: str, valid: bool) -> dict:
    """One row of doc["guarantees"] (evaluate.page renders the keys as columns). `test_upper`: the (1-δ)
    Clopper-Pearson bound from the test split itself, valid for the rule as tuned (nothing was fitted on
    these images). `bound`: what tune stated, `valid` when it is a guarantee (the image rule's
    conformal bound, SGR) rather than an optimistic validation figure; None when the validation split
    was too small to state one (`basis` says so). `headline`: the number to read first, always a
    valid one (the tuned bound when valid, else test_upper). `violated`: only for a valid bound, the
    test split showing at level δ that the true rate is above it (referral.bounds.binomial_exceeds), not
    merely an observed rate above it; an optimistic figure is never "violated", only not a guarantee."""
    test_upper = bounds.binomial_upper(k, n, delta) if n else None
    violated = bounds.binomial_exceeds(k, n, float(bound), delta) if valid and bound is not None and n else None
    return {"name": name, "headline": bound if valid and bound is not None else test_upper, "alpha": alpha,
            "delta": delta, "bound": bound, "valid": valid, "observed": k / n if n else None,
            "test_upper": test_upper, "n": n, "violated": violated, "basis": basis}


def _validation_bound(fit: dict, what: str) -> tuple[float | None, str]:
    """(bound, basis) of an optimistic validation figure; no bound when the split was too small for
    its target (tune records `n_required`; files from before it state the figure as they did)."""
    if too_few_for_a_bound(fit):
        counted = fit.get("accepted", fit.get("n"))
        return None, (f"not enough validation images: n={counted}, need ≥ {fit['n_required']} to bound {what} "
                      f"at {fit['target']:g}; the test split's bound is the valid one")
    return fit.get("upper"), "validation Clopper-Pearson (optimistic: fitted on these images)"


def guarantee_rows(data: split_probs.SplitProbs, spec: weighted.EnsembleSpec, g: dict | None) -> list[dict]:
    """The test split's referral rates (image rule, whole rule) and the error rate among γ-accepted
    images, each beside what tune recorded in ensemble.json's "guarantees" (`g`)."""
    if not g:
        return []
    delta, n = float(g["delta"]), len(data.y)
    d = split_probs.apply_split(spec, data)
    rows = []
    img = g.get("image_rule") or {}
    if img.get("alpha_bound") is not None and data.image_score is not None:
        odd = referral_flags(spec.referral, data.probs, None, None, data.image_score)["odd_image"]
        rows.append(guarantee_row("image rule: share of test images referred", img["alpha_bound"], img["alpha"],
                                  delta, int(odd.sum()), n, "conformal, calibration-conditional", True))
    bound, basis = _validation_bound(g.get("whole_rule_validation") or {}, "the whole rule's referral rate")
    rows.append(guarantee_row("whole rule: share of test images referred", bound, None, delta,
                              int(d.refer.sum()), n, basis, False))
    gr = g.get("gamma_rule") or {}
    wrong = (d.probs.argmax(1) != data.y) & d.gamma_accepted
    if gr.get("set_by") == "sgr":
        bound, basis = (gr.get("sgr") or {}).get("risk_bound"), "SGR"
    else:
        bound, basis = _validation_bound(gr.get("validation") or {}, "the error rate among accepted images")
    rows.append(guarantee_row(GAMMA_ROW, bound,
                              (gr.get("sgr") or {}).get("target_risk"), delta, int(wrong.sum()),
                              int(d.gamma_accepted.sum()), basis, gr.get("set_by") == "sgr"))
    return rows


def control_summary(backbone: str, y: np.ndarray, pred: np.ndarray, real_accuracy: float | None,
                    delta: float = 0.05) -> dict:
    """doc["control"]: the shortcut control's test accuracy beside chance (always the most common
    test class) and the real model's (`real_accuracy`, same backbone), with a plain-language reading.
    Near chance = not significantly above it at level δ (binomial test); far above = at least half
    of the real model's margin over chance."""
    n, k = len(y), int(np.sum(pred == y))
    acc = k / n if n else 0.0
    chance = float(np.bincount(y[y >= 0]).max() / n) if n else 0.0
    if not n or not bounds.binomial_exceeds(k, n, chance, delta):
        reading = "near chance: without the cell the model can't tell the classes apart, so it needs the cell"
    elif real_accuracy is not None and acc - chance >= 0.5 * (real_accuracy - chance):
        reading = ("far above chance: the background alone (red cells, plasma, stain, illumination) predicts "
                   "the class, so the data allows shortcuts; check where the real models look (Grad-CAM)")
    else:
        reading = "above chance: the background carries some class information the models could use"
    return {"backbone": backbone, "accuracy": acc, "chance": chance, "real_accuracy": real_accuracy,
            "reading": reading}
