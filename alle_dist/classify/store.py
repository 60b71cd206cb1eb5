"""The bulk-classification output: a Delta Lake table keyed by each input's absolute URI.

DST (a local folder or s3://bucket/prefix) is a plain, partition-free Delta table (deltalake): the
current version holds exactly one row per `uri`, the classification of that input's current
bytes; Parquet data files, atomic commits, history = the table's versions. Any Delta reader
(deltalake → pandas, polars.read_delta, ray.data.read_delta, Spark, DuckDB) sees exactly the
current rows. alle_dist's own side files live under DST/_alle_dist/, which Delta readers never
see (they follow the log), pyarrow's dataset discovery skips (`_` prefix) and VACUUM leaves alone
(their layout: tables.SideDir):
  _alle_dist/runs/                  run records: a small companion Delta table (below)
  _alle_dist/classify_config.yaml   the resolved config (`side_path`)

Writes: `upsert` is one MERGE on `uri` per call, one atomic commit: a new uri is inserted; an
existing uri whose sha256, bytes or status differ is updated (the old row stays in the history,
`DeltaTable.load_as_version`); an identical row is left alone, and a batch that changes nothing
makes no commit (no new version). Every data commit carries the run record (run_id, who, when,
model, rows) in its commit metadata (`DeltaTable.history()`, key "alle_dist.run").

Run records (start / complete / interrupted / failed) go to the companion table, not to commit
metadata: a run that writes 0 rows has no data commit to carry them, and although deltalake 1.6
can commit an empty transaction (`create_write_transaction([])`), commit metadata is log
metadata: Delta's log cleanup (`delta.logRetentionDuration`, 30 days by default) deletes old
commit files, so run records there would vanish, and reading them means reading every commit
file. Rows of the companion table are kept like any data and are read in one scan (`runs`);
its commits are blind appends, which never conflict with each other.

Concurrency. Two jobs may write one DST at once. A MERGE reads the whole (unpartitioned) table,
so a concurrent commit that added data makes deltalake refuse ours (CommitFailedError, "a
concurrent transaction added new data"); `upsert` then reloads the table and runs the MERGE
again (it is idempotent) with jittered exponential backoff, up to `max_attempts` times, then
fails with one line (tables.commit_with_retry, shared with the reviews table). A lost race never
loses or duplicates rows: each commit is applied to the version it read, or not at all.
  Locally, deltalake commits by an atomic rename-if-absent of the next log file. On S3 the same
guarantee needs put-if-absent: delta-rs 1.x writes the log file with a conditional PUT
(`If-None-Match: *`, object_store's `conditional_put=etag`, which S3 has supported since
Aug 2024) and dropped the DynamoDB locking provider (AWS_S3_LOCKING_PROVIDER; delta-rs issue
#4464, discussion #4482). We set `conditional_put=etag` explicitly, so a change of library
default can't silently turn it off, and pin AWS_S3_ALLOW_UNSAFE_RENAME=false against the
environment (last writer wins: commits lost, delta-rs issue #2287). Measured with deltalake 1.6.6
against moto 5.2.5 over HTTP: the log file is written by one PUT with If-None-Match, moto answers
a taken version with 412 PreconditionFailed, and deltalake then re-reads the log, checks for
conflicts and commits the next version; tests/integration/classify/test_store.py has a commit
file written by someone else between deltalake's check and its PUT survive. With conditional put
disabled deltalake 1.6 refuses to commit at all ("PutMode::Create when conditional put is
disabled not yet implemented"): there is no unsafe S3 path left. An S3-compatible store that
ignores If-None-Match would still be unsafe (object_store can't tell).

Damage and loss. A torn newest commit file is refused when a table is opened, and reading goes
through pyarrow's own filesystem (tables). A DST deleted while a job runs is said as such
(`deleted`), and its orphan data files are removed so the same command can start over
(`drop_orphans`).

Credentials: the storage options hold only the endpoint, the region and the two flags above;
deltalake reads keys from the standard AWS environment / chain itself. Run records and commit
metadata are refused if they contain the value of an AWS key variable of this environment.
"""
from __future__ import annotations

