"""The classification table a review batch is drawn from and an audit reads: opened read-only, checked
to be an alle_dist table, its model identity and the run directory classify recorded in it.

Also the reviews already recorded (the reviews table's current rows) and the batch manifests, so that
build, import and audit read DST's side through one module (its layout: tables.SideDir).
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from .. import schema
from ..classify.store import CONF_IDENTITY, CONF_MODEL, ResultStore
from ..errors import StorageError, UsageError
from ..io import storage
from ..tables import SideDir, load, read_current, storage_options


@dataclass
class Table:
    """DST, read-only: its Delta table, version, model and classes."""
    uri: str
    delta: object
    version: int
    model_sha256: str
    classes: tuple[str, ...]
    backbones: tuple[str, ...]

    @property
    def side(self) -> SideDir:
        return SideDir(self.uri)

    def rows(self, columns: list[str], keep=None) -> pa.Table:
        """The current version's rows (projected), those where keep(batch) is true (a boolean mask)."""
        return filtered(self.delta, columns, keep)

    def rows_of(self, uris, columns: list[str]) -> pa.Table:
        """The current rows of these uris."""
        return self.rows(columns, of_uris(uris))

    def recorded_run_dir(self) -> str | None:
        """The run directory classify last ran with (its resolved config beside the rows)."""
        import yaml

        where = self.side.config("classify")
        if not storage.exists(where):
            return None
        return (yaml.safe_load(storage.read_bytes(where)) or {}).get("run_dir")

    def runs(self) -> list[dict]:
        """classify's run records (each run's latest)."""
        return ResultStore(self.uri).runs()


def filtered(delta, columns: list[str], keep=None) -> pa.Table:
    """A Delta table's current rows, projected, filtered batch by batch in memory (a pyarrow dataset
    filter on a string column fails on deltalake 1.6's files: their statistics are string_view)."""
    names = list(dict.fromkeys(columns))
    batches = delta.to_pyarrow_dataset().to_batches(columns=names, batch_size=65_536)
    parts = [b if keep is None else b.filter(keep(b)) for b in batches]
    if not parts:   # no data files yet
        full = pa.schema(delta.schema().to_arrow())
        return pa.schema([full.field(n) for n in names]).empty_table()
    return pa.Table.from_batches(parts, schema=parts[0].schema)


def of_uris(uris):
    """keep(batch): the rows of these uris."""
    wanted = pa.array(sorted(set(uris)), pa.string())
    return lambda b: pc.is_in(b.column("uri"), value_set=wanted)


def open_table(dst: str) -> Table:
    """DST as a Table; StorageError (one line) when it is no alle_dist classification table."""
    uri = storage.absolute(dst).rstrip("/")
    delta = load(uri, storage_options(uri))
    conf = delta.metadata().configuration if delta is not None else {}
    if delta is None or CONF_MODEL not in conf:
        raise StorageError(f"{dst}: not a classification table of alle_dist; give the --output of "
                           "`alle-dist classify` (local or s3://)")
    ident = json.loads(conf.get(CONF_IDENTITY) or "{}")
    return Table(uri, delta, delta.version(), conf[CONF_MODEL], tuple(ident.get("classes") or ()),
                 tuple(ident.get("backbones") or ()))


def reviews(dst: str) -> pa.Table:
    """The reviews table's current rows (schema.REVIEWS_SCHEMA; empty when none are recorded)."""
    found = read_current(SideDir(dst).reviews)
    return schema.REVIEWS_SCHEMA.empty_table() if found is None else found[0]


def reviewed_keys(dst: str) -> pa.Array:
    """'uri\\nsha256' of every (uri, sha256) already decided."""
    return key(reviews(dst))


def key(table: pa.Table) -> pa.Array:
    """'uri\\nsha256' per row (a newline is in neither a URI nor a hex digest)."""
    if not table.num_rows:
        return pa.array([], pa.string())
    return pc.binary_join_element_wise(table.column("uri"), table.column("sha256"), "\n").combine_chunks()


def write_batch(table: Table, doc: dict) -> str:
    """Store a batch manifest under DST (import checks decisions against it); returns its URI."""
    where = table.side.batch(doc["batch_id"])
    storage.write_json(where, doc)
    return where


def read_batch(dst: str, batch_id: str) -> dict | None:
    """A batch manifest of DST, or None when DST has no batch of that id."""
    if not batch_id or "/" in batch_id or "\\" in batch_id or batch_id.startswith("."):
        return None
    where = SideDir(dst).batch(batch_id)
    return storage.read_json(where) if storage.exists(where) else None


def resolve_run_dir(table: Table, run_dir: str | None) -> str:
    """--run-dir, else the one classify recorded; UsageError when there is neither."""
    found = run_dir or table.recorded_run_dir()
    if not found:
        raise UsageError(f"{table.uri}: classify recorded no run directory; give --run-dir RUN (the models "
                         "DST was classified with)")
    return found
