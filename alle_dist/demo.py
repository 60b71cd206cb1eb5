"""Run every stage on a built-in synthetic smear set (or --data SRC) and print a summary.

The demo stands in timm's tiny `test_resnet` and `test_efficientnet` for ResNet-50 and
DenseNet-201 at 96 px so that the whole pipeline runs in minutes on a laptop's CPU; every stage
is the real one (Ray Data, Ray Train, Ray Tune), driven exactly as `alle-dist <stage>` is; at the end the
ensemble is exported as a model bundle (RUN/bundle, with its model card).
"""
from __future__ import annotations

import argparse
import time

from .bundle import BundleDir
from .io import storage
from .rundir import RunDir


def _run(stage: str, argv: list, config: str | None = None) -> None:
    """One stage, as `alle-dist <stage> ARGV` (with the demo's --config YAML, whose sections the flags override)."""
    from .cli import get_args_parser, run_stage
    from .errors import UsageError

    argv = [*argv, *(["--config", config] if config else [])]

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
    _run("prepare", ["--data", data, "--run-dir", run, "--seed", args.seed], args.config)
    for b in backbones:
        _run("train", ["--run-dir", run, "--backbone", b, "--epochs", args.epochs, "--image-size",
                       args.image_size, "--pretrained", "none", "--seed", args.seed, "--lr", "3e-3"], args.config)
    _run("tune", ["--run-dir", run, "--backbones", args.backbones, "--num-samples", 10], args.config)
    _run("evaluate", ["--run-dir", run], args.config)
    _run("stress", ["--run-dir", run, "--limit", 100], args.config)     # renders the report again with its section
    out = storage.join(run, "classified")
    _run("classify", ["--run-dir", run, "--input", data, "--output", out], args.config)
    review_loop(run, out, args.seed, args.config)
    bundle = BundleDir(storage.join(run, "bundle"))
    _run("export", ["--run-dir", run, "--output", bundle.root], args.config)
    print(summary(run, out, time.time() - t0, bundle))
    return 0


def review_loop(run: str, out: str, seed: int, config: str | None = None) -> None:
    """review build on the demo's table, decisions by a simulated haematologist who knows each image's
    class folder (the synthetic labels), review import, audit."""
    batch = storage.join(run, "review")
    _run("review", ["build", "--table", out, "--output", batch, "--audit", 40, "--seed", seed], config)
    if storage.exists(storage.join(batch, "batch.json")):
        decisions = storage.join(run, "review", "decisions-simulated.csv")
        storage.write_bytes(decisions, simulated_decisions(storage.read_json(storage.join(batch, "batch.json"))))
        _run("review", ["import", "--table", out, "--decisions", decisions], config)
    _run("audit", ["--table", out, "--output", storage.join(run, "audit")], config)


def simulated_decisions(batch: dict) -> bytes:
    """The CSV review.html would export, each image labelled with its class folder (a simulated reviewer)."""
    import datetime as dt

    from .review.decisions import to_csv

    now = dt.datetime.now(dt.timezone.utc).isoformat()
    rows = [{"uri": it["uri"], "sha256": it["sha256"], "label": it["path"].replace("\\", "/").split("/")[-2],
             "reviewer": "demo: simulated from the synthetic labels", "note": "", "decided_at": now,
             "batch_id": batch["batch_id"]} for it in batch["items"]]
    return to_csv([r for r in rows if r["label"] in batch["classes"]])


def summary(run: str, out: str, seconds: float, bundle: BundleDir | None = None) -> str:
    from .tables import read_results

    metrics = storage.read_json(RunDir(run).report_file(RunDir.METRICS))
    # A plain Delta table, read as docs/classify.md says (to_pyarrow_table() can abort at exit)
    rows = read_results(out, columns=["status", "refer"])
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
        f"  review page / audit         {storage.join(run, 'review', 'review.html')} / "
        f"{storage.join(run, 'audit', 'audit.html')}",
        *([f"  model bundle                {bundle.root} (classify --model {bundle.root})",
           f"  model card                  {bundle.model_card}"] if bundle else []),
        f"  pipeline time               {seconds:.0f} s",
    ]
    return "\n".join(lines)


def _fmt(value) -> str:
    return "n/a (every image referred)" if value is None else f"{value:.3f}"
