"""What a bundle holds besides the model files (pure): metadata.json, after MONAI's bundle metadata.

MONAI's keys where they apply (version, changelog, *_version, name, task, description, license,
intended_use, data_source, data_type, network_data_format, eval_metrics, references); alle_dist's own
keys for what MONAI has no word for (bundle_format, members, ensemble, model_sha256, onnx, lineage).
"""
from __future__ import annotations

from datetime import datetime, timezone

from ..bundle import FORMAT_VERSION
from ..evaluate.card import CITATION

TASK = "Classification of peripheral-blood-smear fields into four classes, referring uncertain or unfamiliar ones"


def member_record(meta: dict, model_id: str, prep, files: dict[str, str]) -> dict:
    """One member: architecture, identity, the sha256 its meta.json records for each file, its input."""
    return {"architecture": meta["architecture"], "model_id": model_id,
            "weights_sha256": meta["sha256"], "ood_sha256": (meta.get("ood") or {}).get("sha256"),
            "files": files, "preprocessing": preprocessing_doc(prep), "trained_with": meta.get("versions") or {}}


def preprocessing_doc(prep) -> dict:
    seg = prep.segment
    return {"image_size": prep.image_size, "mean": list(prep.mean), "std": list(prep.std),
            "segment": None if seg is None else {"method": "HSV colour interval (OpenCV ranges)",
                                                  "hsv_lower": list(seg.hsv_lower), "hsv_upper": list(seg.hsv_upper),
                                                  "open_kernel": seg.open_kernel, "close_kernel": seg.close_kernel,
                                                  "min_component_px": seg.min_component_px, "background": seg.background}}


def eval_metrics(metrics: dict | None) -> dict | None:
    """The headline test-split figures (report/metrics.json); None when evaluate was not run."""
    if not metrics:
        return None
    o = metrics["overall"]
    return {"split": "test", "n": metrics["n"], "accuracy": o["accuracy"], "macro_f1": o["f1"],
            "coverage": metrics["coverage"], "accuracy_on_accepted": metrics.get("accuracy_on_accepted"),
            "ece": metrics["ece"]}


def metadata(*, name: str, cfg, classes: list[str], members: dict, ensemble: dict, model_sha256: str,
             metrics: dict | None, versions: dict, source: str | None, run_dir: str, onnx: dict | None) -> dict:
    """metadata.json's document. `ensemble` = {file, sha256, backbones, weights, gamma, temperatures}."""
    sizes = sorted({m["preprocessing"]["image_size"] for m in members.values()})
    return {
        "bundle_format": FORMAT_VERSION, "name": name, "version": cfg.version,
        "changelog": {cfg.version: cfg.changelog or f"exported from {run_dir}"},
        "task": TASK, "description": "DenseNet/ResNet-style weighted threshold ensemble with calibrated referral "
                                     "(alle_dist); see model_card.md", "license": cfg.license,
        "intended_use": "Research and engineering; suggestions for a haematologist. Not a medical device.",
        "references": [CITATION], "data_source": source, "data_type": "RGB microscopy image (JPEG, PNG, TIFF)",
        "classes": list(classes),
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "RGB", "num_channels": 3, "dtype": "uint8",
                                 "value_range": [0, 255], "spatial_shape": "any; each member segments and resizes "
                                 f"it to its own size ({', '.join(map(str, sizes))} px)", "is_patch_data": False}},
            "outputs": {"pred": {"type": "probabilities", "format": "classes", "num_channels": len(classes),
                                 "dtype": "float32", "value_range": [0, 1],
                                 "channel_def": {str(i): c for i, c in enumerate(classes)}}}},
        "members": members, "ensemble": ensemble, "model_sha256": model_sha256,
        "eval_metrics": eval_metrics(metrics),
        "pytorch_version": versions.get("torch"), "numpy_version": versions.get("numpy"),
        "optional_packages_version": {k: v for k, v in versions.items() if k not in ("torch", "numpy")},
        "onnx": onnx, "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "source_run": run_dir,
    }
