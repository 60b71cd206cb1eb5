"""Shared fixtures: one local Ray for the whole session, the real images, a moto S3 server over HTTP, and a
real browser (headless Chromium through selenium) for every HTML page."""
from __future__ import annotations

import os
import secrets
import shutil
import socket
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LEUKEMIA = ROOT.parent / "shared" / "data" / "leukemia"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Fake S3 settings go into the environment before any Ray starts, so Ray workers inherit them
# exactly as a user's workers inherit AWS_ENDPOINT_URL. The keys are fake (moto accepts any).
S3_PORT = _free_port()
# Made at run time, so the secret is in no source file (the job tests upload the working dir).
FAKE_KEY_ID = "AKIAFAKE" + secrets.token_hex(6).upper()
FAKE_SECRET = "fake/secret+" + secrets.token_hex(16)
os.environ.setdefault("AWS_ENDPOINT_URL", f"http://127.0.0.1:{S3_PORT}")
os.environ.setdefault("AWS_ACCESS_KEY_ID", FAKE_KEY_ID)
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("ALLE_DIST_NO_PROGRESS_TIMEOUT_S", "120")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.pop("RAY_ADDRESS", None)


def pytest_collection_modifyitems(config, items):
    try:
        import torch
        has_gpu = torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        has_gpu = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _log_levels_restored():
    """A test that runs a stage with --log-level DEBUG leaves the root logger at DEBUG; every later
    test would then log each boto3 request and Ray serialization (slow, and noise in failures)."""
    import logging

    loggers = [logging.getLogger()] + [x for x in logging.Logger.manager.loggerDict.values()
                                       if isinstance(x, logging.Logger)]
    levels = [(x, x.level) for x in loggers]
    from alle_dist import runtime
    ray_level = runtime._ray_level
    yield
    for x, level in levels:
        x.setLevel(level)
    runtime._ray_level = ray_level


@pytest.fixture(scope="session")
def leukemia_dir() -> Path:
    """The shared real images (Original/<class>/*.jpg); skips where ../shared is absent."""
    if not (LEUKEMIA / "Original").is_dir():
        pytest.skip(f"real images not found at {LEUKEMIA}")
    return LEUKEMIA


@pytest.fixture
def ray_local():
    """The session's local Ray (4 logical CPUs on 2 cores so Train workers leave room for reads).

    Function-scoped so a multi-node test may shut it down and start a `Cluster`; the next test
    that asks for this fixture starts it again.
    """
    import ray
    from alle_dist.runtime import init_ray

    if not ray.is_initialized():
        init_ray(num_cpus=4)
    yield ray


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on 127.0.0.1, reached over HTTP through boto3 and pyarrow like a real S3."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=S3_PORT, verbose=False)
    server.start()
    yield os.environ["AWS_ENDPOINT_URL"]
    server.stop()


@pytest.fixture
def s3_bucket(s3_server, request):
    """A fresh, empty bucket; yields its name."""
    import uuid

    import boto3

    name = f"t-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return name


def upload_dir(local: Path, bucket: str, prefix: str = "") -> None:
    """Upload a local folder to s3://bucket/prefix with boto3 (as a user would)."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    for p in sorted(Path(local).rglob("*")):
        if p.is_file():
            key = "/".join(x for x in (prefix.strip("/"), p.relative_to(local).as_posix()) if x)
            s3.upload_file(str(p), bucket, key)


# The e2e tests' real browser: headless Chromium through selenium, downloads allowed into
# `driver.downloads` (a folder of the test's tmp dir).
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture
def browser(tmp_path):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("chromium / chromedriver not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,900",
                f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        opts.add_argument(arg)
    opts.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                           "download.prompt_for_download": False})
    driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.downloads = downloads
    yield driver
    driver.quit()
