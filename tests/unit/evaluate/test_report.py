"""Report files, correction images on a constructed case, and names that try to escape the report folder."""
from __future__ import annotations

import base64
import csv
import io
import os

import pytest
from PIL import Image
from alle_dist.config import EvaluateConfig
from alle_dist.evaluate import report as eval_report
from alle_dist.evaluate import stage as eval_stage

from helpers_probs import corrections_case


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    run, src, paths = corrections_case(tmp)
    doc = eval_stage.evaluate_run(str(run), EvaluateConfig())
    return tmp, run, doc


def test_report_files_exist_and_pngs_decode(evaluated):
    _, run, _ = evaluated
    rep = run / "report"
    pngs = sorted(p.name for p in rep.glob("*.png"))
    assert pngs == sorted(["coverage_risk.png", "reliability.png"] + [f"{k}_{m}.png" for k in ("confusion", "roc")
                                                                       for m in ("densenet201", "resnet50", "ensemble")])
    for p in rep.glob("*.png"):
        with Image.open(p) as im:
            im.load()
            assert im.width > 100 and im.height > 100
    page = (rep / "report.html").read_text()
    assert all(base64.b64encode((rep / p).read_bytes()).decode() in page for p in pngs)   # each plot inlined
    assert "src='http" not in page and 'src="http' not in page and "Table 3" in page
    assert (rep / "comparison.md").stat().st_size > 0


def test_corrections_list_exactly_the_right_files(evaluated):
    _, run, doc = evaluated
    corr = run / "report" / "corrections"
    assert sorted(os.listdir(corr / "fn_to_tp")) == ["Early__t1.jpg", "Pre__t2.jpg", "evil.jpg"]
    assert sorted(os.listdir(corr / "fp_to_tn")) == ["Early__t1.jpg", "Pre__t2.jpg", "evil.jpg"]
    assert sorted(os.listdir(corr / "broken")) == ["Pro__t3.jpg"]
    rows = list(csv.DictReader(io.StringIO((corr / "corrections.csv").read_text())))
    got = sorted((r["path"], r["kind"], r["backbone"], r["class"]) for r in rows)
    assert got == sorted([
        ("Early/t1.jpg", "fn_to_tp", "densenet201", "Early"), ("Early/t1.jpg", "fp_to_tn", "densenet201", "Pre"),
        ("Pre/t2.jpg", "fn_to_tp", "resnet50", "Pre"), ("Pre/t2.jpg", "fp_to_tn", "resnet50", "Pro"),
        ("../../evil.jpg", "fn_to_tp", "densenet201", "Early"), ("../../evil.jpg", "fp_to_tn", "densenet201", "Benign"),
        ("Pro/t3.jpg", "broken", "densenet201", "Pro")])
    assert {r["ensemble_pred"] for r in rows if r["path"] == "Pro/t3.jpg"} == {"Benign"}
    images = {k: len({r["path"] for r in rows if r["kind"] == k}) for k in eval_report.KINDS}
    assert images == {"fn_to_tp": 3, "fp_to_tn": 3, "broken": 1}
    c = doc["corrections"]          # fn_to_tp and fp_to_tn are the same 3 images: counted once, not 3 + 3
    assert (c["corrected"]["images"], c["broken"]["images"]) == (3, 1)
    assert c["corrected"]["by_backbone"] == {"densenet201": 2, "resnet50": 1}
    assert c["referred_but_a_backbone_was_right"] == 2 and c["copied"] == 7
    # copied bytes are the source image's bytes
    assert (corr / "fn_to_tp" / "Early__t1.jpg").read_bytes() == (run.parent / "a/b/src/Early/t1.jpg").read_bytes()


def test_path_traversal_names_stay_inside(evaluated):
    tmp, run, _ = evaluated
    rep = os.path.realpath(run / "report")
    evil = [os.path.realpath(p) for p in tmp.rglob("evil.jpg")]
    source = os.path.realpath(tmp / "a" / "evil.jpg")                      # the manifest's ../../ target
    assert all(p == source or p.startswith(rep + os.sep) for p in evil) and len(evil) == 3
    for name in ("../../x.jpg", "/etc/passwd", "..\\..\\x.jpg", "a/../../../b.jpg", "..", "", ".hidden/..//.x"):
        s = eval_report.safe_name(name)
        assert "/" not in s and "\\" not in s and not s.startswith(".") and s not in ("", "..")
        target = os.path.realpath(os.path.join(rep, "corrections", "fn_to_tp", s))
        assert target.startswith(rep + os.sep)
    assert eval_report.safe_name("x" * 400 + ".jpg").endswith(".jpg") and len(eval_report.safe_name("x" * 400 + ".jpg")) <= 150


def test_report_page_shows_the_images_and_the_run(evaluated):
    """The galleries hold the test images themselves (no model files here: as stored, no Grad-CAM)."""
    tmp, run, doc = evaluated
    text = (run / "report" / "report.html").read_text()
    corrected = text[text.index('<section id="corrected">'):text.index('<section id="referred">')]
    for path in ("Early/t1.jpg", "Pre/t2.jpg", "../../evil.jpg"):                    # each once
        assert corrected.count(f'alt="image {path}"') == 1
    assert 'alt="image Pre/t6.jpg"' in text[text.index('<section id="referred">'):]
    assert "Not a medical device" in text and str(tmp / "a" / "b" / "src") in text and "test 7" in text
