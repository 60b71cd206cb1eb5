"""report.html as the real evaluate stage writes it, in headless Chromium: every image loads, every section
is there, the galleries show the test images with a Grad-CAM map per backbone, the disclaimer is on the
first screen, nothing overflows sideways. A full-page screenshot is kept (pytest tmp dir and
/tmp/report-screenshot.png).

The run: two tiny timm models saved through the project's writers (helpers_run.make_run_dir), cached
test probabilities built so that every gallery has images (helpers_probs.write_probs), a manifest whose
source folder holds real smear images (helpers_run.write_images); `evaluate.stage.evaluate_run` does the rest.
"""
from __future__ import annotations

import base64
import shutil
from pathlib import Path

import numpy as np
import pytest

import helpers_report as H
from helpers_probs import onehot_mix, write_manifest, write_probs
from helpers_run import make_run_dir, write_images

pytestmark = pytest.mark.slow
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
SCREENSHOT_COPY = Path("/tmp/report-screenshot.png")
MEMBERS = ("test_resnet", "test_efficientnet")
N_TEST, N_TRAIN = 48, 16
# (first member's, second member's) (p of the true class, wrong class offset), cycled over the test rows;
# at weights 0.5 / 0.5 and γ 0.6: both right; one wrong, the ensemble right (0.65); referred (0.55 < γ);
# both wrong the same way (the ensemble wrong).
PATTERNS = [((0.95, 1), (0.95, 2)), ((0.3, 1), (1.0, 1)), ((0.55, 1), (0.55, 2)), ((0.1, 1), (0.2, 1)),
            ((1.0, 1), (0.35, 3))]


def _probs(y) -> list:
    """Per member, N x 4 probabilities following PATTERNS."""
    rows = [PATTERNS[i % len(PATTERNS)] for i in range(len(y))]
    return [np.stack([onehot_mix(c, (c + r[m][1]) % 4, r[m][0]) for c, r in zip(y, rows)]) for m in range(2)]


def _evaluated_run(tmp: Path) -> Path:
    """A tiny run through the real evaluate stage; returns RUN."""
    from alle_dist.config import EvaluateConfig
    from alle_dist.evaluate import stage

    src, run = tmp / "src", tmp / "run"
    rels = write_images(src, N_TEST + N_TRAIN, size=96)
    test = rels[:N_TEST]
    make_run_dir(run, backbones=MEMBERS, image_size=64, gamma=0.6, referral={"ood_score": {b: 6.0 for b in MEMBERS}})
    y = np.arange(N_TEST) % 4                                    # as write_images labels them
    ood = np.where(np.arange(N_TEST) % 11 == 10, 9.0, 1.0)       # a few unfamiliar to the networks
    for b, p in zip(MEMBERS, _probs(y)):
        write_probs(run, b, "test", test, y, p, ood=ood, meta=False)   # meta=False: keep the model's meta.json
    splits = ["test"] * N_TEST + ["train", "val"] * (N_TRAIN // 2)
    write_manifest(run, src, [{"path": p, "label": p.split("/")[0], "split": s} for p, s in zip(rels, splits)])
    stage.evaluate_run(str(run), EvaluateConfig())
    return run


@pytest.fixture
def browser(tmp_path):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("chromium / chromedriver not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,900",
                f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    yield driver
    driver.quit()


def _full_page_png(driver) -> bytes:
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}})
    return base64.b64decode(shot["data"])


def _gallery_pictures(driver, sid: str) -> list[int]:
    """Images per gallery item of section `sid`."""
    return driver.execute_script(
        f"return Array.from(document.querySelectorAll('section#{sid} figure.item'))"
        ".map(f => f.querySelectorAll('img').length)")


def test_evaluate_report_renders_in_chromium(browser, tmp_path):
    from PIL import Image
    from selenium.webdriver.common.by import By

    page = H.evaluate_module("page")
    run = _evaluated_run(tmp_path)
    browser.get((run / "report" / "report.html").as_uri())
    browser.execute_script("window.scrollTo(0, 0)")

    imgs = browser.execute_script(
        "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.clientWidth, i.alt])")
    assert len(imgs) > 20 and all(done and w > 0 for done, w, _, _ in imgs), [i for i in imgs if not i[0] or not i[1]]
    for sid, title in page.SECTIONS:
        heading = browser.find_element(By.CSS_SELECTOR, f"section#{sid} > h2")
        assert heading.is_displayed() and heading.text == title
    for sid in ("corrected", "referred", "misclassified"):        # a thumbnail + one Grad-CAM per backbone
        per_item = _gallery_pictures(browser, sid)
        assert per_item and set(per_item) == {1 + len(MEMBERS)}, (sid, per_item)
    top, bottom, height = browser.execute_script(
        "const r = document.getElementById('disclaimer').getBoundingClientRect(); "
        "return [r.top, r.bottom, window.innerHeight]")
    assert 0 <= top < bottom <= height
    assert "Not a medical device" in browser.find_element(By.ID, "disclaimer").text
    details = browser.find_element(By.ID, "details").text
    assert all(s in details for s in (str(tmp_path / "src"), f"test {N_TEST}", "test_resnet", "torch"))
    plots = browser.execute_script("return Array.from(document.querySelectorAll('.plots img')).map(i => i.clientWidth)")
    assert min(plots) >= 500 and max(plots) >= 1100                # half and whole column: readable
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")

    png = _full_page_png(browser)
    (tmp_path / "report-screenshot.png").write_bytes(png)
    SCREENSHOT_COPY.write_bytes(png)
    with Image.open(tmp_path / "report-screenshot.png") as im:
        assert im.width >= 1300 and im.height > 3000
