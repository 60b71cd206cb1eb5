"""audit.html: the audit for a lab, one self-contained page (plots inlined as PNG, no scripts), every
value through html.escape; and the summary lines the terminal prints."""
from __future__ import annotations

import base64
import html

from .. import schema

DISCLAIMER = ("Not a medical device. These numbers describe how the model did on the images a haematologist "
              "reviewed; each interval is exact for the sample it was computed on, and says nothing about "
              "images unlike those reviewed.")
_CSS = """
body{font:16px/1.45 system-ui,sans-serif;color:#1d2329;max-width:1100px;margin:0 auto;padding:0 24px 48px}
h1{font-size:1.6em}h2{margin-top:1.8em;border-bottom:2px solid #d5dde5;padding-bottom:.2em}
.disclaimer{background:#fff4d6;border:2px solid #d9a400;padding:10px 14px;font-weight:600;border-radius:6px}
table{border-collapse:collapse;margin:.6em 0}th,td{border:1px solid #cfd6dd;padding:4px 10px;text-align:left}
th{background:#f0f3f6}td.num{text-align:right;font-variant-numeric:tabular-nums}.above{color:#b3261e;font-weight:700}
figure{margin:1em 0}figure img{width:100%;max-width:1000px;height:auto;border:1px solid #e3e7eb}
figcaption{font-weight:600}
"""


def _e(v) -> str:
    return html.escape(str(v), quote=True)


def pct(v, digits: int = 1) -> str:
    return "–" if v is None else f"{100 * v:.{digits}f} %"


def ci(r: dict) -> str:
    return "–" if r.get("rate") is None else f"{pct(r['rate'])} [{pct(r['low'])}, {pct(r['high'])}]"


def _table(headers, rows) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def accepted_line(a: dict, confidence: float) -> str:
    if not a["n"]:
        return "accepted images: no audit decisions yet (`alle-dist review build --audit N`, then import)"
    s = a["stated"]
    vs = (f"; the γ rule's bound {pct(s['bound'])} ({a['basis']}): {s['verdict']} (p = {s['p_value']:.3g})"
          if s else "; no stated bound to compare with")
    return (f"accepted images: error {a['k']} of {a['n']} = {ci(a)} ({confidence:g} interval; wrong class "
            f"{a['wrong_class']['k']}, other cell {a[schema.OTHER_CELL]}, unusable {a[schema.UNUSABLE]}){vs}")


def referred_line(r: dict) -> str:
    if not r["n"]:
        return "referred images: none reviewed yet"
    n_class = sum(v["n"] for v in r["classes"].values())
    return (f"referred images: {r['n']} reviewed: {n_class} one of the classes (the ensemble's argmax right for "
            f"{r['argmax_right']}), {r[schema.OTHER_CELL]} another cell type, {r[schema.UNUSABLE]} unusable")


def runs_line(runs: list[dict]) -> str:
    judged = [r for r in runs if r["drift"] is not None]
    drifting = [r for r in judged if r["drift"]]
    if not runs:
        return "referral rate per run: no classify runs recorded"
    if not judged:
        return f"referral rate per run: {len(runs)} run(s); the image rule states no bound to compare with"
    worst = max(drifting, key=lambda r: r["rate"], default=None)
    tail = (f" (e.g. {worst['run_id']}: {pct(worst['rate'])} of {worst['n']}, bound {pct(worst['bound'], 2)}, "
            f"p = {worst['p_value']:.2g}: images unlike the training data)" if worst else "")
    return f"referral rate per run: {len(judged)} run(s) checked, {len(drifting)} above the image rule's bound{tail}"


def lines(doc: dict) -> list[str]:
    return [accepted_line(doc["accepted"], doc["confidence"]), referred_line(doc["referred"]), runs_line(doc["runs"])]


def _accepted(doc: dict) -> str:
    a, classes = doc["accepted"], doc["classes"]
    rows = [["all accepted", a["n"], a["k"], ci(a)]] + [[c, a["by_class"][c]["n"], a["by_class"][c]["k"],
                                                         ci(a["by_class"][c])] for c in classes]
    extra = (f"<p>Of the errors: wrong class {a['wrong_class']['k']}, another cell type {a[schema.OTHER_CELL]}, "
             f"unusable {a[schema.UNUSABLE]} (an accepted image that is not one of the classes got a confident class "
             f"it does not have: it counts as an error). Wrong class alone: {_e(ci(a['wrong_class']))}.</p>")
    return _table(["label given", "audited", "errors", f"error rate [{doc['confidence']:g} interval]"], rows) + extra


def _referred(doc: dict) -> str:
    r, classes = doc["referred"], doc["classes"]
    rows = [[c, r["classes"][c]["n"], r["classes"][c]["argmax_right"]] for c in classes]
    rows += [[schema.REVIEW_EXTRA_LABELS[k], r[k], "–"] for k in schema.REVIEW_EXTRA_LABELS]
    reasons = [[k, *(v.get(o, 0) for o in ("argmax_right", "argmax_wrong", schema.OTHER_CELL, schema.UNUSABLE))]
               for k, v in r["by_reason"].items()]
    return (_table(["turned out to be", "images", "ensemble's argmax right"], rows)
            + "<p>By referral reason:</p>"
            + (_table(["reason", "class, argmax right", "class, argmax wrong", "other cell", "unusable"], reasons)
               if reasons else "<p>No referred image reviewed yet.</p>"))


def _runs(doc: dict) -> str:
    rows = [[r["run_id"], r.get("started_at") or "", r["n"], r["referred"], ci(r), pct(r["bound"], 2),
             "–" if r["p_value"] is None else f"{r['p_value']:.3g}",
             "–" if r["drift"] is None else ("DRIFT" if r["drift"] else "no")] for r in doc["runs"]]
    return _table(["run", "started", "ok images", "odd_image referrals", "rate [interval]", "bound", "p", "drift"], rows)


def render(doc: dict, plots: dict[str, bytes]) -> str:
    figs = "".join(f'<figure><figcaption>{_e(t)}</figcaption><img alt="{_e(t)}" '
                   f'src="data:image/png;base64,{base64.b64encode(png).decode()}"></figure>' for t, png in plots.items())
    summary = "".join(f"<li>{_e(line)}</li>" for line in lines(doc))
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>alle_dist audit</title>
<style>{_CSS}</style></head><body><h1>Audit of {_e(doc['table'])}</h1>
<p class="disclaimer" id="disclaimer">{_e(DISCLAIMER)}</p>
<section id="summary"><h2>Summary</h2><ul>{summary}</ul><p>{doc['reviews']} decision(s) in the reviews table;
table version {_e(doc['version'])}; models {_e(str(doc['model_sha256'])[:12])}…; stated bounds from
{_e(doc.get('run_dir') or 'no run directory')}.</p></section>
<section id="accepted"><h2>Error rate among accepted images (blind audit sample)</h2>{_accepted(doc)}</section>
<section id="referred"><h2>What the referred images turned out to be</h2>{_referred(doc)}</section>
<section id="runs"><h2>Referral rate per classify run (image rule)</h2>{_runs(doc)}</section>
<section id="plots"><h2>Plots</h2>{figs}</section></body></html>
"""
