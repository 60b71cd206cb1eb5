"""Every stage's command-line flags, in one light module: it imports argparse and config only, so
`alle-dist --help` and `alle-dist <stage> --help` print without importing torch, Ray or pyarrow.

A flag that sets a config field is generated from the field (`fields.add_flags`): its type comes
from the annotation and its default is None, so defaults < YAML (`--config`) < command line holds.
The stage's `main(args)` reads them back with `fields.overrides(args, Cls)`. Flags that are not
config fields (paths, --retrain, --tasks) are written here by hand.
"""
from __future__ import annotations

import argparse

from .config import (AUGMENT_RECIPES, CONTROLS, STAIN_NORMS, STRESS_SHIFTS, AuditConfig, ClassifyConfig, EvaluateConfig,
                     ExportConfig, PrepareConfig, ReviewConfig, SegmentConfig, StressConfig, TrainConfig, TuneConfig,
                     TUNE_OBJECTIVES)
from .fields import add_flags

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def common(p: argparse.ArgumentParser, default=None) -> None:
    """The flags every stage has. A sub-command's copy passes default=argparse.SUPPRESS: argparse
    copies a sub-parser's defaults over the values its parent parsed (`alle-dist review --config X
    build` would lose X)."""
    p.add_argument("--config", default=default, metavar="FILE.yaml",
                   help="YAML with per-stage sections; the command line overrides it")
    p.add_argument("--num-cpus", type=int, default=default,
                   help="CPUs of the local Ray started in-process (ignored when RAY_ADDRESS is set)")
    p.add_argument("--log-level", default=default, choices=LOG_LEVELS,
                   help="default: alle_dist's progress at INFO, Ray's own logs at WARNING (no Ray banners "
                        "or bars); INFO or DEBUG shows Ray's logs and progress bars too")


def prepare(p: argparse.ArgumentParser) -> None:
    """Catalogue the labelled images, hash and decode-check them, split without leakage."""
    p.add_argument("--data", required=True, metavar="SRC", help="folder or s3://bucket/prefix of <class>/<image> files")
    p.add_argument("--run-dir", required=True, metavar="RUN", help="run directory (local or s3://) to write the manifest into")
    p.add_argument("--reviews", default=None, metavar="DST",
                   help="also the images reviewed into a class in DST's reviews table (`alle-dist review import`)")
    add_flags(p, PrepareConfig, {"seed": "split seed", "hash_workers": "Ray Data tasks for read + hash "
                                                                     "(default: cluster CPUs)"})


def segment(p: argparse.ArgumentParser) -> None:
    """Segment images: the paper's HSV colour-interval segmentation of lymphoblasts, on Ray Data."""
    p.add_argument("--data", required=True, metavar="SRC", help="folder or s3://bucket/prefix of images (any depth)")
    p.add_argument("--output", required=True, metavar="DST",
                   help="DST/<rel path> gets the masked image, DST/masks/<rel stem>.png the mask")
    hsv(p)
    p.add_argument("--tasks", type=int, default=None, help="concurrent Ray Data tasks (default: Ray decides)")


def mlflow(p: argparse.ArgumentParser) -> None:
    """Opt-in experiment tracking (alle_dist.tracking): on train, tune and evaluate."""
    p.add_argument("--mlflow", default=None, metavar="URI",
                   help="log to MLflow: a tracking server (http://host:5000) or a local store; default: "
                        "$MLFLOW_TRACKING_URI, else off (needs pip install 'alle-dist[mlflow]')")


def hsv(p: argparse.ArgumentParser) -> None:
    """The HSV segmentation thresholds (the `segment:` section): on `segment`, and on `train`, whose
    models record them as their preprocessing (docs/segmentation.md)."""
    add_flags(p, SegmentConfig, {"hsv_lower": "lower HSV bound (OpenCV ranges)",
                                 "hsv_upper": "upper HSV bound (OpenCV ranges)"},
              extra={"hsv_lower": {"metavar": "H,S,V"}, "hsv_upper": {"metavar": "H,S,V"}})


