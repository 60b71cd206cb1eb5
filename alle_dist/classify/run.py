"""One classify run, driven from the driver: checks before any work, then plan → read → commit.

`setup` does everything that can fail on the user's side before Ray starts (DST usable, models
intact, SRC listable and holding images, DST holding this model's results or nothing).
`execute` streams: each listing chunk is planned against DST's index (classify.planning); error rows
that need no reading are committed as they come; inputs to read gather into waves of at most
`wave_rows`, each one Ray Data pass (classify.pipeline); result rows are committed every
`commit_rows` rows or `commit_seconds` (classify.commit). Ray starts at the first wave: a run with
nothing to read never starts it. The run's records (running → complete / interrupted / failed)
go to DST's companion runs table (store.record_run), with this process's host and pid and a
heartbeat (the record renewed at commits, at most every HEARTBEAT_S); `dead_runs` tells which runs
recorded as running are probably dead (their process gone, or no heartbeat for STALE_S).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import os
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc

from .. import schema
from ..config import ClassifyConfig, JobConfig
from ..errors import StorageError
from ..io import storage
from ..models import inference
from . import drift, planning
from .listing import Listing, list_inputs
from .commit import Committer
from .input_list import read_input_list
from .pipeline import Decider, build_dataset
from .resolve import Models, read_spec, resolve_models
from .rows import RowMaker
from .store import ResultStore


def new_run_id() -> str:
    """Sortable and unique: UTC time + random suffix."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class Job:
    models: Models
    prep: inference.ReadSpec
    cfg: ClassifyConfig
    store: ResultStore
    listing: Listing
    chunks: Iterator[pa.Table]
    run: dict
    start_ray: Callable[[], None] = lambda: None
    counts: dict = field(default_factory=lambda: dict.fromkeys(
        ("inputs", "read", "classified", "errors", "referred", "skipped", "committed", "duplicates",
         "refreshed"), 0))
    beat_at: float = field(default_factory=time.monotonic)


def identity(models: Models) -> dict:
    """What ties DST to one model (store.open refuses another model's table)."""
    return {"model_sha256": models.model_sha256, "models": models.hashes,
            "backbones": list(models.spec.backbones), "classes": list(models.spec.classes)}


def setup(run_dir: str, src: str | None, dst: str, job_cfg: JobConfig, input_list: str | None = None,
            run_id: str | None = None, start_ray: Callable[[], None] = lambda: None) -> Job:
    """Every check that needs no cluster; raises a UsageError (one line) before any work."""
    store = ResultStore(dst)
    store.check_usable()
    models = resolve_models(run_dir)
    found = read_input_list(input_list) if input_list else list_inputs(src)
    chunks = iter(found)
    first = next(chunks, None)
    if first is None:
        skipped = found.skipped_summary()
        raise StorageError(f"no images found {'in' if input_list else 'under'} {found.source}"
                           f"{f' (skipped: {skipped})' if skipped else ''}; expected files ending in "
                           f"{' '.join(schema.IMAGE_SUFFIXES)}")
    store.open(schema.classify_schema(list(models.spec.classes), list(models.spec.backbones)), identity(models))
    run = {"run_id": run_id or new_run_id(), "status": "running", "dst": store.uri, "started_at": utc_now(),
           "src": storage.absolute(src) if src else None, "input_list": input_list, "run_dir": run_dir,
           "trust_size": not job_cfg.classify.verify_sha256, "host": socket.gethostname(), "pid": os.getpid(),
           "process": process_token(os.getpid())}
    spec = dataclasses.replace(read_spec(models, job_cfg), listed=not input_list)
    return Job(models, spec, job_cfg.classify, store, found, itertools.chain([first], chunks), run, start_ray)


def execute(job: Job) -> list[str]:
    """Run it; returns the problems ([] = every input accounted for). Records the run's outcome."""
    job.store.record_run(job.run)
    committer = Committer(job.store, {"run_id": job.run["run_id"]}, job.cfg.commit_rows, job.cfg.commit_seconds)
    try:
        problems = _loop(job, committer)
    except KeyboardInterrupt:
        _flush_quietly(committer)
        _finish(job, committer, "interrupted")
        raise
    except BaseException as exc:
        _refuse_if_deleted(job)
        _finish(job, committer, "failed", error=storage.first_line(exc))
        raise
    _refuse_if_deleted(job)
    _finish(job, committer, "failed" if problems else "complete", problems=problems)
    return problems


