"""Stage `classify`: bulk classification of an image store (local or s3://) with a trained ensemble."""
from __future__ import annotations

import argparse
import sys

from ..io import storage


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-dir", required=True, metavar="RUN", help="run directory with trained models and a tuned ensemble")
    p.add_argument("--input", required=True, metavar="SRC", help="folder or s3://bucket/prefix of images (recursive)")
    p.add_argument("--output", required=True, metavar="DST", help="folder or s3:// prefix for *.parquet + _manifest.json")
    p.add_argument("--batch-size", type=int, default=None, help="images per model call (default: classify.batch_size, 64)")
    p.add_argument("--gpus", type=int, default=None, help="GPU actors (default: every GPU; 0 = CPU actors)")
    p.add_argument("--cpu-workers", type=int, default=None, help="CPU model actors without GPUs (default: CPUs/2)")
    p.add_argument("--decode-tasks", type=int, default=None, help="concurrent read + decode tasks (default: as CPUs allow)")
    p.add_argument("--rows-per-file", type=int, default=None, help="result rows per Parquet part (default 100000)")
    p.add_argument("--trust-size", action="store_true",
                   help="on a rerun, skip inputs on path + size alone instead of re-reading them to confirm sha256")


def main(args: argparse.Namespace) -> int:
    from .. import config
    from ..runtime import init_ray
    from .pipeline import execute, plan_job

    overrides = {"batch_size": args.batch_size, "gpus": args.gpus, "cpu_workers": args.cpu_workers,
                 "decode_tasks": args.decode_tasks, "rows_per_file": args.rows_per_file,
                 "verify_sha256": False if args.trust_size else None}
    job = config.job_config(args.config, classify=overrides)
    plan = plan_job(args.run_dir, args.input, args.output, job)   # user errors before Ray starts
    init_ray(args.num_cpus)
    print(f"classify: {len(plan.listed)} inputs, {len(plan.skipped)} done already (path+size), "
          f"run {plan.run['run_id']}", file=sys.stderr)
    problems = execute(plan)
    config.save_resolved(storage.join(args.output, "classify_config.yaml"), job, run_dir=args.run_dir,
                         input=args.input, output=args.output, run_id=plan.run["run_id"])
    r = plan.run
    print(f"classify: {r['inputs']} inputs: {r.get('rows_written', 0)} rows written, {r['skipped']} skipped "
          f"(done before), {r['errors']} errors, {r['referred']} referred → {args.output}")
    for p in problems:
        print(f"classify: error: {p}", file=sys.stderr)
    return 1 if problems else 0
