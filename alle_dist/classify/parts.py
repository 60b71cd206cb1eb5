"""Bulk classification's output folder (Ray-free): what to classify, the exactly-once part writer,
DST/_manifest.json, the readers and the final reconciliation (docs/classify.md).

Exactly once rests on three rules:
- only the driver writes, and only files named by the run id and a sequence number
  (`part-<run_id>-<seq>.parquet`): a retried write overwrites its own file, never adds one;
- a part is listed in `DST/_manifest.json` (rewritten atomically) only after it is complete, and
  readers (`read_results`) trust only listed parts: a crash leaves at worst an unlisted orphan;
- a rerun skips every input whose (path, sha256) is already in a listed part.
"""
from __future__ import annotations

import datetime as dt
import uuid
from collections import Counter

import pyarrow as pa

from .. import schema
from ..errors import StorageError
from ..io import storage

MANIFEST_NAME = "_manifest.json"
MANIFEST_FORMAT = 1


def new_run_id() -> str:
    """Sortable and unique: UTC time + random suffix (also the part files' name stem)."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------- manifest and readers

def manifest_uri(dst: str) -> str:
    return storage.join(dst, MANIFEST_NAME)


def load_manifest(dst: str) -> dict:
    """DST's manifest, or an empty one when DST has none yet."""
    uri = manifest_uri(dst)
    try:
        if not storage.exists(uri):
            return {"format": MANIFEST_FORMAT, "files": [], "runs": []}
        doc = storage.read_json(uri)
    except OSError as exc:
        raise StorageError(f"{uri}: can't be read ({storage.first_line(exc)}); check the output path, "
                                   "the network and the AWS credentials") from None
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
        raise StorageError(f"{uri}: not an alle_dist classify manifest (format "
                                   f"{MANIFEST_FORMAT}); choose another --output")
    return doc


def write_manifest(dst: str, doc: dict) -> None:
    """Atomic (temporary file + rename locally; one PUT on S3): readers see the old or the new one."""
    storage.write_json(manifest_uri(dst), doc)


def read_results(dst: str, columns: list[str] | None = None) -> pa.Table:
    """Every published row under DST: the parts listed in the manifest, nothing else."""
    doc = load_manifest(dst)
    tables = [storage.read_parquet(storage.join(dst, f["name"])) for f in doc["files"]]
    if not tables:
        base = schema.classify_schema(doc.get("classes", []), doc.get("backbones", []))
        empty = base.empty_table()
        return empty.select(columns) if columns else empty
    if columns:
        tables = [t.select(columns) for t in tables]
    return pa.concat_tables(tables, promote_options="default")


def done_index(dst: str) -> dict[str, tuple[int, str]]:
    """path → (bytes, sha256) of every published row: what a rerun may skip."""
    t = read_results(dst, ["path", "bytes", "sha256"])
    return {p: (n, s) for p, n, s in zip(*(t.column(c).to_pylist() for c in ("path", "bytes", "sha256")))}


# ---------------------------------------------------------------- planning

def plan(listing: list[tuple[str, int]], done: dict[str, tuple[int, str]],
         verify_sha256: bool = True) -> tuple[pa.Table, list[str]]:
    """(inputs to read, inputs skipped without reading).

    An input whose path and size match a published row is already done. With `verify_sha256` it
    is still read and hashed (its row carries the published sha256; the read task drops it when
    the hashes agree, so a file replaced in place with a same-size one is classified again);
    without, it is skipped on path + size alone and never read.
    """
    paths, sizes, expect, skipped = [], [], [], []
    for path, size in listing:
        prev = done.get(path)
        match = prev is not None and prev[0] == size and prev[1] is not None
        if match and not verify_sha256:
            skipped.append(path)
            continue
        paths.append(path)
        sizes.append(size)
        expect.append(prev[1] if match else None)
    todo = pa.table({"path": pa.array(paths, pa.string()), "bytes": pa.array(sizes, pa.int64()),
                     "done_sha256": pa.array(expect, pa.string())})
    return todo, skipped


# ---------------------------------------------------------------- the exactly-once writer

class PartWriter:
    """Buffers result rows on the driver and publishes them as complete, listed part files.

    Memory is bounded by `rows_per_file` result rows (no images). Each part is written atomically
    under a name fixed by the run id and a sequence number, then listed in the manifest.
    """

    def __init__(self, dst: str, manifest: dict, run: dict, schema_: pa.Schema, rows_per_file: int):
        self.dst, self.manifest, self.run, self.schema = dst, manifest, run, schema_
        self.rows_per_file = rows_per_file
        self._buf: list[pa.Table] = []
        self._buffered = 0
        self._seq = 0

    def add(self, table: pa.Table) -> None:
        if table.num_rows:
            self._buf.append(table.cast(self.schema))
            self._buffered += table.num_rows
        if self._buffered >= self.rows_per_file:
            self.flush()

    def flush(self) -> None:
        if not self._buffered:
            return
        table = pa.concat_tables(self._buf)
        self._buf, self._buffered = [], 0
        name = f"part-{self.run['run_id']}-{self._seq:05d}.parquet"
        self._seq += 1
        storage.write_parquet(table, storage.join(self.dst, name))
        self.manifest["files"].append({"name": name, "rows": table.num_rows, "run_id": self.run["run_id"]})
        self.run["rows_written"] = self.run.get("rows_written", 0) + table.num_rows
        self.publish()

    def publish(self) -> None:
        """Rewrite the manifest: always after the parts it lists are complete."""
        write_manifest(self.dst, self.manifest)


# ---------------------------------------------------------------- reconciliation

def reconcile(listed: set[str], seen: set[str], published: pa.Table) -> list[str]:
    """Problems that break 'every listed input exactly once'; [] when the run is whole.

    `seen`: inputs this run accounted for (written or skipped as done); `published`: the path and
    sha256 columns of every published row.
    """
    problems = []
    pub_paths = published.column("path").to_pylist()
    keys = list(zip(pub_paths, published.column("sha256").to_pylist()))
    for what, diff in (("listed but never came back from the pipeline", listed - seen),
                       ("came back but were not listed", seen - listed),
                       ("listed but have no published row", listed - set(pub_paths))):
        if diff:
            problems.append(f"{len(diff)} input(s) {what}: {_some(diff)}")
    dups = {k for k, n in Counter(keys).items() if n > 1}
    if dups:
        problems.append(f"{len(dups)} input(s) published more than once: {_some(p for p, _ in dups)}")
    return problems


def _some(paths, k: int = 10) -> str:
    paths = sorted(paths)
    return ", ".join(paths[:k]) + (f" ... (+{len(paths) - k})" if len(paths) > k else "")