def _refuse_if_deleted(job: Job) -> None:
    """DST deleted while the job ran: whatever failed, say that (and leave no DST/_alle_dist behind)."""
    try:
        gone = job.store.deleted()
        if gone:
            job.store.drop_orphans()
    except Exception:  # noqa: BLE001 - the original error is the better message then
        return
    if gone:
        raise StorageError(f"{job.store.uri}: DST was deleted while the job ran; nothing more was committed; "
                           "run the same command again to start over") from None


def _loop(job: Job, committer: Committer) -> list[str]:
    trust = not job.cfg.verify_sha256
    index = planning.build_index(job.store.batches(list(planning.index_columns(trust))), trust)
    rows = RowMaker(job.models.spec, job.models.model_sha256, job.run["run_id"])
    problems, pending, waiting = [], [], 0
    with _progress() as bar:
        for chunk in job.chunks:
            plan = planning.plan_chunk(chunk, index, trust)
            pa.default_memory_pool().release_unused()   # the join's freed buffers: else +45 MB over 40 chunks
            _count(job.counts, inputs=chunk.num_rows, skipped=plan.skipped, errors=plan.direct.num_rows)
            if plan.direct.num_rows:
                committer.add(rows.complete({c: plan.direct.column(c) for c in plan.direct.column_names},
                                            plan.direct.num_rows))
            _beat(job, committer)
            pending.append(plan.todo)
            waiting += plan.todo.num_rows
            bar.update(chunk.num_rows - plan.todo.num_rows)
            if waiting >= job.cfg.wave_rows:
                problems += _wave(job, pa.concat_tables(pending), committer, bar)
                pending, waiting = [], 0
        del index
        if waiting:
            problems += _wave(job, pa.concat_tables(pending), committer, bar)
        committer.flush()
    return problems


def _wave(job: Job, todo: pa.Table, committer: Committer, bar) -> list[str]:
    """One Ray Data pass over `todo`; every result row goes to the committer as it arrives."""
    job.start_ray()
    decider = Decider(job.models, job.run["run_id"])
    ds = build_dataset(todo, job.models, job.prep, job.cfg, decider)
    returned = []
    # A UsageError raised in a task (an S3 403) reaches the CLI by type (errors.user_error_in).
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=2):
        returned.append(batch.column("uri").combine_chunks())
        fresh = batch.filter(pc.not_equal(batch.column("status"), inference.SKIP))
        errors = int(pc.sum(pc.equal(fresh.column("status"), schema.ERROR)).as_py() or 0)
        _count(job.counts, read=batch.num_rows, skipped=batch.num_rows - fresh.num_rows, errors=errors,
               classified=fresh.num_rows - errors, referred=int(pc.sum(fresh.column("refer")).as_py() or 0))
        committer.add(fresh)
        if not job.cfg.verify_sha256:   # --trust-size: re-read, same sha256, new mtime / ETag: store it
            committer.add_stamps(batch.filter(pc.equal(batch.column("status"), inference.SKIP)))
        bar.update(batch.num_rows)
        _beat(job, committer)
    return _reconcile(job, todo.column("uri"), returned)


def _reconcile(job: Job, wanted: pa.ChunkedArray, returned: list) -> list[str]:
    """Every input of the wave came back, and nothing else (checked in Arrow, one wave at a time)."""
    got = pa.chunked_array(returned, pa.string())
    distinct = pc.unique(got)
    job.counts["duplicates"] += len(got) - len(distinct)
    problems = []
    for what, a, b in (("never came back from the pipeline", wanted, distinct), ("came back but were not planned", distinct, wanted)):
        diff = a.filter(pc.invert(pc.is_in(a, value_set=b)))
        if len(diff):
            problems.append(f"{len(diff)} input(s) {what}: {_some(diff.to_pylist())}")
    return problems


def _some(uris: list, k: int = 10) -> str:
    uris = sorted(uris)
    return ", ".join(uris[:k]) + (f" ... (+{len(uris) - k})" if len(uris) > k else "")


