"""Decisions files (pure): the review page's CSV and Label Studio's JSON export, read into one row shape;
each row checked against its batch and the table; rows compared with what the reviews table holds.

A row: uri, sha256, label, reviewer, note, decided_at (aware datetime, or the raw text when it does
not parse), batch_id, source. A whole file that is neither format, or lacks a column, is one
UsageError line; a bad row is refused alone, with a reason (REFUSALS), and counted.
"""
from __future__ import annotations

import csv
import datetime as dt
import io
import json

from .. import schema
from ..errors import UsageError
from . import labelstudio

PAGE_COLUMNS = ("uri", "sha256", "label", "reviewer", "note", "decided_at", "batch_id")
REQUIRED = ("uri", "sha256", "label", "reviewer", "decided_at", "batch_id")
# Why a decision is refused (per row, counted): the key and its words in the summary line.
REFUSALS = {
    "incomplete": "a required field empty",
    "bad_time": "decided_at not an ISO 8601 time",
    "other_table": "batch not from this table",
    "unknown_uri": "uri not in the table",
    "not_in_batch": "image (uri + sha256) not in its batch",
    "bytes_changed": "bytes changed since the batch",
    "bad_label": "label outside the vocabulary",
}
# What recording a decision did (decide: newer_or_same).
NEW, CHANGED, UNCHANGED, OLDER = "new", "changed", "unchanged", "older"


def read(name: str, data: bytes) -> tuple[list[dict], int]:
    """(decision rows, tasks left undecided) of one file; UsageError when it is neither format."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UsageError(f"{name}: not a text file; give the decisions CSV of review.html or a Label Studio "
                         "JSON export") from None
    if text.lstrip()[:1] in ("[", "{"):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{name}: not valid JSON ({exc.msg} at line {exc.lineno}); export the project "
                             "again from Label Studio (Export → JSON)") from None
        return labelstudio.parse_export(name, doc)
    return read_csv(name, text), 0


def read_csv(name: str, text: str) -> list[dict]:
    """The page's CSV (PAGE_COLUMNS, any order, extra columns ignored)."""
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in PAGE_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise UsageError(f"{name}: not a decisions file: no column(s) {', '.join(missing)}; give the CSV that "
                         f"review.html exports ({','.join(PAGE_COLUMNS)}) or a Label Studio JSON export")
    return [row(r, schema.PAGE) for r in reader]


def to_csv(rows: list[dict]) -> bytes:
    """Decisions as the page's CSV (what review.html exports; the demo's simulated reviewer writes it too)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, PAGE_COLUMNS, quoting=csv.QUOTE_ALL, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode()


def row(raw: dict, source: str) -> dict:
    """One decision from a mapping of text fields."""
    clean = {k: (str(raw.get(k) or "").strip()) for k in PAGE_COLUMNS}
    clean["decided_at"] = parse_time(clean["decided_at"]) or clean["decided_at"]
    clean["note"] = clean["note"] or None
    return {**clean, "source": source}


def parse_time(text: str) -> dt.datetime | None:
    """An ISO 8601 time (a trailing Z, or no zone = UTC) as an aware UTC datetime; None if it isn't one."""
    try:
        t = dt.datetime.fromisoformat(str(text).strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return (t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)).astimezone(dt.timezone.utc)


def normalise_label(label: str, vocabulary: tuple[str, ...]) -> str | None:
    """The vocabulary token of a label given as the token or as its words ("other cell type")."""
    if label in vocabulary:
        return label
    by_words = {w: k for k, w in schema.REVIEW_EXTRA_LABELS.items()}
    return by_words.get(label) if by_words.get(label) in vocabulary else None


def refusal(r: dict, batch: dict | None, items: dict, current_sha256: str | None) -> str | None:
    """Why this decision can't be recorded (a REFUSALS key), or None. `batch`: its batch manifest
    (None: no such batch in this table); `items`: that batch's items by (uri, sha256);
    `current_sha256`: the table's current sha256 for the uri (None: no such row)."""
    if any(not r.get(k) for k in REQUIRED):
        return "incomplete"
    if not isinstance(r["decided_at"], dt.datetime):
        return "bad_time"
    if batch is None:
        return "other_table"
    if current_sha256 is None:
        return "unknown_uri"
    if (r["uri"], r["sha256"]) not in items:
        return "not_in_batch"
    if current_sha256 != r["sha256"]:
        return "bytes_changed"
    if normalise_label(r["label"], schema.review_labels(batch["classes"])) is None:
        return "bad_label"
    return None


def latest_per_key(rows: list[dict]) -> tuple[list[dict], int]:
    """One decision per (uri, sha256): the latest decided_at (a tie: the later row); and how many
    were superseded within the files."""
    best: dict[tuple, dict] = {}
    for r in rows:
        k = (r["uri"], r["sha256"])
        if k not in best or r["decided_at"] >= best[k]["decided_at"]:
            best[k] = r
    return list(best.values()), len(rows) - len(best)


_SAME = ("label", "reviewer", "note", "decided_at", "batch_id")


def outcome(new: dict, old: dict | None) -> str:
    """What recording `new` over the reviews table's row `old` for the same key does: NEW (no row
    yet), UNCHANGED (the same decision), CHANGED (a different decision at least as recent: it wins,
    the old row stays in the table's history) or OLDER (a more recent decision is recorded: kept)."""
    if old is None:
        return NEW
    if all(new.get(k) == old.get(k) for k in _SAME):
        return UNCHANGED
    return CHANGED if new["decided_at"] >= old["decided_at"] else OLDER
