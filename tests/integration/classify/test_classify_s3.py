"""classify against S3 (a moto server over HTTP) behind a flaky proxy: 503 SlowDown is retried and
the job completes into the Delta table on S3; a persistent 403 fails it loudly; no credentials in the
table (data, log, run records), logs or runtime_env."""
from __future__ import annotations

import json
from collections import Counter

import boto3
import pytest

from conftest import FAKE_KEY_ID, FAKE_SECRET, upload_dir
from helpers_run import make_run_dir, write_bad_inputs, write_images
from s3_proxy import FlakyS3, forbid_all, forbid_object_reads, slowdown_first
from alle_dist import cli
from alle_dist.classify.store import ResultStore

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def flaky(s3_server):
    """A private Ray whose workers reach S3 only through the proxy (workers inherit the endpoint
    from the environment at ray.init). The session's Ray comes back at the next `ray_local`."""
    import ray

    from alle_dist.runtime import init_ray

    ray.shutdown()
    mp = pytest.MonkeyPatch()
    with FlakyS3(s3_server) as proxy:
        mp.setenv("AWS_ENDPOINT_URL", proxy.url)
        try:
            init_ray(num_cpus=2)
            yield proxy
        finally:
            ray.shutdown()
            mp.undo()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return str(make_run_dir(tmp_path_factory.mktemp("classify_s3") / "run"))


def _classify(run_dir, bucket):
    return cli.main(["classify", "--run-dir", run_dir, "--input", f"s3://{bucket}/smears",
                     "--output", f"s3://{bucket}/out", "--batch-size", "8", "--cpu-workers", "1",
                     "--log-level", "DEBUG"])


def _current_uris(dst) -> Counter:
    """The current version's uris, read with polars.read_delta (a standard reader); empty if no table."""
    import polars as pl

    store = ResultStore(dst)
    if not store._is_delta():
        return Counter()
    return Counter(pl.read_delta(store.uri, storage_options=store.options, columns=["uri"])["uri"].to_list())


def _objects(bucket, prefix):
    s3 = boto3.client("s3")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]
    return {k: s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


def test_slowdown_is_retried_and_the_job_completes_without_leaking_credentials(
        flaky, s3_bucket, run_dir, tmp_path, capfd):
    import ray

    rels = write_images(tmp_path / "smears", 10) + list(write_bad_inputs(tmp_path / "smears"))
    upload_dir(tmp_path / "smears", s3_bucket, "smears")
    flaky.requests = flaky.failed = 0
    flaky.policy = slowdown_first(3)          # the first requests of the job (listing, reads) throttled
    assert _classify(run_dir, s3_bucket) == 0
    assert flaky.failed == 3
    got = _current_uris(f"s3://{s3_bucket}/out")
    assert set(got) == {f"s3://{s3_bucket}/smears/{r}" for r in rels} and max(got.values()) == 1

    out, err = capfd.readouterr()
    blobs = {"stdout": out.encode(), "stderr": err.encode(),
             "runtime_env": json.dumps(ray.get_runtime_context().runtime_env).encode(),
             **_objects(s3_bucket, "out/")}
    assert any(k.endswith(".parquet") for k in blobs) and any("_delta_log/" in k for k in blobs)
    assert any("_alle_dist/runs/" in k for k in blobs)      # run records, commit metadata: no secret either
    for name, blob in blobs.items():
        assert FAKE_SECRET.encode() not in blob and FAKE_KEY_ID.encode() not in blob, name


def test_forbidden_reads_fail_the_job_loudly_and_publish_nothing(flaky, s3_bucket, run_dir, tmp_path, capfd):
    write_images(tmp_path / "smears", 4)
    upload_dir(tmp_path / "smears", s3_bucket, "smears")
    flaky.policy = forbid_object_reads        # listing allowed, s3:GetObject denied
    assert _classify(run_dir, s3_bucket) == 2
    assert "access denied (HTTP 403)" in capfd.readouterr().err
    assert not _current_uris(f"s3://{s3_bucket}/out")     # nothing committed

    flaky.policy = forbid_all                 # wrong credentials: nothing at all is allowed
    assert _classify(run_dir, s3_bucket) == 2
    err = capfd.readouterr().err
    assert ("ACCESS_DENIED" in err or "AccessDenied" in err) and "credentials" in err and FAKE_SECRET not in err
    assert len([line for line in err.splitlines() if "error:" in line]) == 1
    flaky.policy = lambda *_: None
