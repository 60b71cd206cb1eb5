"""review.html in a real headless Chromium, built from a real classification table: a reviewer labels
with the keyboard (digits label, arrows move), audit images hide the model's answer until decided, a
reload keeps every decision, "Export decisions" downloads the CSV, and `review import` records it.
Then audit.html of that table renders (sections, plots loaded).
"""
from __future__ import annotations

import csv
import time
from pathlib import Path

import pytest
from deltalake import DeltaTable

import helpers_review as H
from alle_dist.cli import main
from alle_dist.tables import SideDir

pytestmark = pytest.mark.ray


def _state(driver) -> dict:
    return driver.execute_script(
        "return {pos: S.pos, n: B.items.length, kind: B.items[S.pos].kind, uri: B.items[S.pos].uri,"
        " model: !document.getElementById('model').hidden, counter: document.getElementById('counter').textContent,"
        " decided: Object.keys(S.decisions).length}")


def _key(driver, key: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(key).perform()


def test_a_reviewer_labels_with_the_keyboard_reloads_exports_and_the_import_records_it(ray_local, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    table = H.classified_table(tmp_path, n=16)
    out = tmp_path / "batch"
    assert main(["review", "build", "--table", table["dst"], "--output", str(out), "--audit", "4", "--seed", "1"]) == 0
    doc = H.batch(out)
    browser.get((out / "review.html").as_uri())
    imgs = browser.execute_script("return Array.from(document.images).filter(i => i.offsetParent)"
                                  ".map(i => [i.complete, i.naturalWidth])")
    assert len(imgs) >= 2 and all(ok and w > 0 for ok, w in imgs)
    n = _state(browser)["n"]
    assert n == len(doc["items"]) and f"0 of {n} decided" in _state(browser)["counter"]

    _key(browser, "1")                                      # unsigned: refused, the name is asked for
    assert _state(browser)["decided"] == 0 and "name" in browser.find_element(By.ID, "warn").text
    name = browser.find_element(By.ID, "reviewer")
    name.send_keys("Dr Browser")
    name.send_keys(Keys.ENTER)                              # leaves the field: keys label again
    labels = doc["labels"]
    chosen = {}
    for _ in range(n):
        s = _state(browser)
        if s["kind"] == "audit":                            # blind until decided
            assert not s["model"] and browser.find_element(By.ID, "blind").is_displayed()
            assert not browser.find_elements(By.CSS_SELECTOR, "#cams img")
        else:
            assert s["model"] and "Referred" in browser.find_element(By.ID, "said").text
        item = next(it for it in doc["items"] if it["uri"] == s["uri"])
        digit = labels.index(H.truth_from_folder(item)) + 1
        _key(browser, str(digit))
        chosen[s["uri"]] = labels[digit - 1]
        assert _state(browser)["model"]                      # the answer shows once decided
        _key(browser, Keys.ARROW_RIGHT)
    assert _state(browser)["decided"] == n
    _key(browser, Keys.ARROW_LEFT)
    browser.find_element(By.ID, "note").send_keys("two cells in the field")

    browser.refresh()                                       # a reload (or a crash) loses nothing
    s = _state(browser)
    assert s["decided"] == n and f"{n} of {n} decided · 0 left" in s["counter"] and s["pos"] == n - 2
    assert browser.find_element(By.ID, "note").get_attribute("value") == "two cells in the field"
    assert browser.find_element(By.ID, "reviewer").get_attribute("value") == "Dr Browser"

    browser.find_element(By.ID, "export").click()
    target = browser.downloads / f"decisions-{doc['batch_id']}.csv"
    for _ in range(100):
        if target.exists() and target.stat().st_size:
            break
        time.sleep(0.1)
    rows = list(csv.DictReader(target.open()))
    assert [r["uri"] for r in rows] == [it["uri"] for it in doc["items"]] and set(rows[0]) == set(H.PAGE_COLUMNS)
    assert {r["uri"]: r["label"] for r in rows} == chosen and {r["reviewer"] for r in rows} == {"Dr Browser"}
    assert sum(r["note"] == "two cells in the field" for r in rows) == 1

    assert main(["review", "import", "--table", table["dst"], "--decisions", str(target)]) == 0
    got = DeltaTable(SideDir(table["dst"]).reviews).to_pyarrow_table().to_pylist()
    assert {r["uri"]: r["label"] for r in got} == chosen and {r["kind"] for r in got} == {"referred", "audit"}

    # the audit of these reviews, in the same browser
    assert main(["audit", "--table", table["dst"], "--output", str(tmp_path / "audit")]) == 0
    browser.get((tmp_path / "audit" / "audit.html").as_uri())
    for sid in ("summary", "accepted", "referred", "runs", "plots"):
        assert browser.find_element(By.CSS_SELECTOR, f"section#{sid} > h2").is_displayed()
    plots = browser.execute_script("return Array.from(document.querySelectorAll('#plots img'))"
                                   ".map(i => [i.complete, i.naturalWidth, i.clientWidth])")
    assert len(plots) >= 2 and all(ok and w > 0 and cw >= 500 for ok, w, cw in plots)
    assert "accepted images: error" in browser.find_element(By.ID, "summary").text and " of 4 = " in \
        browser.find_element(By.ID, "summary").text
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    Path("/tmp/review-audit-screenshot.png").write_bytes(browser.get_screenshot_as_png())