def _count(counts: dict, **add) -> None:
    for k, v in add.items():
        counts[k] += v


def _flush_quietly(committer: Committer) -> None:
    """On Ctrl-C, commit the rows already computed (a second Ctrl-C or a failure gives up on them)."""
    try:
        committer.flush()
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - the run is being recorded as interrupted
        print(f"classify: the last {committer.buffered} rows were not committed ({storage.first_line(exc)})",
              file=sys.stderr)


def _beat(job: Job, committer: Committer) -> None:
    """Renew the run's `running` record (its counts so far; the record's time is the heartbeat) after
    a commit (at most every 5 s) and at least every HEARTBEAT_S while the driver makes progress."""
    since = time.monotonic() - job.beat_at
    if since < HEARTBEAT_S and (committer.commits == job.run.get("commits", 0) or since < 5.0):
        return
    job.beat_at = time.monotonic()
    job.run.update(job.counts, committed=committer.committed, commits=committer.commits, refreshed=committer.refreshed)
    job.store.record_run(job.run)


def _finish(job: Job, committer: Committer, status: str, **extra) -> None:
    """Record the outcome; a store that can't take the record (disk full) costs a warning, not the error."""
    job.counts.update(committed=committer.committed, duplicates=job.counts["duplicates"] + committer.duplicates,
                      refreshed=committer.refreshed)
    job.run.update(job.counts, status=status, finished_at=utc_now(), commits=committer.commits,
                   conflicts=job.store.conflicts, skipped_names=dict(job.listing.skipped),
                   list_duplicates=job.listing.duplicates, **extra)
    if status == "complete":    # the image rule's referral rate against its bound; one warning line when above
        job.run["drift"] = drift.check_run(job.store, job.models.spec, job.run["run_id"])
    try:
        job.store.record_run(job.run)
    except Exception as exc:  # noqa: BLE001
        print(f"classify: warning: the run record ({status}) could not be written: {storage.first_line(exc)}",
              file=sys.stderr)


def _progress():
    """Images/s on the driver (stderr); every 30 s when stderr is not a terminal; off with
    RAY_DATA_DISABLE_PROGRESS_BARS=1. The total is unknown while the listing streams."""
    from tqdm import tqdm

    off = os.environ.get("RAY_DATA_DISABLE_PROGRESS_BARS") == "1"
    return tqdm(unit="img", desc="classify", disable=off, file=sys.stderr,
                mininterval=1.0 if sys.stderr.isatty() else 30.0, smoothing=0.1)


# ---------------------------------------------------------------- runs that died without a word

HEARTBEAT_S = 60.0      # a running run's record is renewed at commits, at most this often
STALE_S = 900.0         # no heartbeat for this long: probably dead (Ray Data fails a 600 s stall itself)


def process_token(pid: int) -> str | None:
    """What tells this process from a later one that got its pid: boot id + start time (Linux)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        with open(f"/proc/{pid}/stat") as f:
            start = f.read().rpartition(")")[2].split()[19]   # field 22, after the command name
    except (OSError, IndexError):
        return None
    return f"{boot}:{start}"


def _alive(pid: int, token: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # another user's process: it exists
        pass
    return token is None or process_token(pid) in (None, token)


def why_dead(rec: dict, now: dt.datetime | None = None) -> str | None:
    """Why a run recorded as `running` is probably dead, or None (finished, or alive as far as we know)."""
    if rec.get("status") != "running":
        return None
    if rec.get("host") == socket.gethostname() and rec.get("pid"):
        return None if _alive(int(rec["pid"]), rec.get("process")) else f"its process (pid {rec['pid']}) is gone"
    age = ((now or dt.datetime.now(dt.timezone.utc)) - dt.datetime.fromisoformat(rec["at"])).total_seconds()
    return f"its last heartbeat was {age / 60:.0f} min ago" if age > STALE_S else None


def dead_runs(store: ResultStore) -> list[str]:
    """One line per run of DST recorded as running that is probably dead (killed, or its machine lost)."""
    out = []
    for rec in store.runs():
        why = why_dead(rec)
        if why:
            out.append(f"run {rec['run_id']} ({rec.get('who')}, started {rec.get('started_at')}) is recorded as "
                       f"running but {why}: probably dead; what it committed is kept")
    return out