def train(p: argparse.ArgumentParser) -> None:
    """Ray Train DDP fine-tuning of one backbone (or several), checkpoints that resume."""
    p.add_argument("--run-dir", required=True, metavar="RUN", help="prepared run directory (local or s3://)")
    add_flags(p, TrainConfig, {
        "backbone": "densenet201, resnet50, a paper baseline (mobilenetv2_100, vgg16, alexnet), 'all' "
                    "(members + baselines), a comma-separated list, or any timm model name",
        "epochs": "", "batch_size": "per worker", "lr": "",
        "image_size": "default: the backbone's (224; AlexNet 227)",
        "workers": "Train workers (default: one per GPU, else 2 CPU)",
        "gpus_per_worker": "default: 1 with GPUs, else 0",
        "pretrained": "hub | none | PATH (a .safetensors state dict, local or s3://)",
        "limit": "at most N images per split (smoke runs)", "seed": "",
        "max_failures": "worker-group restarts from the last checkpoint",
        "segmented": "train on HSV-segmented images or on the originals",
        "compile": "torch.compile on GPU",
        "control": "shortcut control: train on the fields with the segmented cells removed, into "
                   "RUN/models/<backbone>__control-background (evaluate reports it; tune never uses it)",
        "stain_norm": "stain normalisation before segmentation, fitted on the training split and recorded "
                      "with the model (default: none)",
        "stain_fit_images": "training fields the stain reference is fitted on",
    }, extra={"control": {"choices": CONTROLS}, "stain_norm": {"choices": STAIN_NORMS}})
    p.add_argument("--augment-recipe", default=None, choices=AUGMENT_RECIPES,
                   help="augment.recipe: paper (geometric, the default) or stain (plus stain jitter, brightness, "
                        "contrast, gamma and blur; strengths in the `augment:` section of --config)")
    hsv(p)
    p.add_argument("--retrain", action="store_true", help="train again even if this backbone is finished in RUN")
    mlflow(p)


def tune(p: argparse.ArgumentParser) -> None:
    """Ray Tune over the ensemble weights and γ on the validation probabilities, plus referral thresholds."""
    p.add_argument("--run-dir", required=True, help="run directory (local or s3://) with models/<backbone>/")
    add_flags(p, TuneConfig, {
        "backbones": "comma-separated, in weight order", "objective": "",
        "min_coverage": "validation coverage floor of the γ rule",
        "num_samples": "random-search trials besides the paper's grid", "seed": "",
        "training_samples": "--tune-training: number of training runs",
    }, extra={"objective": {"choices": TUNE_OBJECTIVES}})
    p.add_argument("--referral-rate", type=_rate, default=None, metavar="ALPHA",
                   help="image rule: at most ALPHA of in-distribution images referred (default 0.01; "
                        "'none': the uncalibrated tune.image_quantile)")
    p.add_argument("--confidence", type=float, default=None, metavar="1-DELTA",
                   help="probability the referral-rate and risk bounds hold (default 0.95)")
    p.add_argument("--selective-risk", type=float, default=None, metavar="R",
                   help="set γ by SGR: error rate among accepted validation images ≤ R at --confidence")
    p.add_argument("--tune-training", action="store_true",
                   help="instead: tune the training lr and batch size by running the train stage inside Tune "
                        "(the `train:` section of --config sets the rest, e.g. backbone and epochs)")
    # Sets train.backbone (tune's own --seed is tune.seed): see tune.stage.main.
    p.add_argument("--backbone", default=None, help="--tune-training: the backbone to train (default train.backbone)")
    mlflow(p)


def _rate(text: str):
    """--referral-rate: a float, or 'none' (no guarantee: the uncalibrated quantile)."""
    return "none" if text.lower() == "none" else float(text)


def evaluate(p: argparse.ArgumentParser) -> None:
    """The test split: metrics of every backbone, baseline and the ensemble; plots, corrections, report."""
    p.add_argument("--run-dir", required=True, help="run directory (local or s3://) with ensemble.json and models/")
    add_flags(p, EvaluateConfig, {"max_corrections_copied": "copy at most this many correction images "
                                                            "(the CSV lists all)"})
    mlflow(p)


def stress(p: argparse.ArgumentParser) -> None:
    """The test split under graded stain and acquisition shifts: coverage and confident errors per shift."""
    p.add_argument("--run-dir", required=True, metavar="RUN", help="run directory with trained models and a tuned ensemble")
    add_flags(p, StressConfig, {
        "shifts": f"comma-separated, from {','.join(STRESS_SHIFTS)} (default: all)",
        "limit": "a seeded subset of N test images (default: the whole test split)",
        "seed": "the subset and each shift's per-image draws",
        "goal_factor": "goal: confident-error rate under a shift ≤ this × the unshifted one",
    })


def classify(p: argparse.ArgumentParser) -> None:
    """Bulk classification of an image store (local or s3://) into a Delta Lake table."""
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--run-dir", metavar="RUN", help="run directory with trained models and a tuned ensemble")
    model.add_argument("--model", metavar="BUNDLE", help="a model bundle (alle-dist export), local or s3://: "
                       "the same rows and model_sha256 as the run it was exported from")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", metavar="SRC", help="folder or s3://bucket/prefix of images (recursive)")
    src.add_argument("--input-list", metavar="FILE", help="Parquet or CSV of input URIs (a `uri` column, or "
                     "`bucket` + `key` as in an S3 Inventory export): no listing")
    p.add_argument("--output", required=True, metavar="DST",
                   help="folder or s3:// prefix of the Delta table (one row per input uri)")
    add_flags(p, ClassifyConfig, {
        "batch_size": "images per model call", "gpus": "GPU actors (default: every GPU; 0 = CPU actors)",
        "cpu_workers": "CPU model actors without GPUs (default: CPUs/2)",
        "decode_tasks": "concurrent read + decode tasks (default: as CPUs allow)",
        "commit_rows": "result rows per commit", "commit_seconds": "commit at least this often",
    })
    p.add_argument("--trust-size", action="store_true",
                   help="on a rerun, skip inputs on size + mtime (local) or ETag (S3) without reading them "
                        "(default: re-read and compare sha256)")


