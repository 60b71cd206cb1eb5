"""`review import`: decisions files → DST's reviews table.

Every file is read first (a file that is neither the page's CSV nor a Label Studio export stops the
import with one line before anything is written). Then each decision is checked against its batch
manifest (stored under DST by `review build`) and the table's current row (decisions.refusal): a
refused decision is counted under its reason and the rest land. Several decisions for one
(uri, sha256) in the files: the latest counts. Against the reviews table: new keys are inserted, a
different decision at least as recent replaces the recorded one ("changed"; the old one stays in
the table's history), the same decision changes nothing, an older one is not applied ("older").
"""
from __future__ import annotations

from collections import Counter

from .. import schema
from ..errors import UsageError
from ..io import storage
from . import decisions, source
from .reviews import ReviewTable


def read_files(paths: list[str]) -> tuple[list[dict], int]:
    """Every decision of every file, and how many tasks were undecided; UsageError for a bad file."""
    rows, undecided = [], 0
    for path in paths:
        if not storage.exists(path):
            raise UsageError(f"{path}: no such decisions file; give the CSV review.html exported or a Label "
                             "Studio JSON export")
        got, open_ = decisions.read(path, storage.read_bytes(path))
        rows += got
        undecided += open_
    return rows, undecided


def check(table: source.Table, rows: list[dict]) -> tuple[list[dict], Counter]:
    """The decisions that can be recorded (label normalised, the batch's model fields filled in) and
    the refused ones counted by reason."""
    batches = {b: source.read_batch(table.uri, b) for b in {r["batch_id"] for r in rows if r["batch_id"]}}
    items = {b: {(it["uri"], it["sha256"]): it for it in doc["items"]} for b, doc in batches.items() if doc}
    uris = [r["uri"] for r in rows if r["uri"]]
    now = table.rows_of(uris, ["uri", "sha256"]) if uris else None
    current = dict(zip(now.column("uri").to_pylist(), now.column("sha256").to_pylist())) if now else {}
    good, refused = [], Counter()
    for r in rows:
        batch = batches.get(r["batch_id"])
        why = decisions.refusal(r, batch, items.get(r["batch_id"], {}), current.get(r["uri"]))
        if why:
            refused[why] += 1
            continue
        it = items[r["batch_id"]][(r["uri"], r["sha256"])]
        good.append({**r, "label": decisions.normalise_label(r["label"], schema.review_labels(batch["classes"])),
                     "kind": it["kind"], "model_sha256": batch["model_sha256"], "model_label": it["model_label"],
                     "predicted_class": it["predicted_class"], "refer_reason": it["refer_reason"]})
    return good, refused


def run(dst: str, paths: list[str]) -> dict:
    """The whole import; returns its counts (read, undecided, refused by reason, superseded, outcomes)."""
    table = source.open_table(dst)
    rows, undecided = read_files(paths)
    good, refused = check(table, rows)
    latest, superseded = decisions.latest_per_key(good)
    store = ReviewTable(table.uri)
    old = {(r["uri"], r["sha256"]): r for r in store.current([r["uri"] for r in latest]).to_pylist()}
    outcome = Counter()
    fresh = []
    for r in latest:
        o = decisions.outcome(r, old.get((r["uri"], r["sha256"])))
        outcome[o] += 1
        if o in (decisions.NEW, decisions.CHANGED):
            fresh.append(r)
    version = None
    if fresh:
        _, version = store.record(fresh)
    return {"files": len(paths), "read": len(rows), "undecided": undecided, "refused": dict(refused),
            "superseded": superseded, "outcome": dict(outcome), "version": version, "where": store.uri,
            "conflicts": store.conflicts}


def summary(c: dict) -> str:
    """One line for the terminal."""
    o = c["outcome"]
    recorded = o.get(decisions.NEW, 0) + o.get(decisions.CHANGED, 0)
    refused = sum(c["refused"].values())
    why = ", ".join(f"{n} {decisions.REFUSALS[k]}" for k, n in sorted(c["refused"].items()))
    parts = [f"{c['read']} decision(s) read from {c['files']} file(s)",
             f"{recorded} recorded ({o.get(decisions.NEW, 0)} new, {o.get(decisions.CHANGED, 0)} changed)",
             f"{o.get(decisions.UNCHANGED, 0)} already recorded"]
    if o.get(decisions.OLDER):
        parts.append(f"{o[decisions.OLDER]} older than the recorded decision (kept)")
    if c["superseded"]:
        parts.append(f"{c['superseded']} superseded by a later decision in the files")
    parts.append(f"{refused} refused{f' ({why})' if why else ''}")
    if c["undecided"]:
        parts.append(f"{c['undecided']} task(s) undecided")
    where = f" → {c['where']} (version {c['version']})" if c["version"] is not None else " (nothing new: no commit)"
    return "review import: " + "; ".join(parts) + where
