"""Test helpers for the report page: a metrics doc computed by alle_dist.evaluate's own functions on
synthetic probabilities (two members, optional baseline, referrals by γ, feature distance and empty
fields), the page modules themselves, and a tiny run directory whose galleries have real pictures.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np

from alle_dist.ensemble import weighted
from alle_dist.ensemble.split_probs import SplitProbs
from alle_dist.evaluate import metrics as EV
from alle_dist.evaluate import report
from alle_dist.testing.synthetic import CLASSES  # the paper's four classes, one home

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
    return tuple(float(min(grid, key=lambda t: EV.ece(weighted.scale(data.probs[b], t), data.y)[0]))
                 for b in BACKBONES)


def spec(weights=(0.7, 0.3), temperatures=(1.0, 1.0), gamma: float = 0.7) -> weighted.EnsembleSpec:
    return weighted.EnsembleSpec(BACKBONES, CLASSES, weights, gamma, temperatures,
                                 {"ood_score": {b: 6.0 for b in BACKBONES}, "mask_fraction": {"low": 0.05, "high": None}})


def doc_for(tmp: Path, data: SplitProbs, baselines: dict, sp: weighted.EnsembleSpec):
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


# ---------------------------------------------------------------- a run for the galleries

MEMBERS = ("test_resnet", "test_efficientnet")
# (first member's, second member's) (p of the true class, wrong class offset), cycled over the test rows;
# at weights 0.5 / 0.5 and γ 0.6: both right; one wrong, the ensemble right (0.65); referred (0.55 < γ);
# both wrong the same way (the ensemble wrong); the other one wrong, the ensemble right (0.675).
PATTERNS = [((0.95, 1), (0.95, 2)), ((0.3, 1), (1.0, 1)), ((0.55, 1), (0.55, 2)), ((0.1, 1), (0.2, 1)),
            ((1.0, 1), (0.35, 3))]


def _pattern_probs(y) -> list[np.ndarray]:
    from helpers_probs import onehot_mix

    rows = [PATTERNS[i % len(PATTERNS)] for i in range(len(y))]
    return [np.stack([onehot_mix(c, (c + r[m][1]) % 4, r[m][0]) for c, r in zip(y, rows)]) for m in range(2)]


def gallery_run(tmp: Path, n_test: int = 48, n_train: int = 16, image_size: int = 64) -> Path:
    """RUN under tmp: the MEMBERS as tiny models (helpers_run.make_run_dir, weights 0.5 / 0.5, γ 0.6,
    ood threshold 6) trained on a manifest over real smear images in tmp/src (96 px; n_train more rows
    in the train and val splits), test probabilities following PATTERNS (every 11th row unfamiliar),
    and the lineage chain manifest → models → outputs → ensemble.json intact."""
    from helpers_probs import write_manifest, write_probs
    from helpers_run import make_run_dir, write_images

    from alle_dist.ensemble.lineage import snapshot
    from alle_dist.models import persistence
    from alle_dist.prepare.manifest import recorded_id
    from alle_dist.rundir import RunDir

    src, run = tmp / "src", tmp / "run"
    rels = write_images(src, n_test + n_train, size=96)
    test = rels[:n_test]
    make_run_dir(run, backbones=MEMBERS, image_size=image_size, gamma=0.6,
                 referral={"ood_score": {b: 6.0 for b in MEMBERS}})
    splits = ["test"] * n_test + ["train", "val"] * (n_train // 2)
    write_manifest(run, src, [{"path": p, "label": p.split("/")[0], "split": s} for p, s in zip(rels, splits)])
    rd = RunDir(str(run))
    for b in MEMBERS:                    # what training records: the manifest the model was trained on
        meta = persistence.read_meta(rd.model(b).root)
        persistence.write_meta(rd.model(b).root, {**meta, "lineage": {"manifest": recorded_id(rd)}})
    y = np.arange(n_test) % 4                                    # as write_images labels them
    ood = np.where(np.arange(n_test) % 11 == 10, 9.0, 1.0)
    for b, p in zip(MEMBERS, _pattern_probs(y)):
        write_probs(run, b, "test", test, y, p, ood=ood, meta=False)   # meta=False: keep the model's meta.json
    weighted.save_spec(str(run), weighted.load_spec(str(run)), objective="test", lineage=snapshot(rd, MEMBERS))
    return run
