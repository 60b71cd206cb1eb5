"""DST's side: the layout of DST/_alle_dist/ and what every Delta table of alle_dist shares.

DST is the classification table (classify.store). alle_dist keeps its own files beside the rows,
under DST/_alle_dist/, which Delta readers never see (they follow the log), pyarrow's dataset
discovery skips (`_` prefix) and VACUUM leaves alone:

  _alle_dist/runs/                   classify's run records (a Delta table; classify.store)
  _alle_dist/reviews/                review decisions keyed by (uri, sha256) (a Delta table;
                                     schema.REVIEWS_SCHEMA; review.reviews writes it, prepare reads it)
  _alle_dist/batches/<batch_id>.json review batches: what was picked, why, from which version (review)
  _alle_dist/<stage>_config.yaml     a stage's resolved config (classify_config.yaml)

`SideDir` is the one owner of those names, as rundir.RunDir is of the run directory's. The Delta
helpers below (storage options, open, MERGE with retry) serve every table here and DST itself;
deltalake is imported where it is used, so this module stays importable by `--help`.
"""
from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

from .errors import StorageError
from .io import storage

SIDE_DIR = "_alle_dist"              # alle_dist's own files inside DST; invisible to Delta readers
T = TypeVar("T")


@dataclass(frozen=True)
class SideDir:
    """DST/_alle_dist/ of one classification table DST (local path or s3:// URI)."""
    dst: str

    RUNS = "runs"
    REVIEWS = "reviews"
    BATCHES = "batches"

    def file(self, name: str) -> str:
        return storage.join(self.dst.rstrip("/"), SIDE_DIR, name)

    @property
    def runs(self) -> str:
        return self.file(self.RUNS)

    @property
    def reviews(self) -> str:
        return self.file(self.REVIEWS)

    def batch(self, batch_id: str) -> str:
        return self.file(f"{self.BATCHES}/{batch_id}.json")

    def config(self, stage: str) -> str:
        return self.file(f"{stage}_config.yaml")


def storage_options(uri: str) -> dict[str, str] | None:
    """deltalake storage options for `uri`: endpoint, region and safety flags, never a credential
    (classify.store's docstring says why conditional_put=etag and no unsafe rename)."""
    if not storage.is_s3(uri):
        return None
    opts = {"conditional_put": "etag", "AWS_S3_ALLOW_UNSAFE_RENAME": "false",
            "AWS_REGION": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        opts["AWS_ENDPOINT_URL"] = endpoint
        if endpoint.startswith("http://"):
            opts["AWS_ALLOW_HTTP"] = "true"   # object_store refuses plain HTTP otherwise
    return opts


def load(uri: str, options: dict | None):
    """The Delta table at `uri`, or None where there is none.

    Not DeltaTable.is_deltatable: in deltalake 1.6 it holds the GIL during its S3 requests, which
    stalls every other Python thread of the process (and deadlocks an in-process S3 server).
    """
    from deltalake import DeltaTable
    from deltalake.exceptions import DeltaError, TableNotFoundError

    try:
        return DeltaTable(uri, storage_options=options)
    except TableNotFoundError:
        return None
    except (DeltaError, OSError) as exc:
        raise StorageError(f"{uri}: can't be read as a Delta table ({storage.first_line(exc)}); check the "
                           "path, the network and the AWS credentials") from None


def commit_with_retry(table, commit: Callable[[], T], where: str, max_attempts: int,
                      on_conflict: Callable[[], None] = lambda: None) -> T:
    """`commit()` (one MERGE into `table`) against the table's latest version, redone when a concurrent
    writer's commit made deltalake refuse ours (CommitFailedError: a MERGE reads the whole table, so
    any concurrent data commit conflicts). The MERGE must be idempotent; retries back off
    exponentially with jitter. StorageError (one line) after `max_attempts` conflicts, or at once on
    an I/O failure (nothing of the batch committed)."""
    from deltalake.exceptions import CommitFailedError, DeltaError

    for attempt in range(max_attempts):
        try:
            table.update_incremental()
            return commit()
        except CommitFailedError:
            on_conflict()
            time.sleep(min(2.0, 0.05 * 2 ** attempt) * random.uniform(0.5, 1.5))
        except (OSError, DeltaError) as exc:   # disk full, network after the client's retries: nothing committed
            raise StorageError(f"{where}: commit failed ({storage.first_line(exc)}); nothing of this "
                               "batch was committed; fix the cause and rerun") from None
    raise StorageError(f"{where}: {max_attempts} commits in a row conflicted with concurrent "
                       "writers; rerun (what was committed is kept)")


def read_current(uri: str, columns: list[str] | None = None):
    """(the current version's rows as Arrow, the version), or None where there is no table."""
    table = load(uri, storage_options(uri))
    if table is None:
        return None
    return table.to_pyarrow_table(columns=columns), table.version()
