"""The driver's writer: result rows buffered and committed to DST every `commit_rows` rows or
`commit_seconds` seconds, whichever comes first (one store.upsert = one MERGE commit each).

A killed job loses at most the rows buffered since the last commit; the rerun plans against the
table and reads only what is not committed. Within one commit a uri appears once (the first row
wins: a block Ray computed twice gives the same row twice); across commits the MERGE on uri keeps
one current row per uri.
"""
from __future__ import annotations

import time

import pyarrow as pa
import pyarrow.compute as pc

from .store import ResultStore


class Committer:
    def __init__(self, store: ResultStore, run: dict, rows: int, seconds: float, clock=time.monotonic):
        self.store, self.run, self.rows, self.seconds, self.clock = store, run, rows, seconds, clock
        self._buf: list[pa.Table] = []
        self._buffered = 0
        self._since = clock()
        self.committed = 0      # rows inserted or updated by this run's commits
        self.duplicates = 0     # rows dropped because their uri was already in the same commit
        self.commits = 0
        self.refreshed = 0      # rows whose mtime_ns / etag a refresh commit stored (--trust-size)
        self._stamps: list[pa.Table] = []

    def add(self, table: pa.Table) -> None:
        if table.num_rows:
            self._buf.append(table)
            self._buffered += table.num_rows
        if self._buffered >= self.rows or (self._buffered and self.clock() - self._since >= self.seconds):
            self.flush()

    def add_stamps(self, table: pa.Table) -> None:
        """Inputs re-read and found unchanged (same sha256) under --trust-size: their listed mtime_ns /
        etag are stored at the next flush (store.refresh_stamps), so later runs skip them unread."""
        if table.num_rows:
            self._stamps.append(table.select(["uri", "sha256", "mtime_ns", "etag"]))
        if sum(t.num_rows for t in self._stamps) >= self.rows:
            self.flush()

    @property
    def buffered(self) -> int:
        return self._buffered

    def flush(self) -> None:
        """Commit what is buffered (one MERGE); nothing when the buffer is empty."""
        self._since = self.clock()
        if self._stamps:
            stamps = first_per_uri(pa.concat_tables(self._stamps))
            self.refreshed += self.store.refresh_stamps(stamps, {**self.run, "commit": self.commits})
            self._stamps = []
        if not self._buffered:
            return
        batch = first_per_uri(pa.concat_tables(self._buf))
        metrics = self.store.upsert(batch, {**self.run, "commit": self.commits})   # kept buffered if it fails
        self.duplicates += self._buffered - batch.num_rows
        self._buf, self._buffered = [], 0
        self.commits += 1
        self.committed += int(metrics.get("num_target_rows_inserted", 0)) + int(metrics.get("num_target_rows_updated", 0))


def first_per_uri(table: pa.Table) -> pa.Table:
    """The first row of each uri, in Arrow."""
    if pc.count_distinct(table.column("uri")).as_py() == table.num_rows:
        return table
    idx = table.append_column("__i", pa.array(range(table.num_rows), pa.int64()))
    first = idx.group_by("uri", use_threads=False).aggregate([("__i", "min")]).column("__i_min")
    return table.take(first.take(pc.array_sort_indices(first)))   # the first rows, in input order
