"""Referral of unfamiliar images: OOD referral rate next to in-distribution coverage, per method.

    python bench/ood_referral.py --run-dir RUN --device cuda [--limit 300] [--target-coverage 0.98]

Needs a RUN with trained backbones (models/<b>/ with ood.safetensors) and its manifest. Builds the
OOD set (testing.unfamiliar) from test-split images, runs every backbone on validation, test and OOD
images with the training preprocessing (HSV segmentation, resize), fits each method's threshold on
the validation split at the target coverage, and prints per method the in-distribution test
coverage and the OOD referral rate (overall and per kind). The last line is one JSON object.
Goal (issue 4): >= 95 % of OOD images referred at >= 98 % in-distribution coverage.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from alle_dist import errors
from alle_dist import schema
from alle_dist.config import SegmentConfig
from alle_dist.ensemble import split_probs
from alle_dist.ensemble import weighted
from alle_dist.imaging.model_input import from_bytes
from alle_dist.io import storage
from alle_dist.rundir import RunDir
from alle_dist.io.images import decode_rgb, encode_png
from alle_dist.models import feature_distance
from alle_dist.models import field_stats
from alle_dist.models import persistence
from alle_dist.prepare import catalog
from alle_dist.prepare import manifest as prep_manifest
from alle_dist.referral import signals
from alle_dist.testing import unfamiliar

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))



def split_images(run_dir: str, split: str, limit: int | None, seed: int) -> tuple[list[bytes], np.ndarray, list[str]]:
    table, source, classes = prep_manifest.read_manifest(run_dir)
    rows = [r for r in table.to_pylist() if r["split"] == split and r["status"] == schema.OK]
    if limit and len(rows) > limit:
        rows = [rows[i] for i in sorted(np.random.default_rng(seed).permutation(len(rows))[:limit])]
    data = [storage.read_bytes(catalog.image_uri(source, r["path"])) for r in rows]
    return data, np.array([classes.index(r["label"]) for r in rows]), classes


def preprocess(data: list[bytes], size: int, seg: SegmentConfig | None,
               working_size: int | None, stain=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pipeline's inputs: (uint8 N x S x S x 3, mask fractions, image statistics); OpenCV frees the GIL."""
    def one(d: bytes):
        p = from_bytes(d, size, seg, working_size, stain=stain)
        return p.image, p.mask_fraction, field_stats.features_of(p.field)

    with ThreadPoolExecutor() as ex:
        out = list(ex.map(one, data))
    return np.stack([o[0] for o in out]), np.array([o[1] for o in out]), np.stack([o[2] for o in out])


def signals(run_dir: str, backbones, data: list[bytes], device: str, batch: int) -> dict:
    """Per backbone probabilities and Mahalanobis scores, the mask fraction and the image-statistics
    score (from the first backbone with image statistics), for encoded images."""
    from alle_dist.models import preprocessing
    from alle_dist.models.predictor import Predictor

    probs, scores, mf, img, ref, cache = {}, {}, None, None, None, {}
    for b in backbones:
        mdir = RunDir(run_dir).model(b).root
        pred, stats = Predictor(mdir, device), _ood_stats(mdir)
        prep = preprocessing.read(pred.meta)    # the model's own, as recorded when it was trained
        key = (pred.image_size, prep.segment, prep.working_size, prep.stain)
        x, frac, feats = cache[key] if key in cache else cache.setdefault(key, preprocess(data, *key))
        outs = [pred(x[i:i + batch]) for i in range(0, len(x), batch)]
        probs[b] = np.concatenate([o["probs"] for o in outs]).astype(np.float64)
        scores[b] = feature_distance.score(np.concatenate([o["features"] for o in outs]), stats).astype(np.float64)
        mf = frac if mf is None else mf
        if img is None and field_stats.has_stats(stats):
            img = field_stats.score(feats, stats).astype(np.float64)
            ref = field_stats.calibration(stats)
    return {"probs": probs, "ood": scores, "mask_fraction": mf, "image_score": img,
            "image_reference": ref if img is not None else None}


def decide(spec: weighted.EnsembleSpec, s: dict) -> np.ndarray:
    return weighted.apply(spec, s["probs"], s["ood"], s["mask_fraction"], s["image_score"]).refer


