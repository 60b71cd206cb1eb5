"""report.html as the real evaluate stage writes it, in headless Chromium: every image loads, every section
is there, the galleries show the test images with a Grad-CAM map per backbone, the disclaimer is on the
first screen, nothing overflows sideways. A full-page screenshot is kept (pytest tmp dir and
/tmp/report-screenshot.png).

The run: helpers_report.gallery_run (two tiny timm models, cached test probabilities that fill every
gallery, a manifest over real smear images); `evaluate.stage.evaluate_run` does the rest.
"""
from __future__ import annotations

import base64
from pathlib import Path

import pytest

import helpers_report as H

SCREENSHOT_COPY = Path("/tmp/report-screenshot.png")
N_TEST = 48


def _stress_doc(run: Path) -> dict:
    """A stress.json for the run's current ensemble (stress.measure on made-up labels: the page, not
    the stage, is under test here; tests/integration/stress checks the stage's numbers)."""
    import numpy as np
    from alle_dist.ensemble.lineage import ensemble_sha256
    from alle_dist.rundir import RunDir
    from alle_dist.stress import measure

    y = np.arange(60) % 4
    base = measure.outcome(y, np.where(np.arange(60) % 15 == 0, (y + 1) % 4, y))
    rows = [measure.judge({"shift": sh, "strength": s, "strength_label": f"{s:g}", **measure.outcome(
        y, np.where(np.arange(60) % (9 - k) == 0, (y + 1) % 4, y))}, base)
        for sh in ("stain", "blur") for k, s in enumerate((1.0, 2.0, 3.0))]
    return {"n": 60, "goal_factor": 2.0, "shifts": {s: {"strengths": [1.0, 2.0, 3.0], "unit": ""} for s in ("stain", "blur")},
            "unshifted": base, "rows": rows, "verdict": measure.verdict(rows, base), "broken": [],
            "ensemble_sha256": ensemble_sha256(RunDir(str(run)))}


def _evaluated_run(tmp: Path) -> Path:
    """helpers_report.gallery_run with a stress.json, through the real evaluate stage; returns RUN."""
    from alle_dist.config import EvaluateConfig
    from alle_dist.evaluate import stage
    from alle_dist.io import storage
    from alle_dist.rundir import RunDir

    run = H.gallery_run(tmp, N_TEST)
    storage.write_json(RunDir(str(run)).stress, _stress_doc(run))
    stage.evaluate_run(str(run), EvaluateConfig())
    return run


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
        assert per_item and set(per_item) == {1 + len(H.MEMBERS)}, (sid, per_item)
    top, bottom, height = browser.execute_script(
        "const r = document.getElementById('disclaimer').getBoundingClientRect(); "
        "return [r.top, r.bottom, window.innerHeight]")
    assert 0 <= top < bottom <= height
    assert "Not a medical device" in browser.find_element(By.ID, "disclaimer").text
    details = browser.find_element(By.ID, "details").text
    assert all(s in details for s in (str(tmp_path / "src"), f"test {N_TEST}", "test_resnet", "torch"))
    stress_rows = browser.find_elements(By.CSS_SELECTOR, "section#stress table tr")
    assert len(stress_rows) == 1 + 1 + 6 and "stain" in stress_rows[2].text                # head, unshifted, 2 × 3
    assert len(browser.find_elements(By.CSS_SELECTOR, "section#stress .plots img")) == 2   # a plot per shift
    plots = browser.execute_script("return Array.from(document.querySelectorAll('.plots img')).map(i => i.clientWidth)")
    assert min(plots) >= 500 and max(plots) >= 1100                # half and whole column: readable
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")

    png = _full_page_png(browser)
    (tmp_path / "report-screenshot.png").write_bytes(png)
    SCREENSHOT_COPY.write_bytes(png)
    with Image.open(tmp_path / "report-screenshot.png") as im:
        assert im.width >= 1300 and im.height > 3000
