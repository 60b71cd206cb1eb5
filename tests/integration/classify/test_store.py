"""The classification store (alle_dist/classify/store.py): a Delta table keyed by uri.

Upsert semantics, two real concurrent writer processes (local and on the moto S3 server over
HTTP), the conditional-put guarantee on S3, standard readers, the usability checks, and no
credential anywhere in the table. deltalake panics in a forked child that inherited its runtime,
so every child process here is spawned.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import socket
import tempfile
from collections import Counter
from pathlib import Path

import boto3
import pyarrow as pa
import pytest

from alle_dist import schema as row_schema
from alle_dist.errors import ConfigError
from alle_dist.errors import StorageError
from conftest import FAKE_KEY_ID, FAKE_SECRET

from alle_dist.classify.store import ResultStore

MODEL = {"model_sha256": "a" * 64, "backbones": ["resnet"], "classes": ["Benign", "Pre"]}


def result_schema() -> pa.Schema:
    """The real bulk-classification schema (keyed by uri)."""
    return row_schema.classify_schema(MODEL["classes"], MODEL["backbones"])


def rows(uris, tag: str = "v1", model: str = MODEL["model_sha256"]) -> pa.Table:
    """Result rows for `uris`; `tag` stands for the bytes' content (same tag = same bytes)."""
    n = len(uris)
    cols = {"uri": list(uris), "sha256": [f"{tag}-{u}" for u in uris], "bytes": [100 + len(tag)] * n,
            "status": ["ok"] * n, "label": ["Pre"] * n, "confidence": [0.9] * n,
            "weights": [{"resnet": 1.0}] * n, "model_sha256": [model] * n, "run_id": [tag] * n}
    sch = result_schema()
    return pa.table({f.name: cols.get(f.name, pa.nulls(n, f.type)) for f in sch}, schema=sch)


def opened(uri) -> ResultStore:
    store = ResultStore(str(uri))
    store.check_usable()
    store.open(result_schema(), MODEL)
    return store


def run(run_id="r1", **kw) -> dict:
    return {"run_id": run_id, "status": "running", **kw}


def as_dict(table: pa.Table, value="sha256") -> dict:
    return dict(zip(table.column("uri").to_pylist(), table.column(value).to_pylist()))


def delta(uri, version=None):
    from deltalake import DeltaTable

    store = ResultStore(str(uri))
    return DeltaTable(store.uri, version=version, storage_options=store.options)


# ---------------------------------------------------------------- upsert semantics

def test_insert_then_identical_is_a_no_op_and_changed_bytes_replace_the_row(tmp_path):
    store = opened(tmp_path / "dst")
    store.upsert(rows(["file:///a", "file:///b"]), run())
    v1 = delta(store.uri).version()
    metrics = store.upsert(rows(["file:///a", "file:///b"]), run("r2"))
    assert metrics["num_target_rows_updated"] == 0 and delta(store.uri).version() == v1   # no new version
    store.upsert(rows(["file:///b"], tag="v2"), run("r3"))
    cur = store.current()
    assert cur.num_rows == 2 and as_dict(cur) == {"file:///a": "v1-file:///a", "file:///b": "v2-file:///b"}
    assert delta(store.uri).version() == v1 + 1
    old = delta(store.uri, version=v1).to_pyarrow_table()
    assert as_dict(old)["file:///b"] == "v1-file:///b"                                      # history keeps it


def test_a_then_b_then_a_keeps_one_row_per_uri(tmp_path):
    store = opened(tmp_path / "dst")
    for tag in ("A", "B", "A"):
        store.upsert(rows(["s3://bkt/x.jpg", "s3://bkt/y.jpg"], tag=tag), run(tag))
    cur = store.current(["uri", "sha256"])
    assert sorted(cur.column("uri").to_pylist()) == ["s3://bkt/x.jpg", "s3://bkt/y.jpg"]
    assert set(cur.column("sha256").to_pylist()) == {"A-s3://bkt/x.jpg", "A-s3://bkt/y.jpg"}


def test_a_batch_with_a_duplicated_uri_or_another_model_is_refused_before_committing(tmp_path):
    store = opened(tmp_path / "dst")
    store.upsert(rows(["file:///a"]), run())
    version = delta(store.uri).version()
    with pytest.raises(ValueError, match="more than once"):
        store.upsert(rows(["file:///b", "file:///b"]), run())
    with pytest.raises(ValueError, match="another model"):
        store.upsert(rows(["file:///c"], model="b" * 64), run())
    assert delta(store.uri).version() == version and store.current().num_rows == 1