def _ood_stats(mdir: str) -> dict:
    """ood.safetensors, sha256-checked when meta.json records it."""
    try:
        return persistence.load_ood(mdir)
    except errors.StorageError:
        uri = storage.join(mdir, persistence.OOD_FILE)
        return {k: v.numpy() for k, v in persistence.load_tensors(uri, None).items()}


def _one_sided(val: np.ndarray, target: float) -> float:
    return float(np.quantile(val, target, method="higher"))


def methods(spec: weighted.EnsembleSpec, val: dict, target: float, rule_signals=signals.DEFAULT_SIGNALS) -> dict:
    """name → function(signals) -> refer (bool N), each fitted on validation signals at `target`."""
    bs, w, temps = spec.backbones, spec.weights, spec.temperatures
    msp = lambda s, t: 1 - weighted.combine([s["probs"][b] for b in bs], w, t).max(1)  # noqa: E731
    dis = lambda s: signals.disagreement([weighted.scale(s["probs"][b], T) for b, T in zip(bs, temps)])  # noqa: E731
    thr_m = {b: _one_sided(val["ood"][b], target) for b in bs}
    t_msp, t_mspt, t_dis = _one_sided(msp(val, None), target), _one_sided(msp(val, temps), target), _one_sided(dis(val), target)
    only_mask = signals.fit_referral({bs[0]: val["probs"][bs[0]]}, None, val["mask_fraction"], target,
                                      signals=("mask_low", "mask_high"))
    no_ref = weighted.EnsembleSpec(bs, spec.classes, w, spec.gamma, temps)
    low_conf = weighted.apply(no_ref, val["probs"]).refer
    scaled = {b: weighted.scale(val["probs"][b], T) for b, T in zip(bs, temps)}
    fit = lambda which, low=None: signals.fit_referral(  # noqa: E731
        scaled, val["ood"], val["mask_fraction"], target, already_referred=low, signals=which,
        image_score=val["image_score"], image_reference=val["image_reference"])
    combo = fit(rule_signals, low_conf)
    combo_spec = weighted.EnsembleSpec(bs, spec.classes, w, spec.gamma, temps, combo)
    combo_all = weighted.EnsembleSpec(bs, spec.classes, w, spec.gamma, temps, fit(signals.SIGNALS, low_conf))
    no_image = weighted.EnsembleSpec(bs, spec.classes, w, spec.gamma, temps, fit(("ood_score", "mask_low"), low_conf))
    image_only = weighted.EnsembleSpec(bs, spec.classes, w, 0.0, temps, fit(("image_score",)))
    # The unfamiliar-image rule alone (γ = 0): what the rule adds beyond a confidence threshold.
    unfam_spec = weighted.EnsembleSpec(bs, spec.classes, w, 0.0, temps, fit(rule_signals))
    out = {
        "msp": lambda s: msp(s, None) > t_msp,
        "msp_temperature": lambda s: msp(s, temps) > t_mspt,
        "disagreement": lambda s: dis(s) > t_dis,
        "mahalanobis": lambda s: _maha_union(s, bs, thr_m),
        "image_stats": lambda s: decide(image_only, s),
        "mask_fraction": lambda s: weighted.apply(weighted.EnsembleSpec(bs, spec.classes, w, 0.0, temps, only_mask),
                                                  s["probs"], None, s["mask_fraction"]).refer,
        "unfamiliar_rule": lambda s: decide(unfam_spec, s),
        "combined_without_image": lambda s: decide(no_image, s),
        "combined": lambda s: decide(combo_spec, s),
        "combined_all_signals": lambda s: decide(combo_all, s),
    }
    if spec.referral:
        out["ensemble_json"] = lambda s: decide(spec, s)
    return out, combo


def _maha_union(s, bs, thr) -> np.ndarray:
    return np.any([s["ood"][b] > thr[b] for b in bs], axis=0)


def save_signals(path: str, sig: dict, val_y, test_y, kinds) -> None:
    arrays = {"val_y": val_y, "test_y": test_y, "ood_kind": np.array(kinds)}
    for split, s in sig.items():
        arrays[f"{split}_mask_fraction"] = s["mask_fraction"]
        if s["image_score"] is not None:
            arrays[f"{split}_image_score"] = s["image_score"]
        if s["image_reference"] is not None:
            arrays[f"{split}_image_reference"] = s["image_reference"]
        for b in s["probs"]:
            arrays[f"{split}_{b}_probs"], arrays[f"{split}_{b}_ood"] = s["probs"][b], s["ood"][b]
    np.savez_compressed(path, **arrays)