def export(p: argparse.ArgumentParser) -> None:
    """A trained ensemble as a versioned, hashed bundle with a model card (and ONNX on request)."""
    p.add_argument("--run-dir", required=True, metavar="RUN", help="run directory with trained models and a tuned ensemble")
    p.add_argument("--output", required=True, metavar="BUNDLE", help="the bundle's folder (local or s3://); one per version")
    add_flags(p, ExportConfig, {
        "version": "bundle version, MAJOR.MINOR.PATCH", "changelog": "this version's changelog entry",
        "license": "the model card's license", "zip": "also write BUNDLE.zip",
        "onnx": "also write each member as ONNX, parity-checked with onnxruntime (pip install 'alle-dist[onnx]')",
        "onnx_opset": "ONNX opset", "parity_images": "images of the ONNX parity check",
        "parity_tolerance": "largest accepted |p_onnx - p_torch|",
    })
    p.add_argument("--parity-data", default=None, metavar="SRC",
                   help="images for the ONNX parity check (default: the run's test split)")


def review(p: argparse.ArgumentParser) -> None:
    """Referred images (and a blind audit sample) to a haematologist, and their decisions back."""
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    build = sub.add_parser("build", help=review_build.__doc__, description=review_build.__doc__)
    review_build(build)
    common(build, argparse.SUPPRESS)
    into = sub.add_parser("import", help=review_import.__doc__, description=review_import.__doc__)
    review_import(into)
    common(into, argparse.SUPPRESS)


def review_build(p: argparse.ArgumentParser) -> None:
    """A review batch from DST: a page that works from disk, Label Studio tasks, a batch manifest."""
    p.add_argument("--table", required=True, metavar="DST", help="the classification table (local or s3://)")
    p.add_argument("--output", required=True, metavar="DIR", help="local folder for review.html, label_studio/, batch.json")
    p.add_argument("--run-dir", default=None, metavar="RUN",
                   help="the models DST was classified with (default: the run dir classify recorded in DST)")
    add_flags(p, ReviewConfig, {"audit": "accepted images drawn at random (stratified by class) for the blind audit",
                                "limit": "at most K referred images in this batch (default: every one not yet reviewed)",
                                "seed": "seed of the audit draw (default: a fresh one, recorded in the batch)",
                                "image_px": "longest side of the field on the page"},
              extra={"limit": {"metavar": "K"}, "audit": {"metavar": "N"}, "seed": {"metavar": "S"}})


def review_import(p: argparse.ArgumentParser) -> None:
    """Record decisions (the page's CSV, a Label Studio JSON export) in DST's reviews table."""
    p.add_argument("--table", required=True, metavar="DST", help="the classification table the batch came from")
    p.add_argument("--decisions", required=True, nargs="+", metavar="FILE",
                   help="decisions CSV from review.html, or a Label Studio JSON export (several allowed)")


def audit(p: argparse.ArgumentParser) -> None:
    """What the reviews say: error among accepted, referred outcomes, referral rate per run, with exact intervals."""
    p.add_argument("--table", required=True, metavar="DST", help="the classification table (local or s3://)")
    p.add_argument("--run-dir", default=None, metavar="RUN",
                   help="for the stated bounds in ensemble.json (default: the run dir classify recorded in DST)")
    p.add_argument("--output", default=None, metavar="DIR", help="folder for audit.json and audit.html (default: print only)")
    add_flags(p, AuditConfig, {"confidence": "level of the intervals and tests (default: the rule's 1-δ)"})


def demo(p: argparse.ArgumentParser) -> None:
    """Run every stage on a built-in synthetic smear set (or --data SRC) and print a summary."""
    p.add_argument("--data", default=None, help="labelled images (folder or s3://); default: synthetic smears")
    p.add_argument("--run-dir", default="runs/demo", help="run directory (folder or s3://)")
    p.add_argument("--backbones", default="test_resnet,test_efficientnet",
                   help="two comma-separated backbones for the ensemble")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--n-per-class", type=int, default=120, help="synthetic images per class")
    p.add_argument("--seed", type=int, default=0)