def test_commits_carry_the_run_record_and_run_records_live_in_the_companion_table(tmp_path):
    store = opened(tmp_path / "dst")
    store.record_run(run("r1", src="s3://bkt/smears"))
    store.upsert(rows(["file:///a", "file:///b"]), run("r1"))
    store.record_run(run("r1", status="complete", rows_written=2))
    store.record_run(run("r2"))                              # a run that wrote 0 rows
    store.record_run(run("r2", status="interrupted"))
    last = delta(store.uri).history(1)[0]["alle_dist.run"]
    assert last["run_id"] == "r1" and last["rows"] == 2 and last["model_sha256"] == MODEL["model_sha256"]
    assert "@" in last["who"] and last["at"]
    got = {r["run_id"]: r for r in store.runs()}
    assert list(got) == ["r1", "r2"]
    assert got["r1"]["status"] == "complete" and got["r1"]["rows_written"] == 2
    assert got["r2"]["status"] == "interrupted"
    assert delta(store.uri).to_pyarrow_table().num_rows == 2       # the runs table is not in DST's rows


def test_a_record_holding_a_credential_is_refused(tmp_path):
    store = opened(tmp_path / "dst")
    with pytest.raises(ValueError, match="AWS_SECRET_ACCESS_KEY"):
        store.record_run(run("r1", note=os.environ["AWS_SECRET_ACCESS_KEY"]))


# ---------------------------------------------------------------- identity and usability

def test_another_models_table_is_refused(tmp_path):
    opened(tmp_path / "dst").upsert(rows(["file:///a"]), run())
    other = ResultStore(str(tmp_path / "dst"))
    other.check_usable()                                     # a Delta table is a usable output
    with pytest.raises(ConfigError, match=r"holds results of another model \(aaaaaaaaaaaa….*new --output"):
        other.open(result_schema(), {**MODEL, "model_sha256": "b" * 64})


def test_check_usable_refuses_a_file_and_a_foreign_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageError, match="is a file"):
        ResultStore(str(tmp_path / "file")).check_usable()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.csv").write_text("a,b\n")
    with pytest.raises(StorageError, match="not empty and not a Delta table"):
        ResultStore(str(tmp_path / "data")).check_usable()
    assert (tmp_path / "data" / "notes.csv").read_text() == "a,b\n"
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "_manifest.json").write_text("{}")
    with pytest.raises(StorageError, match="old Parquet-parts format"):
        ResultStore(str(tmp_path / "old")).check_usable()
    ResultStore(str(tmp_path / "new" / "dst")).check_usable()       # absent: fine, and created empty
    assert (tmp_path / "new" / "dst").is_dir()


def _check_as(uid: int, path: str, q) -> None:
    """Spawned child: drop to an unprivileged user (root ignores mode bits), then check."""
    os.setgid(uid)
    os.setuid(uid)
    try:
        ResultStore(path).check_usable()
        q.put("usable")
    except StorageError as exc:
        q.put(str(exc))


def test_check_usable_refuses_a_read_only_folder(tmp_path):
    if os.geteuid() != 0 and os.access("/", os.W_OK):
        pytest.skip("can't make a folder read-only for this user")
    root = tempfile.mkdtemp(prefix="ro-")   # /tmp/…: reachable by an unprivileged user, unlike tmp_path
    try:
        os.chmod(root, 0o755)
        ro = os.path.join(root, "dst")
        os.mkdir(ro, 0o555)
        os.chmod(ro, 0o555)
        if os.geteuid() == 0:
            ctx = mp.get_context("spawn")
            q = ctx.Queue()
            p = ctx.Process(target=_check_as, args=(65534, ro, q))
            p.start()
            p.join(120)
            msg = q.get(timeout=5)
        else:
            try:
                ResultStore(ro).check_usable()
                msg = "usable"
            except StorageError as exc:
                msg = str(exc)
        assert "not writable" in msg and "Permission denied" in msg, msg
    finally:
        os.chmod(os.path.join(root, "dst"), 0o755)
        os.rmdir(os.path.join(root, "dst"))
        os.rmdir(root)


def test_check_usable_refuses_a_dead_endpoint_and_a_missing_bucket(s3_server, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]          # closed on leaving: nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{dead}")
    with pytest.raises(StorageError, match=f"127.0.0.1:{dead} is unreachable"):
        ResultStore("s3://bkt/out").check_usable()
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    with pytest.raises(StorageError, match="bucket no-such-bucket-x does not exist"):
        ResultStore("s3://no-such-bucket-x/out").check_usable()


def test_check_usable_refuses_a_foreign_s3_prefix(s3_bucket):
    boto3.client("s3").put_object(Bucket=s3_bucket, Key="data/x.csv", Body=b"a,b\n")
    with pytest.raises(StorageError, match="not empty and not a Delta table"):
        ResultStore(f"s3://{s3_bucket}/data").check_usable()
    ResultStore(f"s3://{s3_bucket}/out").check_usable()