def load_or_default_spec(run_dir: str, backbones) -> weighted.EnsembleSpec:
    if storage.exists(RunDir(run_dir).ensemble):
        return weighted.load_spec(run_dir)
    classes = split_probs.model_classes(run_dir, backbones[0])
    return weighted.EnsembleSpec(tuple(backbones), classes, (1 / len(backbones),) * len(backbones), 0.7)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run-dir", required=True)
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    p.add_argument("--backbones", default=None, help="default: ensemble.json's, else densenet201,resnet50")
    p.add_argument("--limit", type=int, default=300, help="test images (each gives one OOD image per kind)")
    p.add_argument("--val-limit", type=int, default=None, help="validation images for fitting (default all)")
    p.add_argument("--kinds", default=",".join(unfamiliar.KINDS))
    p.add_argument("--target-coverage", type=float, default=0.98)
    p.add_argument("--signals", default=",".join(signals.DEFAULT_SIGNALS),
                   help=f"signals of the 'combined' rule, from {','.join(signals.SIGNALS)}")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--write-ood", default=None, help="also write the OOD PNGs to this folder")
    p.add_argument("--save-signals", default=None, metavar="FILE.npz",
                   help="save every measured signal (probs, ood scores, mask fractions, labels, OOD kinds) "
                        "to refit referral rules offline")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    spec0 = load_or_default_spec(a.run_dir, a.backbones.split(",") if a.backbones else ["densenet201", "resnet50"])
    bs = tuple(a.backbones.split(",")) if a.backbones else spec0.backbones
    spec = spec0 if bs == spec0.backbones else weighted.EnsembleSpec(bs, spec0.classes, (1 / len(bs),) * len(bs), spec0.gamma)
    val_data, val_y, _ = split_images(a.run_dir, schema.VAL, a.val_limit, a.seed)
    test_data, test_y, _ = split_images(a.run_dir, schema.TEST, a.limit, a.seed)
    kinds = [k for k in a.kinds.split(",") if k]
    with ThreadPoolExecutor() as ex:
        items = [x for part in ex.map(lambda k: unfamiliar.build([decode_rgb(d) for d in test_data], a.seed, [k]), kinds)
                 for x in part]
        ood_data = list(ex.map(lambda it: encode_png(it[2]), items))
    if a.write_ood:
        unfamiliar.write(items, a.write_ood)
    sig = {name: signals(a.run_dir, bs, d, a.device, a.batch_size)
           for name, d in (("val", val_data), ("test", test_data), ("ood", ood_data))}
    if a.save_signals:
        save_signals(a.save_signals, sig, val_y, test_y, [k for k, _, _ in items])
    fitted, combo = methods(spec, sig["val"], a.target_coverage, tuple(a.signals.split(",")))
    kind_of = np.array([k for k, _, _ in items])
    results = {}
    print(f"{'method':<22} {'val cov':>8} {'test cov':>9} {'OOD refer':>10}   per kind")
    for name, fn in fitted.items():
        r_val, r_test, r_ood = fn(sig["val"]), fn(sig["test"]), fn(sig["ood"])
        per_kind = {k: float(r_ood[kind_of == k].mean()) for k in kinds}
        results[name] = {"val_coverage": float(1 - r_val.mean()), "test_coverage": float(1 - r_test.mean()),
                         "ood_referred": float(r_ood.mean()), "per_kind": per_kind}
        print(f"{name:<22} {1 - r_val.mean():8.4f} {1 - r_test.mean():9.4f} {r_ood.mean():10.4f}   "
              + " ".join(f"{k}={v:.2f}" for k, v in per_kind.items()))
    acc = {b: float((sig["test"]["probs"][b].argmax(1) == test_y).mean()) for b in bs}
    print(json.dumps({"bench": "ood_referral", "device": a.device, "backbones": list(bs), "n_val": len(val_data),
                      "n_test": len(test_data), "n_ood": len(items), "target_coverage": a.target_coverage,
                      "test_accuracy": acc, "val_accuracy": {b: float((sig["val"]["probs"][b].argmax(1) == val_y).mean()) for b in bs},
                      "combined_rule": combo, "methods": results, "seconds": round(time.perf_counter() - t0, 1)}))
    return 0


def _cuda() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        return False


if __name__ == "__main__":
    sys.exit(main())
