"""Test helpers for the report page: a metrics doc computed by alle_dist.evaluate's own functions on
synthetic probabilities (two members, optional baseline, referrals by γ, feature distance and empty
fields), and the page modules themselves.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np

from alle_dist.ensemble import rule as ensemble
from alle_dist.ensemble.probs import SplitProbs
from alle_dist.evaluate import metrics as EV
from alle_dist.evaluate import report

CLASSES = ("Benign", "Early", "Pre", "Pro")
BACKBONES = ("densenet201", "resnet50")


def evaluate_module(name: str):
    """alle_dist.evaluate.<name>."""
    return importlib.import_module(f"alle_dist.evaluate.{name}")


def _probs(rng, y, accuracy: float, sharpness: float) -> np.ndarray:
    """Softmax outputs right on `accuracy` of the rows; the wrong ones less sure, as real nets are."""
    right = rng.random(len(y)) < accuracy
    pred = np.where(right, y, (y + rng.integers(1, 4, len(y))) % 4)
    logits = rng.normal(0, 1, (len(y), 4))
    logits[np.arange(len(y)), pred] += np.where(right, sharpness, sharpness / 3)
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def split(n: int = 80, seed: int = 0, paths=None, baseline: bool = True) -> tuple[SplitProbs, dict]:
    """(SplitProbs of the members, {baseline: N x C}) with a few unfamiliar and empty-field images."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 4
    paths = list(paths) if paths is not None else [f"{CLASSES[c]}/img-{i:03d}.jpg" for i, c in enumerate(y)]
    probs = {"densenet201": _probs(rng, y, 0.88, 5.0), "resnet50": _probs(rng, y, 0.85, 4.5)}
    ood = rng.gamma(2.0, 1.0, n)
    ood[::17] = 9.0                                          # unfamiliar to the networks
    mask = rng.uniform(0.1, 0.3, n)
    mask[5::23] = 0.01                                       # nearly empty fields
    data = SplitProbs(paths, y, CLASSES, probs, {b: ood for b in BACKBONES}, mask)
    return data, ({"alexnet": _probs(rng, y, 0.7, 2.0)} if baseline else {})


def fitted_temperatures(data: SplitProbs) -> tuple[float, ...]:
    """Per member, the temperature of a grid with the lowest ECE (T = 1 is on it: never worse)."""
    grid = np.round(np.arange(0.5, 2.01, 0.05), 2)
    return tuple(float(min(grid, key=lambda t: EV.ece(ensemble.scale(data.probs[b], t), data.y)[0]))
                 for b in BACKBONES)


def spec(weights=(0.7, 0.3), temperatures=(1.0, 1.0), gamma: float = 0.7) -> ensemble.EnsembleSpec:
    return ensemble.EnsembleSpec(BACKBONES, CLASSES, weights, gamma, temperatures,
                                 {"ood_score": {b: 6.0 for b in BACKBONES}, "mask_fraction": {"low": 0.05, "high": None}})


def doc_for(tmp: Path, data: SplitProbs, baselines: dict, sp: ensemble.EnsembleSpec):
    """(doc, outputs) as evaluate_run builds them; the corrections counted by report.corrections
    (no manifest under `tmp`: the images are listed, not copied)."""
    outputs = EV.model_outputs(data, sp)
    models = {name: EV.model_metrics(o, data.y, sp.classes) for name, o in outputs.items()}
    for b, p in baselines.items():
        bd = SplitProbs(data.paths, data.y, data.classes, {b: p}, {b: None}, data.mask_fraction)
        models[b] = EV.model_metrics(EV.model_outputs(bd, None)[b], data.y, data.classes)
    ens = models[EV.ENSEMBLE]
    doc = {"per_class": ens["per_class"], "overall": ens["overall"], "coverage": ens["coverage"],
           "ece": ens["ece"], "n": ens["n"], "accuracy_on_accepted": ens["accuracy_on_accepted"],
           "ensemble": {"backbones": list(sp.backbones), "weights": list(sp.weights), "gamma": sp.gamma,
                        "temperatures": list(sp.temperatures)},
           "table3": EV.table3(data, sp), "models": models}
    doc["corrections"] = report.corrections(str(tmp), data, outputs, sp)
    return doc, outputs
