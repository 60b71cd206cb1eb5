"""report.html in headless Chromium: every image loads, every section is there, the disclaimer is on the
first screen, nothing overflows sideways; a full-page screenshot is kept (pytest tmp dir and
/tmp/report-screenshot.png).

The page: a doc computed by alle_dist.evaluate on synthetic probabilities, the real plots, and galleries
of synthetic smears with real Grad-CAM maps of two tiny timm models (test_resnet, test_efficientnet)
standing in for the two members.
"""
from __future__ import annotations

import base64
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

import helpers_report as H

pytestmark = pytest.mark.slow
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
SCREENSHOT_COPY = Path("/tmp/report-screenshot.png")
SIZE = 128
STAND_INS = {"densenet201": "test_resnet", "resnet50": "test_efficientnet"}


def _fitted_model(name: str, seed: int):
    """A tiny timm model whose classifier is fitted on synthetic smears: its Grad-CAM has real peaks."""
    import torch

    from alle_dist.models import registry as backbones
    from alle_dist.models.predictor import to_model_input
    from alle_dist.testing import synthetic

    torch.manual_seed(seed)
    model = backbones.create(name, 4, pretrained="none").eval()
    rng = np.random.default_rng(seed)
    y = np.arange(32) % 4
    x = np.stack([synthetic.draw_smear(synthetic.CLASSES[c], rng, SIZE) for c in y])
    mean, std = (torch.tensor(v) for v in backbones.normalisation(model))
    with torch.no_grad():
        feats = model.forward_head(model.forward_features(to_model_input(torch.from_numpy(x), SIZE, mean, std)),
                                   pre_logits=True)
    opt = torch.optim.Adam(model.get_classifier().parameters(), lr=1e-2)
    for _ in range(40):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model.get_classifier()(feats), torch.from_numpy(y)).backward()
        opt.step()
    return model


def _identity(model, name: str) -> dict:
    from safetensors.torch import save

    return {"architecture": name, "sha256": hashlib.sha256(save(model.state_dict())).hexdigest(),
            "image size": f"{SIZE} px", "weights": "from scratch (test stand-in)"}


def _report(tmp: Path) -> Path:
    from alle_dist.testing import synthetic
    from alle_dist.models import gradcam

    page, plots = H.evaluate_module("page"), H.evaluate_module("plots")
    data, _ = H.split(120, seed=0, baseline=False)
    doc, out = H.doc_for(tmp, data, {}, H.spec(temperatures=H.fitted_temperatures(data)))
    # The slots for other stages' results, filled so the page shows them as a user would see them.
    doc["guarantees"] = [{"alpha": 0.01, "delta": 0.05, "n_calibration": 400, "bound": 0.0093, "observed": 0.0061}]
    doc["control"] = "A model trained on the masked-out background alone: accuracy 0.2667 (chance 0.2500)."
    ens = out[H.EV.ENSEMBLE]
    sel = page.select(data.y, ens.pred, {b: out[b].pred for b in H.BACKBONES})
    sel["referred"] = sel["referred"][:12]
    models = {b: _fitted_model(n, k) for k, (b, n) in enumerate(STAND_INS.items())}
    galleries = {}
    for kind, idx in sel.items():
        images = np.stack([synthetic.draw_smear(synthetic.CLASSES[data.y[i]], np.random.default_rng(i), 160)
                           for i in idx]) if idx else np.zeros((0, 160, 160, 3), np.uint8)
        cams = {b: gradcam.heatmaps(m, images, image_size=SIZE) for b, m in models.items()} if idx else {}
        galleries[kind] = page.gallery_items(idx, images, data.paths, data.y, data.classes,
                                             {b: out[b].probs for b in H.BACKBONES}, ens.probs, ens.reason, cams)
    details = {"date": "2025-06-01 14:03 UTC", "run_dir": str(tmp / "run"),
               "data_source": "synthetic smears (alle_dist.synthetic), seed 0",
               "split_sizes": {"train": 1800, "validation": 200, "test": doc["n"]},
               "models": {b: _identity(models[b], n) for b, n in STAND_INS.items()}, "versions": page.versions()}
    path = tmp / "report.html"
    path.write_text(page.render(doc, details, plots.all_plots(doc), galleries), encoding="utf-8")
    return path


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


def test_report_renders_in_chromium(browser, tmp_path):
    from PIL import Image
    from selenium.webdriver.common.by import By

    page = H.evaluate_module("page")
    path = _report(tmp_path)
    browser.get(path.as_uri())
    browser.execute_script("window.scrollTo(0, 0)")

    imgs = browser.execute_script(
        "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.clientWidth, i.alt])")
    assert len(imgs) > 20 and all(done and w > 0 for done, w, _, _ in imgs), [i for i in imgs if not i[0] or not i[1]]
    for sid, title in page.SECTIONS:
        heading = browser.find_element(By.CSS_SELECTOR, f"section#{sid} > h2")
        assert heading.is_displayed() and heading.text == title
    top, bottom, height = browser.execute_script(
        "const r = document.getElementById('disclaimer').getBoundingClientRect(); "
        "return [r.top, r.bottom, window.innerHeight]")
    assert 0 <= top < bottom <= height
    assert "Not a medical device" in browser.find_element(By.ID, "disclaimer").text
    plots = browser.execute_script("return Array.from(document.querySelectorAll('.plots img')).map(i => i.clientWidth)")
    assert min(plots) >= 500 and max(plots) >= 1100                # half and whole column: readable
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")

    png = _full_page_png(browser)
    (tmp_path / "report-screenshot.png").write_bytes(png)
    SCREENSHOT_COPY.write_bytes(png)
    with Image.open(tmp_path / "report-screenshot.png") as im:
        assert im.width >= 1300 and im.height > 3000
