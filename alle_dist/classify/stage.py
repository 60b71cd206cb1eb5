"""Stage `classify`: bulk classification of an image store (local or s3://) into a Delta Lake table."""
from __future__ import annotations

import argparse
import sys


def main(args: argparse.Namespace) -> int:
    from .. import config, fields

    overrides = {**fields.overrides(args, config.ClassifyConfig),
                 "verify_sha256": False if args.trust_size else None}
    job_cfg = config.job_config(args.config, classify=overrides)
    try:
        return _run(args, job_cfg)
    except KeyboardInterrupt:   # before the run started: nothing to record
        print("classify: interrupted before any work; nothing was written", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace, job_cfg) -> int:
    from .. import config, fields
    from ..errors import StorageError
    from ..io import storage
    from ..runtime import init_ray
    from .resolve import model_root
    from .run import dead_runs, execute, setup

    # Every user error (DST, models, SRC, no images) surfaces here, before Ray starts.
    models_at = model_root(args.run_dir, getattr(args, "model", None))   # a bundle: verified first
    job = setup(models_at, args.input, args.output, job_cfg, input_list=args.input_list,
                  start_ray=lambda: init_ray(args.num_cpus))
    where = job.store.side_path("classify_config.yaml")
    try:
        config.save_resolved(where, job_cfg, run_dir=args.run_dir, model=getattr(args, "model", None), input=args.input,
                             input_list=args.input_list, output=args.output, run_id=job.run["run_id"])
    except OSError as exc:   # e.g. a full disk: before any work, one line
        raise StorageError(f"{where}: can't be written ({storage.first_line(exc)}); free space or fix the "
                           "permissions, then rerun") from None
    print(f"classify: run {job.run['run_id']} → {job.store.uri}", file=sys.stderr)
    for line in dead_runs(job.store):
        print(f"classify: warning: {line}", file=sys.stderr)
    try:
        problems = execute(job)
    except KeyboardInterrupt:
        c = job.run
        print(f"classify: interrupted; {c.get('committed', 0)} rows committed, run {c['run_id']} recorded as "
              "interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    _report(job, args.output, problems)
    return 1 if problems else 0


def _report(job, output: str, problems: list[str]) -> None:
    c = job.run
    skipped = job.listing.skipped_summary()
    if skipped:
        print(f"classify: warning: not image files, left out: {skipped}", file=sys.stderr)
    if c.get("list_duplicates"):
        print(f"classify: warning: {c['list_duplicates']} duplicate entries of the input list counted once",
              file=sys.stderr)
    refreshed = f"; {c['refreshed']} with a new mtime/ETag recorded" if c.get("refreshed") else ""
    print(f"classify: {c['inputs']} inputs: {c['classified']} classified, {c['errors']} error rows, "
          f"{c['referred']} referred, {c['skipped']} unchanged (skipped{refreshed}); {c['committed']} rows "
          f"committed → {output}")
    for p in problems:
        print(f"classify: error: {p}", file=sys.stderr)
