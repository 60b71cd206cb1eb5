"""The report page on a doc computed by alle_dist.evaluate: sections, escaping, each image once, notes."""
from __future__ import annotations

import copy
import re
from html.parser import HTMLParser

import numpy as np
import pytest

import helpers_report as H

page, gallery = H.evaluate_module("page"), H.evaluate_module("gallery")
EVIL = "<script>alert(1)</script>.jpg"


class _Page(HTMLParser):
    """ids, img sources and the text of each section of a rendered page."""

    def __init__(self, text: str):
        super().__init__()
        self.ids, self.imgs, self.scripts, self.section, self.text = [], [], 0, None, {}
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.append(a["id"])
        if tag == "section":
            self.section = a.get("id")
        self.imgs += [a["src"]] if tag == "img" else []
        self.scripts += tag == "script"

    def handle_data(self, data):
        self.text[self.section] = self.text.get(self.section, "") + data


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    paths = [f"{H.CLASSES[i % 4]}/img-{i:03d}.jpg" for i in range(120)]
    data, base = H.split(120, paths=paths, baseline=True)
    doc, out = H.doc_for(tmp_path_factory.mktemp("run"), data, base, H.spec(temperatures=H.fitted_temperatures(data)))
    return data, doc, out


def _galleries(data, out, cams: bool = False):
    ens = out[H.EV.ENSEMBLE]
    sel = gallery.select(data.y, ens.pred, {b: out[b].pred for b in H.BACKBONES})
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (len(data.y), 40, 40, 3), dtype=np.uint8)
    maps = {b: rng.random((len(data.y), 8, 8)).astype(np.float32) for b in H.BACKBONES} if cams else None
    if maps:
        maps["resnet50"][:] = 0.0                            # Grad-CAM's all-zero map: said so in the caption
    return {k: gallery.gallery_items(idx, images[idx], data.paths, data.y, data.classes,
                                  {b: out[b].probs for b in H.BACKBONES}, ens.probs, ens.reason,
                                  {b: m[idx] for b, m in maps.items()} if maps else None) for k, idx in sel.items()}


def test_sections_in_order_after_disclaimer_and_details(case):
    data, doc, out = case
    text = page.render(doc, {"date": "2025-06-01", "split_sizes": {"train": 400, "val": 40, "test": 120}},
                       {}, _galleries(data, out))
    p = _Page(text)
    order = [p.ids.index(s) for s, _ in page.SECTIONS]
    assert p.ids[:2] == ["disclaimer", "details"] and order == sorted(order)
    assert "Not a medical device" in text and p.scripts == 0 and "http" not in "".join(p.imgs)
    assert "train 400, val 40, test 120" in p.text[None]
    assert not re.search(r"\d\.\d{6,}", text), "long floats in the page"
    ens = doc["ensemble"]
    w = f"densenet201 {ens['weights'][0]:.2f}, resnet50 {ens['weights'][1]:.2f}"
    assert w in p.text["summary"] and f"densenet201 {ens['temperatures'][0]:.2f}" in p.text["summary"]


def test_referral_breakdown_counts_each_rule(case):
    _, doc, _ = case
    p = _Page(page.render(doc, {}, {}, {}))
    reasons = doc["models"]["ensemble"]["referral_reasons"]
    low = sum(k for r, k in reasons.items() if "low_confidence" in r.split("+"))
    assert f"{sum(reasons.values())} of {doc['n']} test images" in p.text["referrals"]
    share = f"{100 * low / doc['n']:.1f} %"
    assert f"below γ{low}{share}" in p.text["referrals"]        # the rule's row: text, count, share


def test_malicious_path_is_escaped(case, tmp_path):
    data, doc, out = case
    paths = list(data.paths)
    i = gallery.select(data.y, out["ensemble"].pred, {b: out[b].pred for b in H.BACKBONES})["referred"][0]
    paths[i] = EVIL
    evil = H.SplitProbs(paths, data.y, data.classes, data.probs, data.ood, data.mask_fraction)
    text = page.render(doc, {"data_source": f"s3://b/{EVIL}"}, {"<b>plot</b>": gallery.thumbnail_png(np.zeros((9, 9, 3)))},
                       _galleries(evil, out))
    p = _Page(text)
    assert p.scripts == 0 and "<script>" not in text and "<b>plot" not in text
    assert EVIL in p.text["referred"] and f"s3://b/{EVIL}" in p.text[None]


