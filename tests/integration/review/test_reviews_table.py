"""The reviews table under concurrent writers: two processes (spawned: deltalake must not be forked)
recording decisions at once into a table that does not exist yet both land, nothing lost, locally
and on S3 (moto over HTTP, conditional put)."""
from __future__ import annotations

import datetime as dt
import multiprocessing as mp

import pytest

from alle_dist.review.reviews import ReviewTable


def _record(i: int, dst: str, go) -> None:
    go.wait(60)
    rows = [{"uri": f"file:///img/{i}_{j}.jpg", "sha256": f"{i}{j}", "label": "Pre", "reviewer": f"Dr {i}", "note": None,
             "decided_at": dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc), "batch_id": "b", "kind": "audit",
             "model_sha256": "m", "model_label": "Pre", "predicted_class": "Pre", "refer_reason": None, "source": "page"}
            for j in range(5)]
    ReviewTable(dst).record(rows)


def _race(dst: str) -> None:
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    procs = [ctx.Process(target=_record, args=(i, dst, go)) for i in range(2)]
    for p in procs:
        p.start()
    go.set()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    got = ReviewTable(dst).current()
    assert sorted(got.column("uri").to_pylist()) == sorted(f"file:///img/{i}_{j}.jpg" for i in range(2) for j in range(5))


def test_two_first_imports_at_once_lose_nothing_locally(tmp_path):
    _race(str(tmp_path / "dst"))


@pytest.mark.slow
def test_two_first_imports_at_once_lose_nothing_on_s3(s3_bucket):
    _race(f"s3://{s3_bucket}/dst")
