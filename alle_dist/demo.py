"""Run every stage on a built-in synthetic smear set (or --data SRC) and print a summary.

The demo stands in timm's tiny `test_resnet` and `test_efficientnet` for ResNet-50 and
DenseNet-201 at 96 px so that the whole pipeline runs in minutes on a laptop's CPU; every stage
is the real one (Ray Data, Ray Train, Ray Tune), driven exactly as `alle-dist <stage>` is.
"""
from __future__ import annotations

import argparse
import time

from .io import storage
from .rundir import RunDir

def _run(stage: str, argv: list) -> None:
    from .cli import get_args_parser, run_stage
    from .errors import UsageError

    print(f"\n=== alle-dist {stage} {' '.join(map(str, argv))}", flush=True)
    t0 = time.time()
    code = run_stage(stage, get_args_parser(stage).parse_args([str(a) for a in argv]))
    if code:
        raise UsageError(f"the {stage} stage failed (exit {code}); see its messages above")
    print(f"=== {stage} done in {time.time() - t0:.0f} s", flush=True)


def main(args: argparse.Namespace) -> int:
    from .runtime import init_ray
    from .testing.synthetic import generate

    run = str(args.run_dir)
    data = args.data or generate(storage.join(run, "synthetic"), n_per_class=args.n_per_class,
                                 seed=args.seed, size=max(args.image_size, 96))
    init_ray(args.num_cpus)
    backbones = args.backbones.split(",")
    t0 = time.time()
    _run("prepare", ["--data", data, "--run-dir", run, "--seed", args.seed])
    for b in backbones:
        _run("train", ["--run-dir", run, "--backbone", b, "--epochs", args.epochs, "--image-size",
                       args.image_size, "--pretrained", "none", "--seed", args.seed, "--lr", "3e-3"])
    _run("tune", ["--run-dir", run, "--backbones", args.backbones, "--num-samples", 10])
    _run("evaluate", ["--run-dir", run])
    _run("stress", ["--run-dir", run, "--limit", 100])     # renders the report again with its section
    out = storage.join(run, "classified")
    _run("classify", ["--run-dir", run, "--input", data, "--output", out])
    print(summary(run, out, time.time() - t0))
    return 0


def summary(run: str, out: str, seconds: float) -> str:
    from deltalake import DeltaTable

    from .classify.store import ResultStore

    metrics = storage.read_json(RunDir(run).report_file(RunDir.METRICS))
    store = ResultStore(out)   # a plain Delta table: any Delta reader sees the current rows
    rows = DeltaTable(store.uri, storage_options=store.options).to_pyarrow_table(columns=["status", "refer"])
    ok = [r for r in rows.column("status").to_pylist() if r == "ok"]
    referred = sum(bool(r) for r in rows.column("refer").to_pylist() if r is not None)
    lines = [
        "", "alle_dist demo: summary",
        f"  test images                 {metrics['n']}",
        f"  ensemble test accuracy      {metrics['overall']['accuracy']:.3f} (a referral counts as an error)",
        f"  accuracy on accepted images {_fmt(metrics.get('accuracy_on_accepted'))}",
        f"  coverage (not referred)     {metrics['coverage']:.3f}",
        f"  classified images           {rows.num_rows} ({len(ok)} ok), referred {referred} "
        f"({referred / max(len(ok), 1):.1%})",
        f"  report                      {RunDir(run).report_file(RunDir.REPORT_HTML)}",
        f"  classification table        {out} (Delta Lake, one row per image uri)",
        f"  pipeline time               {seconds:.0f} s",
    ]
    return "\n".join(lines)


def _fmt(value) -> str:
    return "n/a (every image referred)" if value is None else f"{value:.3f}"
