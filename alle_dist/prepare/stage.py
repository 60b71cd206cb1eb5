"""Stage `prepare`: catalogue the labelled images, hash and decode-check them, split without leakage.

Core (Ray-free): prepare.catalog (listing, per-file check), prepare.split, prepare.manifest.
Ray shell: `build_manifest` reads, hashes and decode-checks the files as Ray Data tasks.
Writes `RUN/manifest.parquet` and `RUN/prepare_config.yaml`. With `--reviews DST`, the images a
haematologist reviewed into a class (prepare.reviews) join SRC's.
"""
from __future__ import annotations

import argparse
import logging
from collections import Counter

import pyarrow as pa

from .. import schema
from ..config import PrepareConfig
from ..io import storage
from ..rundir import RunDir
from .catalog import check_batch, list_labelled
from .manifest import manifest_table

log = logging.getLogger("alle_dist.prepare")


def build_manifest(src: str, seed: int, cfg: PrepareConfig,
                   items: list[tuple[str, str]] | None = None, reviewed: list[dict] = ()) -> pa.Table:
    """List src (unless `items` from list_labelled are given), read + hash + decode-check every
    image (and the `reviewed` items of prepare.reviews) as Ray Data tasks, and split. Needs Ray up."""
    import ray

    from ..progress import iter_rows
    from ..runtime import num_blocks

    items = items if items is not None else list_labelled(src)
    blank = dict.fromkeys(reviewed[0]) if reviewed else {}   # every item has every key: one block schema
    items = [{**blank, "path": p, "label": c} for p, c in items] + list(reviewed)
    ds = ray.data.from_items(items, override_num_blocks=num_blocks(len(items), cfg.hash_workers))
    out = iter_rows(ds.map_batches(check_batch, fn_kwargs={"source": src}, batch_size=64),
                    "prepare: reading + hashing", len(items))
    return manifest_table(out, src, seed, cfg)


def summary(table: pa.Table) -> str:
    """A per-class / per-split count table and the error count, for the terminal."""
    rows = table.select(["label", "split", "status"]).to_pylist()
    counts = Counter((r["label"], r["split"] or r["status"]) for r in rows)
    classes = sorted({r["label"] for r in rows})
    cols = [*schema.SPLITS, schema.ERROR]
    lines = [f"{'class':<12}" + "".join(f"{c:>8}" for c in cols) + f"{'total':>8}"]
    for cls in classes:
        vals = [counts[(cls, c)] for c in cols]
        lines.append(f"{cls or '(none)':<12}" + "".join(f"{v:>8}" for v in vals) + f"{sum(vals):>8}")
    n_dup = len({g for g in table.column("dup_group").to_pylist() if g >= 0})
    reasons = Counter(r for r in table.column("group_reason").to_pylist() if r)
    n_near = len({g for g, r in zip(table.column("split_group").to_pylist(), table.column("group_reason").to_pylist())
                  if r and "near" in r})
    n_err = sum(v for (_, k), v in counts.items() if k == schema.ERROR)
    n_conflict = sum(1 for e in table.column("error").to_pylist() if e and e.startswith("conflicting labels"))
    n_review = sum(1 for s in table.column("source").to_pylist() if s == schema.REVIEW)
    lines.append(f"{len(rows)} files{f' ({n_review} reviewed)' if n_review else ''}, {n_err} errors ({n_conflict} with conflicting labels), {n_dup} exact-duplicate "
                 f"groups, {n_near} near-duplicate groups ({reasons.get('near', 0) + reasons.get('exact+near', 0)} "
                 "files); every group stays in one split")
    return "\n".join(lines)


def guard_existing(run: RunDir, table: pa.Table, reviews: bool = False) -> bool | str:
    """Before writing a manifest into a run directory that has one: True when it is identical (a no-op);
    refuse (StaleArtifactError) when artifacts made from the old split exist; else replace it, said.
    With reviews (`--reviews`: new labelled images, the reason to retrain) artifacts made from the
    old manifest don't stop it: the old manifest is kept (RunDir.previous_manifest) and its URI
    returned; lineage then refuses the old models until they are retrained."""
    from ..errors import StaleArtifactError
    from .manifest import manifest_id, recorded_id

    if not storage.exists(run.manifest):
        return False
    old, new = recorded_id(run), manifest_id(table)
    if old == new:
        return True
    made_from_it = [f"models/{b}" for b in run.model_folders()]
    made_from_it += [name for name, uri in ((RunDir.ENSEMBLE, run.ensemble), (RunDir.REPORT + "/", run.report))
                     if storage.exists(uri)]
    if made_from_it and reviews:
        kept = run.previous_manifest(old)
        storage.write_bytes(kept, storage.read_bytes(run.manifest))
        return kept
    if made_from_it:
        raise StaleArtifactError(f"{run.root}: already prepared with a different split or file set, and "
                                 f"{', '.join(made_from_it)} were made from it; prepare into a new --run-dir")
    log.warning("%s: replacing its manifest (a different split; nothing was made from the old one yet)", run.root)
    return False


def main(args: argparse.Namespace) -> int:
    from .. import config, fields
    from ..runtime import init_ray
    from . import reviews

    job_cfg = config.job_config(args.config, prepare=fields.overrides(args, PrepareConfig))
    src = storage.absolute(args.data)   # the manifest records where the images are, for every later stage
    items = list_labelled(src)  # before Ray starts: a bad source fails in a second
    reviewed, added = [], None
    if getattr(args, "reviews", None):
        reviewed, left_out, version = reviews.reviewed_items(args.reviews, sorted({c for _, c in items if c}))
        added = reviews.added_line(args.reviews, len(reviewed), left_out, version)
    init_ray(args.num_cpus)
    table = build_manifest(src, job_cfg.prepare.seed, job_cfg.prepare, items, reviewed)
    run = RunDir(args.run_dir)
    guard = guard_existing(run, table, reviews=bool(reviewed))
    if guard is True:
        print(summary(table))
        print(f"manifest: {run.manifest} (unchanged: the same files, labels and split; nothing to do)")
        return 0
    storage.write_parquet(table, run.manifest)
    config.save_resolved(run.config("prepare"), job_cfg, data=args.data, run_dir=args.run_dir, reviews=getattr(args, "reviews", None))
    print(summary(table))
    if added:
        print(added)
    print(f"manifest: {run.manifest}")
    if guard:
        print(reviews.stale_models_line(run.root, run.model_folders(), guard))
    return 0

