"""classify.commit: the driver's commit cadence (rows or seconds) and one row per uri per commit,
on a real local Delta table (no Ray)."""
from __future__ import annotations

import pyarrow as pa

from alle_dist import schema
from alle_dist.classify.commit import Committer, first_per_uri
from alle_dist.classify.store import ResultStore

CLASSES, BACKBONES = ["A", "B"], ["m"]


def rows(uris, tag="v1") -> pa.Table:
    s = schema.classify_schema(CLASSES, BACKBONES)
    n = len(uris)
    cols = {"uri": uris, "sha256": [f"{tag}-{u}" for u in uris], "status": ["ok"] * n, "model_sha256": ["f" * 64] * n}
    return pa.table({f.name: cols.get(f.name, pa.nulls(n, f.type)) for f in s}, schema=s)


def test_commits_every_n_rows_or_t_seconds_and_keeps_the_first_row_per_uri(tmp_path):
    store = ResultStore(str(tmp_path / "dst"))
    store.check_usable()
    store.open(schema.classify_schema(CLASSES, BACKBONES), {"model_sha256": "f" * 64})
    now = [0.0]
    c = Committer(store, {"run_id": "r"}, rows=5, seconds=10, clock=lambda: now[0])
    c.add(rows(["s3://b/1", "s3://b/2"]))
    c.add(rows(["s3://b/2", "s3://b/3"], tag="again"))      # a block computed twice: the first row wins
    assert c.commits == 0 and store.current().num_rows == 0
    now[0] = 11.0                                           # T seconds passed: the next result commits
    c.add(rows(["s3://b/4"]))
    assert c.commits == 1 and c.duplicates == 1 and c.committed == 4
    cur = dict(zip(*(store.current(["uri", "sha256"]).column(k).to_pylist() for k in ("uri", "sha256"))))
    assert cur["s3://b/2"] == "v1-s3://b/2" and len(cur) == 4
    c.add(rows([f"s3://b/{i}" for i in range(10, 15)]))    # N rows: commits at once
    assert c.commits == 2 and store.current().num_rows == 9
    c.flush()                                               # nothing buffered: no empty commit
    assert c.commits == 2


def test_first_per_uri_in_arrow():
    t = pa.table({"uri": ["a", "b", "a", "c", "b"], "v": [1, 2, 3, 4, 5]})
    assert first_per_uri(t).to_pydict() == {"uri": ["a", "b", "c"], "v": [1, 2, 4]}
