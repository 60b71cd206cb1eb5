"""The model card from an evaluated run (pure: evaluate.evaluate_run on cached probabilities): every
section in order, its numbers taken from metrics.json, exact intervals that agree with scipy's."""
from __future__ import annotations

import re

import pytest
import yaml

from alle_dist import config
from alle_dist.evaluate import card
from alle_dist.evaluate import stage as eval_stage
from alle_dist.referral import bounds
from helpers_probs import corrections_case


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    run, _, _ = corrections_case(tmp_path_factory.mktemp("card"))
    doc = eval_stage.evaluate_run(str(run), config.EvaluateConfig())
    return run, doc


def test_evaluate_writes_a_card_with_every_section_and_the_run_numbers(evaluated):
    run, doc = evaluated
    text = (run / "report" / "model_card.md").read_text()
    _, front, body = text.split("---\n", 2)
    meta = yaml.safe_load(front)
    metrics = {m["name"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert metrics["Macro F1"] == pytest.approx(doc["overall"]["f1"], abs=1e-6)
    assert metrics["Coverage (not referred)"] == pytest.approx(doc["coverage"], abs=1e-6)
    assert re.findall(r"^## (.+)$", body, re.M) == list(card.SECTIONS)
    correct = sum(v["tp"] for v in doc["per_class"].values())
    lo, hi = bounds.binomial_interval(correct, doc["n"], 0.95)
    assert f"(95 % CI {100 * lo:.2f}–{100 * hi:.2f} %, {correct}/{doc['n']})" in body
    assert "Every group is a split unit: 0 groups, 0 straddling a split" in body
    for missing in ("no shortcut control was trained", "no baselines were trained", "no stress results"):
        assert f"_Not available: {missing}" in body
    assert doc["lineage"]["ensemble"] in body and "Aria" in body and "Not a medical device" in body
    assert f"{doc['models']['ensemble']['ece_before_temperature']:.4f} → {doc['ece']:.4f}" in body


def test_the_card_renders_as_html_with_its_tables(evaluated):
    """The Markdown a model hub shows: headings and tables render (markdown-it, CommonMark + tables)."""
    markdown_it = pytest.importorskip("markdown_it")
    run, doc = evaluated
    body = (run / "report" / "model_card.md").read_text().split("---\n", 2)[2]
    html = markdown_it.MarkdownIt("commonmark").enable("table").render(body)
    assert html.count("<h2>") == len(card.SECTIONS) and html.count("<table>") >= 3
    assert "<strong>Not a medical device.</strong>" in html


@pytest.mark.parametrize("k, n", [(0, 10), (3, 7), (7, 7), (971, 971), (12, 400)])
def test_the_exact_interval_is_scipys_clopper_pearson(k, n):
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    assert bounds.binomial_interval(k, n, 0.95) == pytest.approx((ci.low, ci.high), abs=1e-9)
