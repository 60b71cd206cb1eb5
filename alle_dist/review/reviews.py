"""The reviews table DST/_alle_dist/reviews: one current row per (uri, sha256), a haematologist's
decision on those exact bytes (schema.REVIEWS_SCHEMA). Invisible to Delta readers of DST.

Writes are one MERGE on (uri, sha256) per import, retried on a concurrent writer's commit
(tables.commit_with_retry, as classify's upsert): a key not yet decided is inserted; a decided key is
updated only by a decision that differs and is at least as recent (`decided_at`): the latest
decision wins, the one it replaced stays in the table's history (`DeltaTable.load_as_version`). An
import that brings nothing new makes no commit, so re-importing a file leaves the version alone.
Two imports at once both land: each MERGE is applied to the version it read, or redone.
"""
from __future__ import annotations

import datetime as dt

import pyarrow as pa

from .. import schema
from ..tables import SideDir, commit_with_retry, load, storage_options

_KEY = "t.uri = s.uri AND t.sha256 = s.sha256"
_DIFFERENT = " OR ".join(f"(t.{c} IS DISTINCT FROM s.{c})" for c in ("label", "reviewer", "note", "decided_at", "batch_id"))
_NEWER = f"(s.decided_at >= t.decided_at) AND ({_DIFFERENT})"


class ReviewTable:
    def __init__(self, dst: str, max_attempts: int = 20):
        self.uri = SideDir(dst).reviews
        self.options = storage_options(self.uri)
        self.max_attempts = max_attempts
        self.conflicts = 0

    def current(self, uris=None) -> pa.Table:
        """The current rows (of these uris), empty when nothing is recorded yet."""
        from .source import filtered, of_uris

        table = load(self.uri, self.options)
        if table is None:
            return schema.REVIEWS_SCHEMA.empty_table()
        return filtered(table, schema.REVIEWS_SCHEMA.names, None if uris is None else of_uris(uris))

    def record(self, rows: list[dict]) -> tuple[dict, int]:
        """MERGE these decisions (one per key) in one commit; (deltalake's metrics, the version after)."""
        from deltalake import DeltaTable

        now = dt.datetime.now(dt.timezone.utc)
        batch = pa.Table.from_pylist([{**r, "imported_at": now} for r in rows], schema=schema.REVIEWS_SCHEMA)
        # mode="ignore": two first imports at once both end up on the one table version 0 created.
        table = DeltaTable.create(self.uri, schema.REVIEWS_SCHEMA, mode="ignore", storage_options=self.options,
                                  description="alle_dist reviews: one decision per (uri, sha256)")
        metrics = commit_with_retry(table, lambda: self._merge(table, batch), self.uri, self.max_attempts,
                                    self._conflicted)
        return metrics, table.version()

    def _merge(self, table, batch: pa.Table) -> dict:
        return (table.merge(batch, _KEY, source_alias="s", target_alias="t", streamed_exec=False)
                .when_matched_update_all(predicate=_NEWER)
                .when_not_matched_insert_all()
                .execute())

    def _conflicted(self) -> None:
        self.conflicts += 1