# ---------------------------------------------------------------- two real concurrent writers

def _writer(uri: str, name: str, uris: list, commits: int, barrier, q) -> None:
    """Spawned child: open the store (creating it races too), wait for the other, commit in parts."""
    try:
        store = ResultStore(uri)
        barrier.wait(120)
        store.open(result_schema(), MODEL)
        barrier.wait(120)                  # both commit loops start together
        step = -(-len(uris) // commits)
        for i in range(0, len(uris), step):
            store.upsert(rows(uris[i:i + step], tag=name), run(name, part=i // step))
        store.record_run(run(name, status="complete", conflicts=store.conflicts))
        q.put((name, "ok"))
        print(f"writer {name}: {store.conflicts} conflicting commit(s) redone", flush=True)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        q.put((name, f"{type(exc).__name__}: {exc}"))


def _two_writers(uri: str) -> dict:
    """Writers A (uris 0-59, ascending) and B (30-89, descending) with different bytes on 30-59."""
    ctx = mp.get_context("spawn")
    barrier, q = ctx.Barrier(2), ctx.Queue()
    uris = [f"s3://archive/img_{i:03d}.jpg" for i in range(90)]
    plan = {"A": uris[:60], "B": uris[30:][::-1]}
    procs = [ctx.Process(target=_writer, args=(uri, n, u, 8, barrier, q)) for n, u in plan.items()]
    for p in procs:
        p.start()
    results = dict(q.get(timeout=300) for _ in procs)
    for p in procs:
        p.join(60)
    assert results == {"A": "ok", "B": "ok"}, results
    return plan


def _assert_one_row_per_uri(uri: str, plan: dict) -> None:
    cur = ResultStore(uri)
    cur.open(result_schema(), MODEL)
    got = cur.current(["uri", "sha256"])
    counts = Counter(got.column("uri").to_pylist())
    assert set(counts) == set(plan["A"]) | set(plan["B"]) and max(counts.values()) == 1
    for u, sha in as_dict(got).items():
        assert sha in {f"{n}-{u}" for n, us in plan.items() if u in us}
    assert {r["run_id"]: r["status"] for r in cur.runs()} == {"A": "complete", "B": "complete"}


def test_two_concurrent_processes_lose_and_duplicate_nothing_locally(tmp_path):
    uri = str(tmp_path / "dst")
    _assert_one_row_per_uri(uri, _two_writers(uri))


def test_two_concurrent_processes_lose_and_duplicate_nothing_on_s3(s3_bucket):
    uri = f"s3://{s3_bucket}/dst"
    _assert_one_row_per_uri(uri, _two_writers(uri))


def _interloper(s3_server: str, bucket: str, key: str):
    """Proxy policy: just before our PUT of log file `key`, another writer commits that version."""
    done = []

    def policy(method, path, n):
        if method == "PUT" and path.split("?")[0].endswith(key) and not done:
            body = json.dumps({"commitInfo": {"timestamp": 1, "operation": "WRITE", "interloper": True,
                                              "operationParameters": {"mode": "Append"}}}) + "\n"
            boto3.client("s3", endpoint_url=s3_server).put_object(Bucket=bucket, Key=key.lstrip("/"),
                                                                  Body=body.encode())
            done.append(path)
        return None
    return policy, done


def test_on_s3_a_commit_that_wins_the_race_for_a_version_survives(s3_server, s3_bucket, monkeypatch):
    from s3_proxy import FlakyS3

    store = opened(f"s3://{s3_bucket}/dst")
    store.upsert(rows(["s3://a/1.jpg"]), run("r1"))
    key = "dst/_delta_log/00000000000000000002.json"
    policy, done = _interloper(s3_server, s3_bucket, key)
    with FlakyS3(s3_server, policy) as proxy, monkeypatch.context() as env:
        env.setenv("AWS_ENDPOINT_URL", proxy.url)
        racing = opened(f"s3://{s3_bucket}/dst")
        racing.upsert(rows(["s3://a/2.jpg"]), run("r2"))
    assert done, "the proxy never saw the commit of version 2"
    # The log files themselves (DeltaTable.history holds the GIL during S3 requests in deltalake 1.6,
    # which would stall the in-process moto server).
    s3 = boto3.client("s3")
    log = {v: json.loads(s3.get_object(Bucket=s3_bucket, Key=f"dst/_delta_log/{v:020d}.json")["Body"]
                         .read().splitlines()[0])["commitInfo"] for v in (2, 3)}
    assert log[2].get("interloper") is True                   # not overwritten (If-None-Match honoured)
    assert log[3]["alle_dist.run"]["run_id"] == "r2"          # ours moved to the next version
    assert sorted(store.current(["uri"]).column("uri").to_pylist()) == ["s3://a/1.jpg", "s3://a/2.jpg"]


def test_on_s3_a_merge_that_loses_to_a_concurrent_merge_is_redone(s3_server, s3_bucket, monkeypatch):
    """Deterministic: while our merge uploads its data file, another writer commits new rows."""
    from s3_proxy import FlakyS3

    other = opened(f"s3://{s3_bucket}/dst")
    other.upsert(rows(["s3://a/1.jpg"]), run("other"))
    fired = []

    def policy(method, path, n):
        if method == "PUT" and "/dst/part-" in path and not fired:
            fired.append(path)
            other.upsert(rows(["s3://a/1.jpg", "s3://a/2.jpg"], tag="other"), run("other"))
        return None

    with FlakyS3(s3_server, policy) as proxy, monkeypatch.context() as env:
        env.setenv("AWS_ENDPOINT_URL", proxy.url)
        ours = opened(f"s3://{s3_bucket}/dst")
        ours.upsert(rows(["s3://a/2.jpg", "s3://a/3.jpg"], tag="ours"), run("ours"))
    assert fired and ours.conflicts == 1
    assert as_dict(other.current(["uri", "sha256"])) == {
        "s3://a/1.jpg": "other-s3://a/1.jpg", "s3://a/2.jpg": "ours-s3://a/2.jpg", "s3://a/3.jpg": "ours-s3://a/3.jpg"}


# ---------------------------------------------------------------- standard readers, credentials

def _written(uri) -> tuple[ResultStore, set]:
    store = opened(uri)
    store.upsert(rows(["s3://a/1.jpg", "s3://a/2.jpg", "s3://a/3.jpg"]), run("r1"))
    store.upsert(rows(["s3://a/2.jpg", "s3://a/4.jpg"], tag="v2"), run("r2"))   # one replaced, one new
    store.record_run(run("r2", status="complete"))
    return store, {("s3://a/1.jpg", "v1-s3://a/1.jpg"), ("s3://a/2.jpg", "v2-s3://a/2.jpg"),
                   ("s3://a/3.jpg", "v1-s3://a/3.jpg"), ("s3://a/4.jpg", "v2-s3://a/4.jpg")}


def _pairs(df) -> set:
    return set(zip(df["uri"], df["sha256"]))


@pytest.mark.parametrize("where", ["local", "s3"])
def test_deltalake_pandas_and_polars_see_exactly_the_current_rows(where, tmp_path, request):
    import polars as pl

    uri = str(tmp_path / "dst") if where == "local" else f"s3://{request.getfixturevalue('s3_bucket')}/dst"
    store, want = _written(uri)
    pdf = delta(uri).to_pandas(columns=["uri", "sha256"])
    assert len(pdf) == 4 and _pairs(pdf) == want
    plf = pl.read_delta(store.uri, storage_options=store.options, columns=["uri", "sha256"])
    assert plf.height == 4 and _pairs(plf.to_dict(as_series=False)) == want


@pytest.mark.ray
@pytest.mark.parametrize("where", ["local", "s3"])
def test_ray_data_read_delta_sees_exactly_the_current_rows(where, ray_local, tmp_path, request):
    import ray.data

    uri = str(tmp_path / "dst") if where == "local" else f"s3://{request.getfixturevalue('s3_bucket')}/dst"
    store, want = _written(uri)
    got = ray.data.read_delta(store.uri, storage_options=store.options, columns=["uri", "sha256"]).to_pandas()
    assert len(got) == 4 and _pairs(got) == want


def test_no_credential_in_any_file_of_the_table(tmp_path, s3_bucket):
    store, _ = _written(str(tmp_path / "dst"))
    files = [p for p in Path(store.uri).rglob("*") if p.is_file()]
    assert any("_delta_log" in p.parts for p in files) and any("runs" in p.parts for p in files)
    blobs = {str(p): p.read_bytes() for p in files}
    s3_store, _ = _written(f"s3://{s3_bucket}/dst")
    s3 = boto3.client("s3")
    for o in s3.list_objects_v2(Bucket=s3_bucket, Prefix="dst/")["Contents"]:
        blobs[o["Key"]] = s3.get_object(Bucket=s3_bucket, Key=o["Key"])["Body"].read()
    assert any("_delta_log" in k for k in blobs if k.startswith("dst/"))
    for name, blob in blobs.items():
        assert FAKE_KEY_ID.encode() not in blob and FAKE_SECRET.encode() not in blob, name
