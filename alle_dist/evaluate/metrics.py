"""Test-split metrics (pure): per class one-vs-rest and overall, confusion, calibration, ROC,
coverage–risk, the paper's Table 3.

Conventions: a referred image counts as predicted "no class" (a false negative of its true class,
a true negative of every other); `overall.accuracy` is the share of images given their true label
(a referral counts as an error); `overall.{precision,sensitivity,specificity,f1}` are macro averages
of the one-vs-rest per-class values; `ovr_accuracy_macro` is the macro average of per-class
one-vs-rest accuracy (the paper's style, which counts true negatives).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ensemble import probs as probs_mod
from ..ensemble import rule as ensemble
from ..ensemble.rule import PAPER_GAMMAS, PAPER_WEIGHTS

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
    """Risk (error rate among accepted) at each coverage, accepting the most confident first."""
    order = np.argsort(-confidence, kind="stable")
    errors = np.cumsum(~correct[order])
    k = np.arange(1, len(order) + 1)
    risk = errors / k
    return {"coverage": (k / len(order)).tolist(), "risk": risk.tolist(),
            "aurc": float(np.mean(risk)) if len(risk) else 0.0}


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


def model_outputs(data: probs_mod.SplitProbs, spec: ensemble.EnsembleSpec | None) -> dict[str, ModelOutput]:
    """Every single model's argmax (never referred), and the ensemble's decision under `spec`."""
    out = {}
    temps = dict(zip(spec.backbones, spec.temperatures)) if spec is not None else {}
    for b, p in data.probs.items():
        scaled = ensemble.scale(p, temps.get(b, 1.0))      # argmax unchanged; calibration may improve
        out[b] = ModelOutput(b, scaled, p, p.argmax(1), scaled.max(1), [None] * len(p))
    if spec is not None:
        d = probs_mod.apply_split(spec, data)
        raw = ensemble.combine([data.probs[b] for b in spec.backbones], spec.weights)
        out[ENSEMBLE] = ModelOutput(ENSEMBLE, d.probs, raw, d.label, d.confidence, d.reason)
    return out


def model_metrics(o: ModelOutput, y: np.ndarray, classes) -> dict:
    m = class_metrics(y, o.pred, classes)
    accepted = o.pred >= 0
    ece_after, bins_after = ece(o.probs, y)
    ece_before, bins_before = ece(o.raw_probs, y)
    m.update({
        "n": int(len(y)), "coverage": float(accepted.mean()) if len(y) else 0.0,
        "n_referred": int((~accepted).sum()),
        "accuracy_on_accepted": float(np.mean(o.pred[accepted] == y[accepted])) if accepted.any() else None,
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


def table3(data: probs_mod.SplitProbs, spec: ensemble.EnsembleSpec) -> list[dict]:
    """The paper's Table 3 on the test split: every weight set × γ (with the fitted temperatures and
    referral rule), in the order of spec.backbones (densenet201, resnet50 by default)."""
    rows = []
    if len(spec.backbones) != 2:
        return rows
    for w in PAPER_WEIGHTS:
        for g in PAPER_GAMMAS:
            s = ensemble.EnsembleSpec(spec.backbones, spec.classes, w, g, spec.temperatures, spec.referral)
            d = probs_mod.apply_split(s, data)
            m = class_metrics(data.y, d.label, spec.classes)["overall"]
            rows.append({"weights": list(w), "gamma": g, "coverage": float(1 - d.refer.mean()), **m})
    return rows