def test_each_corrected_image_once_with_every_model(case):
    data, doc, out = case
    gal = _galleries(data, out, cams=True)
    p = _Page(page.render(doc, {}, {}, gal))
    corrected = gal["corrected"]
    assert len(corrected) == doc["corrections"]["corrected"]["images"] > 0
    for it in corrected:
        assert p.text["corrected"].count(it["path"]) == 1
        assert [m[0] for m in it["members"]] == list(H.BACKBONES) and set(it["cams"]) == set(H.BACKBONES)
        assert it["flat_cams"] == ["resnet50"]
    assert p.text["corrected"].count("Grad-CAM resnet50 (flat: no region stood out)") == len(corrected)
    n_items = sum(len(v) for v in gal.values())
    assert len(p.imgs) == 3 * n_items                       # thumbnail + one Grad-CAM per member
    assert f"{len(corrected)} images were labelled wrong by at least one network" in p.text["corrected"]  # > 1 here


def test_select_counts_an_image_once_when_both_members_were_wrong():
    y = np.array([0, 1, 2, 3, 0])
    members = {"a": np.array([1, 1, 0, 3, 0]), "b": np.array([2, 0, 0, 3, 0])}
    ens = np.array([0, 1, -1, 2, 0])
    assert gallery.select(y, ens, members) == {"corrected": [0, 1], "referred": [2], "misclassified": [3]}


def test_notes_under_their_conditions(case):
    _, doc, _ = case
    assert page.notes(doc) == []                            # fitted temperatures, 0.7/0.3, a baseline
    d = copy.deepcopy(doc)
    d["ensemble"]["weights"] = [0.94, 0.06]
    d["models"]["resnet50"]["ece"] = d["models"]["resnet50"]["ece_before_temperature"] + 0.01
    del d["models"]["alexnet"]
    got = page.notes(d)
    assert len(got) == 3
    assert "effectively a single model: densenet201 carries weight 0.94" in got[0]
    assert got[1].startswith("Temperature scaling did not improve the calibration of resnet50")
    assert "No baseline models were trained" in got[2]
    notes = _Page(page.render(d, {}, {}, {})).text["summary"]
    assert all(n in notes for n in got)
    d["ensemble"]["temperatures"] = [1.0, 1.0]              # no scaling fitted: nothing to say about it
    assert not any("Temperature" in n for n in page.notes(d))


def test_guarantees_and_control_slots(case):
    _, doc, _ = case
    p = _Page(page.render(doc, {}, {}, {}))
    assert "Not computed" in p.text["guarantees"] and "Not run" in p.text["control"]
    d = {**doc, "guarantees": [{"alpha": 0.01, "delta": 0.05, "bound": 0.012345678, "observed": 0.004}],
         "control": {"masked-out accuracy": 0.31, "chance": 0.25}}
    p = _Page(page.render(d, {}, {}, {}))
    assert "α (error rate allowed)" in p.text["guarantees"] and "0.0123" in p.text["guarantees"]
    assert "masked-out accuracy 0.3100, chance 0.2500" in p.text["control"]


def _stress_doc():
    from alle_dist.stress import measure

    y = np.arange(40) % 4
    base = measure.outcome(y, np.where(np.arange(40) % 10 == 0, -1, np.where(np.arange(40) % 13 == 1, (y + 1) % 4, y)))
    rows = []
    for k, s in enumerate((0.75, 1.5, 3.0)):
        label = np.where(np.arange(40) % (5 - k) == 0, (y + 1) % 4, y)
        rows.append(measure.judge({"shift": "blur", "strength": s, "strength_label": f"{s:g} px σ",
                                   **measure.outcome(y, label)}, base))
    return {"n": 40, "goal_factor": 2.0, "shifts": {"blur": {"strengths": [0.75, 1.5, 3.0], "unit": "px σ"}},
            "unshifted": base, "rows": rows, "verdict": measure.verdict(rows, base), "broken": ["blur"]}


def test_the_stress_section_shows_each_shift_its_verdict_and_its_plot(case):
    _, doc, _ = case
    plots = H.evaluate_module("plots")
    assert "Not run" in _Page(page.render(doc, {}, {}, {})).text["stress"]
    d = {**copy.deepcopy(doc), "stress": _stress_doc()}
    named = plots.plot_set(d)
    assert named[0][0] == "stress_blur" and named[0][1] == plots.STRESS_TITLE + "blur"
    p = _Page(page.render(d, {}, {t: png for _, t, png in named}, {}))
    text = p.text["stress"]
    assert "Goal broken" in text and "blur" in text and "3 px σ" in text and "BROKEN" in text
    assert "stress-verdict" in p.ids and len(p.imgs) == len(named)          # its plot in its section, once
    assert plots.STRESS_TITLE not in p.text["plots"]
