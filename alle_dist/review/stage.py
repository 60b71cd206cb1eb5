"""Stage `review`: `alle-dist review build` (a batch for a haematologist: review.build) and
`alle-dist review import` (their decisions into DST's reviews table: review.importer).

Core (Ray-free): review.select (what a batch holds), review.decisions and review.labelstudio (the
files that come back), review.page (the page). No Ray: a batch is a few hundred images, read and
explained on the driver (Grad-CAM on its CPU), like evaluate's galleries.
"""
from __future__ import annotations

import argparse
import sys


def main(args: argparse.Namespace) -> int:
    return {"build": build, "import": import_}[args.action](args)


def build(args: argparse.Namespace) -> int:
    from .. import config, fields
    from .build import PAGE, build

    job_cfg = config.job_config(args.config, review=fields.overrides(args, config.ReviewConfig))
    doc = build(args.table, args.output, args.run_dir, job_cfg)
    sel, left = doc["selection"], doc["left_out"]
    kinds = [it["kind"] for it in doc["items"]]
    gone = ", ".join(f"{n} {why}" for why, n in sorted(left.items()))
    if not doc["written"]:
        print(f"review build: nothing to review in {doc['table']}: every referred image is reviewed and no audit "
              f"sample was asked for{f' ({gone})' if gone else ''}; no files written")
        return 0
    print(f"review build: batch {doc['batch_id']}: {kinds.count('referred')} referred (of "
          f"{sel['referred_not_reviewed']} not yet reviewed) + {kinds.count('audit')} audit (of "
          f"{sel['accepted_not_reviewed']} accepted, seed {doc['seed']}) from table version {doc['table_version']}"
          f"{f'; left out: {gone}' if gone else ''} → {args.output}/{PAGE}")
    if left.get("changed since classified"):
        print("review build: warning: some images changed since they were classified; rerun `alle-dist classify` "
              "to classify their current bytes", file=sys.stderr)
    return 0


def import_(args: argparse.Namespace) -> int:
    from .importer import run, summary

    print(summary(run(args.table, args.decisions)))
    return 0