import datetime as dt
import getpass
import json
import os
import socket
import uuid
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from ..constants import SECRET_ENV_VARS
from ..errors import ConfigError, StorageError
from ..io import storage
from .. import tables
from ..tables import SideDir, check_log, commit_with_retry, native_filesystem, storage_options, write_failure

KEY = "uri"
REQUIRED = ("uri", "sha256", "bytes", "status")
CONF_MODEL = "alle_dist.model_sha256"
CONF_IDENTITY = "alle_dist.identity"
COMMIT_KEY = "alle_dist.run"
_CHANGED = ("(t.sha256 IS DISTINCT FROM s.sha256) OR (t.bytes IS DISTINCT FROM s.bytes)"
            " OR (t.status IS DISTINCT FROM s.status)")
_STALE_STAMP = ("t.sha256 = s.sha256 AND ((t.mtime_ns IS DISTINCT FROM s.mtime_ns)"
                " OR (t.etag IS DISTINCT FROM s.etag))")
RUNS_SCHEMA = pa.schema([
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("status", pa.string(), nullable=False),
    pa.field("recorded_at", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("who", pa.string()),
    pa.field("model_sha256", pa.string()),
    pa.field("record", pa.string()),     # the whole run record as JSON (counts, src, ...)
])


def who() -> str:
    """user@host of this process (a run record's author)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):   # no passwd entry / no USER in a container
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


class ResultStore:
    """One DST: check it, create or open it for one model, plan from it, upsert into it."""

    def __init__(self, uri: str, max_attempts: int = 20):
        self.uri = storage.absolute(uri).rstrip("/")
        self.options = storage_options(self.uri)
        self.max_attempts = max_attempts
        self.model_sha256: str | None = None
        self.conflicts = 0               # commits refused for a concurrent writer's, then redone
        self._table = None

    # ------------------------------------------------------------ before any work

    def check_usable(self) -> None:
        """StorageError (one line) unless DST can become or already is a writable Delta table."""
        if storage.is_s3(self.uri):
            self._check_s3()
        else:
            self._check_local()

    def _check_local(self) -> None:
        if os.path.exists(self.uri) and not os.path.isdir(self.uri):
            raise StorageError(f"{self.uri}: is a file, not a folder; choose another --output")
        if os.path.isdir(self.uri) and os.listdir(self.uri) and not self._is_delta():
            raise StorageError(self._not_delta_message())
        try:
            os.makedirs(self.uri, exist_ok=True)
            # os.access alone trusts mode bits, which root ignores and ACLs or a read-only mount
            # override: a real probe file says what a commit will meet.
            for folder in (self.uri, os.path.join(self.uri, "_delta_log")):
                if os.path.isdir(folder):
                    probe = os.path.join(folder, f".alle_dist-probe-{uuid.uuid4().hex[:8]}")
                    with open(probe, "wb"):
                        pass
                    os.remove(probe)
        except OSError as exc:
            raise StorageError(f"{self.uri}: not writable ({exc.strerror or exc}); fix the permissions "
                               "or choose another --output") from None

    def _check_s3(self) -> None:
        storage.s3_filesystem()   # fails in seconds, naming the endpoint, when nothing listens there
        bucket, _, prefix = self.uri[len("s3://"):].partition("/")
        if self._s3_has_objects(bucket, prefix) and not self._is_delta():
            raise StorageError(self._not_delta_message())
        probe = SideDir(self.uri).file(f".probe-{uuid.uuid4().hex[:8]}")
        try:
            storage.write_bytes(probe, b"")
            storage.delete(probe)
        except OSError as exc:
            raise StorageError(f"{self.uri}: not writable ({storage.first_line(exc)}); check the AWS "
                               "credentials and the bucket policy (s3:PutObject)") from None

    def _s3_has_objects(self, bucket: str, prefix: str) -> bool:
        import boto3
        import botocore.exceptions

        from botocore.config import Config

        # Standard retries (10 attempts) ride out throttling (503 SlowDown), as the listing's client does.
        s3 = boto3.client("s3", endpoint_url=self.options.get("AWS_ENDPOINT_URL"), region_name=self.options["AWS_REGION"],
                          config=Config(retries={"max_attempts": 10, "mode": "standard"}))
        try:   # one request, however many objects a mistaken prefix holds
            res = s3.list_objects_v2(Bucket=bucket, Prefix=prefix.rstrip("/") + "/" if prefix else "", MaxKeys=1)
        except botocore.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code == "NoSuchBucket":
                raise StorageError(f"{self.uri}: bucket {bucket} does not exist; create it or check "
                                   "the bucket name and AWS_ENDPOINT_URL") from None
            raise StorageError(f"{self.uri}: can't be listed ({code or storage.first_line(exc)}); check the "
                               "AWS credentials and the bucket policy (s3:ListBucket)") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise StorageError(f"{self.uri}: can't be listed ({storage.first_line(exc)}); check "
                               "AWS_ENDPOINT_URL and the network") from None
        return res.get("KeyCount", 0) > 0

    def _is_delta(self) -> bool:
        return tables.load(self.uri, self.options) is not None

    def _not_delta_message(self) -> str:
        old = storage.exists(storage.join(self.uri, "_manifest.json"))
        what = "holds results in the old Parquet-parts format" if old else "is not empty and not a Delta table"
        return f"{self.uri}: {what}; choose a new or empty --output"

    # ------------------------------------------------------------ identity

    def open(self, schema: pa.Schema, identity: dict) -> None:
        """Create the table for this model (first run) or open it, refusing another model's table.

        `schema`: the result rows' schema (must have uri, sha256, bytes, status); `identity`: JSON-able
        dict with at least `model_sha256` (stored in the table's configuration at creation).
        """
        from deltalake import DeltaTable

        missing = [c for c in REQUIRED if c not in schema.names]
        if missing:
            raise ValueError(f"result schema lacks {missing}")
        _refuse_secrets(identity)
        self.model_sha256 = str(identity["model_sha256"])
        keyed = schema.set(schema.get_field_index(KEY), pa.field(KEY, pa.string(), nullable=False))
        conf = {CONF_MODEL: self.model_sha256, CONF_IDENTITY: json.dumps(identity, sort_keys=True, default=str)}
        # mode="ignore": when two jobs create DST at once, one PUT of version 0 wins and both then
        # check the winner's identity below.
        self._table = DeltaTable.create(
            self.uri, keyed, mode="ignore", configuration=conf, raise_if_key_not_exists=False,
            description="alle_dist bulk classification: one current row per input uri",
            storage_options=self.options)
        check_log(self.uri, self._table.version())
        self._check_identity(schema)

    def _check_identity(self, schema: pa.Schema) -> None:
        prev = self._table.metadata().configuration.get(CONF_MODEL)
        if prev != self.model_sha256:
            raise ConfigError(f"{self.uri}: holds results of another model ({str(prev)[:12]}…, this run dir "
                              f"is {self.model_sha256[:12]}…); classify into a new --output")
        have = set(self._arrow_schema().names)
        if have != set(schema.names):
            diff = sorted(have.symmetric_difference(schema.names))
            raise ConfigError(f"{self.uri}: its rows have other columns ({', '.join(diff[:5])}); written by "
                              "another alle_dist version? classify into a new --output")

    def _arrow_schema(self) -> pa.Schema:
        return pa.schema(self._table.schema().to_arrow())

    # ------------------------------------------------------------ reading

    def current(self, columns: list[str] | None = None) -> pa.Table:
        """The current version's rows (column-projected Arrow; `columns=None` = all)."""
        # One file and one batch ahead: at 1 M index rows this peaks ~100 MB lower than the default
        # readahead, at the same speed; the pool then returns the decompression buffers.
        table = self._dataset().to_table(columns=list(columns) if columns else None,
                                         fragment_readahead=1, batch_readahead=1)
        pa.default_memory_pool().release_unused()
        return table

    def batches(self, columns: list[str]) -> Iterator[pa.RecordBatch]:
        """The current version's rows batch by batch: a caller that condenses them (classify's
        planning index, classify.planning.build_index) never holds the whole projection at once."""
        yield from self._dataset().to_batches(columns=list(columns), batch_size=16_384, fragment_readahead=1,
                                              batch_readahead=1)

    def _dataset(self):
        self._require_open().update_incremental()
        return self._table.to_pyarrow_dataset(filesystem=native_filesystem(self.uri))

    def side_path(self, name: str) -> str:
        """Where alle_dist keeps a side file (e.g. classify_config.yaml) inside DST."""
        return SideDir(self.uri).file(name)

    # ------------------------------------------------------------ writing

    def upsert(self, batch: pa.Table, run: dict) -> dict:
        """MERGE `batch` (one row per uri) on uri in one commit; returns deltalake's merge metrics.

        The commit metadata carries `run` plus who / when / model / rows. Retried on a conflicting
        concurrent commit (see the module docstring); StorageError after `max_attempts`.
        """
        from deltalake import CommitProperties

        self._require_open()
        batch = self._conform(batch)
        meta = {COMMIT_KEY: _stamp(run, self.model_sha256, rows=batch.num_rows)}
        _refuse_secrets(meta)
        props = CommitProperties(custom_metadata=meta)
        return self._retrying(lambda: self._merge(batch, props))

    def _retrying(self, merge) -> dict:
        """Run `merge` on the newest version; again after a conflicting concurrent commit."""
        return commit_with_retry(self._table, merge, self.uri, self.max_attempts, self._conflicted)

    def _conflicted(self) -> None:
        self.conflicts += 1

    def _why(self, exc: BaseException) -> str:
        return write_failure(self.uri, exc)

    def refresh_stamps(self, stamps: pa.Table, run: dict) -> int:
        """Store the listed mtime_ns / ETag of inputs that were re-read and found unchanged (`stamps`:
        uri, sha256, mtime_ns, etag; --trust-size), so later runs skip them without reading. One MERGE
        that sets only those two columns, and only where the stored sha256 is the one just read: a
        new table version whose rows' classifications are unchanged. Returns the rows refreshed."""
        from deltalake import CommitProperties

        if not stamps.num_rows:
            return 0
        props = CommitProperties(custom_metadata={COMMIT_KEY: _stamp(run, self.model_sha256, refreshed=stamps.num_rows)})
        src = stamps.select(["uri", "sha256", "mtime_ns", "etag"])
        metrics = self._retrying(lambda: (
            self._table.merge(src, f"t.{KEY} = s.{KEY}", source_alias="s", target_alias="t",
                              streamed_exec=False, commit_properties=props)
            .when_matched_update({"mtime_ns": "s.mtime_ns", "etag": "s.etag"}, predicate=_STALE_STAMP)
            .execute()))
        return int(metrics.get("num_target_rows_updated", 0))

    def _merge(self, batch: pa.Table, props) -> dict:
        return (self._table.merge(batch, f"t.{KEY} = s.{KEY}", source_alias="s", target_alias="t",
                                  streamed_exec=False, commit_properties=props)
                .when_matched_update_all(predicate=_CHANGED)
                .when_not_matched_insert_all()
                .execute())

    def _conform(self, batch: pa.Table) -> pa.Table:
        """The batch in the table's schema; ValueError on a duplicated or null uri or another model."""
        keys = batch.column(KEY)
        if keys.null_count:
            raise ValueError(f"upsert: {keys.null_count} row(s) without a uri")
        if pc.count_distinct(keys).as_py() != batch.num_rows:
            raise ValueError("upsert: the batch has a uri more than once; deduplicate it first")
        if "model_sha256" in batch.column_names:
            other = pc.not_equal(batch.column("model_sha256"), self.model_sha256)
            if pc.any(other).as_py():
                raise ValueError(f"upsert: rows of another model than {self.model_sha256[:12]}…")
        return batch.select(self._arrow_schema().names).cast(self._arrow_schema())

    # ------------------------------------------------------------ run records

    def record_run(self, run: dict) -> None:
        """Append one run record (needs run_id and status: running / complete / interrupted / failed)."""
        from deltalake import write_deltalake

        if self.deleted():   # writing it would create DST/_alle_dist again: the rerun would be refused
            return
        rec = _stamp(run, self.model_sha256)
        _refuse_secrets(rec)
        row = {"run_id": str(rec["run_id"]), "status": str(rec["status"]), "who": rec["who"],
               "recorded_at": dt.datetime.fromisoformat(rec["at"]), "model_sha256": rec["model_sha256"],
               "record": json.dumps(rec, sort_keys=True, default=str)}
        from deltalake.exceptions import DeltaError

        try:
            write_deltalake(self._runs_uri(), pa.Table.from_pylist([row], schema=RUNS_SCHEMA), mode="append",
                            storage_options=self.options)
        except (OSError, DeltaError) as exc:   # disk full, network: one line, like a failed commit
            raise StorageError(f"{self.uri}: the run record could not be written ({self._why(exc)}); "
                               "fix the cause and rerun") from None

    def runs(self) -> list[dict]:
        """Each run's latest record (a dict, with `status` and `at`), in order of first record."""
        table = tables.load(self._runs_uri(), self.options)
        if table is None:
            return []
        t = (table.to_pyarrow_dataset(filesystem=native_filesystem(self._runs_uri()))
             .to_table(columns=["run_id", "recorded_at", "record"]).sort_by("recorded_at"))
        latest: dict[str, dict] = {}
        for rid, rec in zip(t.column("run_id").to_pylist(), t.column("record").to_pylist()):
            latest[rid] = json.loads(rec)   # dicts keep first-insertion order: a run's first record
        return list(latest.values())

    # ------------------------------------------------------------ a DST deleted while a job runs

    def deleted(self) -> bool:
        """True when the table this store opened has no log any more (DST was deleted meanwhile)."""
        return self._table is not None and not storage.exists(storage.join(self.uri, "_delta_log"))

    def drop_orphans(self) -> None:
        """Remove the data files a MERGE wrote into a deleted DST before its commit failed (no log
        refers to them, no reader sees them), and DST itself when that leaves it empty: the same
        command then starts over in an empty DST instead of being refused as "not a Delta table"."""
        if not self.deleted():
            return
        fs, base = storage.resolve(self.uri)
        for info in fs.get_file_info(pafs.FileSelector(base, allow_not_found=True)):
            if info.type == pafs.FileType.File and info.base_name.startswith("part-") and info.base_name.endswith(".parquet"):
                fs.delete_file(info.path)
        if not storage.is_s3(self.uri) and os.path.isdir(base) and not os.listdir(base):
            os.rmdir(base)

    def _runs_uri(self) -> str:
        return SideDir(self.uri).runs

    def _require_open(self):
        if self._table is None:
            raise RuntimeError("ResultStore.open(schema, identity) first")
        return self._table


def _stamp(run: dict, model_sha256: str | None, **extra) -> dict:
    """A run record with who, when and the model filled in (the caller's values win)."""
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")
    return {"who": who(), "at": now, "model_sha256": model_sha256, **run, **extra}


def _refuse_secrets(obj) -> None:
    """ValueError if a record would carry this environment's AWS key id, secret or session token."""
    text = json.dumps(obj, default=str)
    for var in SECRET_ENV_VARS:
        value = os.environ.get(var)
        if value and len(value) >= 8 and value in text:
            raise ValueError(f"refusing to store a record that contains the value of {var}")
