"""The HTML report for a haematologist: one self-contained page (images inlined as base64, no scripts,
nothing fetched), every value from the evaluation doc passed through html.escape.

`render(doc, details, plots, galleries)`:
- doc: evaluate's metrics doc (per_class, overall, coverage, n, ensemble, table3, models, corrections;
  optional `guarantees` (rows of dicts) and `control` (a line or a dict));
- details: run details, e.g. {"date", "run_dir", "data_source", "split_sizes": {"train": 1800, ...},
  "models": {name: {"architecture", "model id", ...}}, "versions": {...}} (report.run_details); any other
  key is shown too;
- plots: {readable title: PNG bytes} (plots.all_plots);
- galleries: {"corrected" | "referred" | "misclassified": [item, ...]} (evaluate.gallery builds them).
"""
from __future__ import annotations

import base64
import html
import struct

import numpy as np

from ..referral.signals import REASON_WORDS
from .metrics import ENSEMBLE
from .plots import STRESS_TITLE

DISCLAIMER = ("Not a medical device. This report describes a research model on a held-out test set; "
              "it is not cleared for diagnosis. Every result must be checked by a qualified haematologist.")
SECTIONS = (("summary", "Summary"), ("models", "How each model did on the test images"),
            ("per-class", "The ensemble, class by class"), ("weights", "Weight sets and thresholds tried"),
            ("referrals", "Why images were referred"), ("guarantees", "Referral guarantees"),
            ("control", "Shortcut control"), ("stress", "Under stain and acquisition shift"),
            ("corrected", "Images one network got wrong and the ensemble got right"),
            ("referred", "Images referred to a haematologist"),
            ("misclassified", "Images the ensemble labelled wrong"), ("plots", "Plots"))
GALLERIES = ("corrected", "referred", "misclassified")
METRICS = ("accuracy", "precision", "sensitivity", "specificity", "f1")
_LABELS = {"f1": "F1"}
_CSS = """
body{font:16px/1.45 system-ui,sans-serif;color:#1d2329;max-width:1300px;margin:0 auto;padding:0 24px 48px}
h1{font-size:1.7em;margin:.6em 0 .2em}h2{margin-top:2em;border-bottom:2px solid #d5dde5;padding-bottom:.2em}
.disclaimer{background:#fff4d6;border:2px solid #d9a400;padding:10px 14px;font-weight:600;border-radius:6px}
.notes{background:#eef5ff;border-left:5px solid #3b7dd8;padding:8px 14px 8px 34px}
table{border-collapse:collapse;margin:.6em 0}th,td{border:1px solid #cfd6dd;padding:4px 10px;text-align:left}
th{background:#f0f3f6}td.num{text-align:right;font-variant-numeric:tabular-nums}tr.chosen td{font-weight:700}
nav ol{columns:3;margin:.4em 0}dl.details{display:grid;grid-template-columns:max-content 1fr;gap:2px 16px}
dl.details dt{font-weight:600}dl.details dd{margin:0}code{font-size:.92em}
.plots{display:grid;grid-template-columns:1fr 1fr;gap:18px}.plots figure{margin:0}.plots figure.wide{grid-column:1/-1}
.plots img{width:100%;height:auto;border:1px solid #e3e7eb}figcaption{font-weight:600;margin-bottom:4px}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(390px,1fr));gap:14px}
.item{margin:0;border:1px solid #cfd6dd;border-radius:6px;padding:8px;background:#fafbfc}
.pics{display:flex;gap:4px}.pics div{width:120px;text-align:center;font-size:.78em;color:#555;overflow-wrap:anywhere}
.pics img{display:block;width:120px;height:120px;object-fit:contain}
.item .path{font-family:monospace;font-size:.85em;word-break:break-all;margin:6px 0 2px}
.item table{font-size:.9em;margin:2px 0}.right{color:#17692f}.wrong{color:#b3261e;font-weight:600}
"""


def _e(v) -> str:
    return html.escape(str(v), quote=True)


def num(v, digits: int = 4) -> str:
    """A number for people: fixed decimals for floats, '–' for missing values."""
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.{digits}f}"
    return str(v)


def keyed(names, values, digits: int = 2) -> str:
    """'densenet201 0.70, resnet50 0.30': values keyed by backbone."""
    return ", ".join(f"{n} {num(float(v), digits)}" for n, v in zip(names, values))


def _heads() -> list[str]:
    return [_LABELS.get(k, k) for k in METRICS]


def _n_images(k: int) -> str:
    return f"{k} image" if k == 1 else f"{k} images"


def _png_size(data: bytes) -> tuple[int, int]:
    w, h = struct.unpack(">II", data[16:24])   # the IHDR chunk of every PNG
    return w, h


def _img(data: bytes, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _table(headers, rows, numeric=(), chosen=None) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for i, r in enumerate(rows):
        cells = "".join(f'<td class="num">{_e(c)}</td>' if j in numeric else f"<td>{_e(c)}</td>"
                        for j, c in enumerate(r))
        body.append(f'<tr{" class=chosen" if i == chosen else ""}>{cells}</tr>')
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _section(sid: str, inner: str) -> str:
    return f'<section id="{sid}"><h2>{_e(dict(SECTIONS)[sid])}</h2>{inner}</section>'


# ---------------------------------------------------------------- header: details, summary, notes

def _details(details: dict) -> str:
    out = []
    for k, v in details.items():
        label = {"date": "Date", "run_dir": "Run directory", "data_source": "Data source",
                 "split_sizes": "Split sizes (images)", "models": "Models", "versions": "Versions"}.get(k, k)
        out.append(f"<dt>{_e(label)}</dt><dd>{_detail_value(k, v)}</dd>")
    return f'<dl class="details" id="details">{"".join(out)}</dl>'


def _detail_value(key: str, v) -> str:
    if key == "models" and isinstance(v, dict):
        cols = list(dict.fromkeys(c for m in v.values() for c in m))
        return _table(["model", *cols], [[n, *(_short(m.get(c)) for c in cols)] for n, m in v.items()])
    if isinstance(v, dict):
        return _e(", ".join(f"{k} {num(x)}" for k, x in v.items()))
    return _e(num(v))


def _short(v) -> str:
    s = num(v)                     # a sha256 is long; 16 hex digits identify a model file well enough
    return s[:16] + "…" if len(s) == 64 and all(c in "0123456789abcdef" for c in s) else s


def notes(doc: dict) -> list[str]:
    """Plain-language warnings: a dominant member, temperature scaling that did not help, no baselines."""
    ens, models, out = doc["ensemble"], doc["models"], []
    names, weights = ens["backbones"], ens["weights"]
    for b, w in zip(names, weights):
        if w >= 0.9 and len(names) > 1:
            rest = keyed([n for n in names if n != b], [x for n, x in zip(names, weights) if n != b])
            out.append(f"The ensemble is effectively a single model: {b} carries weight {w:.2f} "
                       f"(the others: {rest}). Its results are close to {b} alone.")
    temps = dict(zip(names, ens.get("temperatures") or [1.0] * len(names)))
    for name, m in models.items():
        scaled = any(t != 1.0 for t in temps.values()) if name == ENSEMBLE else temps.get(name, 1.0) != 1.0
        if scaled and m["ece"] >= m["ece_before_temperature"]:
            out.append(f"Temperature scaling did not improve the calibration of {name}: ECE "
                       f"{m['ece_before_temperature']:.4f} before, {m['ece']:.4f} after. Its confidences "
                       "are no more trustworthy than the raw network outputs.")
    if not set(models) - set(names) - {ENSEMBLE}:
        out.append("No baseline models were trained (the paper compares AlexNet, VGG-16, MobileNetV2 and "
                   "each member alone), so this report cannot show that the ensemble beats them; train "
                   "them with `alle-dist train --backbone all`.")
    return out


def _summary(doc: dict) -> str:
    ens, o, n = doc["ensemble"], doc["overall"], doc["n"]
    temps = ens.get("temperatures") or []
    facts = [("Ensemble weights", keyed(ens["backbones"], ens["weights"])),
             ("Confidence threshold γ", num(float(ens["gamma"]), 2)),
             ("Temperatures", keyed(ens["backbones"], temps) if temps else "none"),
             ("Test images", n),
             ("Labelled (not referred)", f"{num(doc['coverage'])} ({100 * doc['coverage']:.1f} %)"),
             ("Accuracy (a referral counts as an error)", num(o["accuracy"])),
             ("Accuracy on the labelled images", num(doc.get("accuracy_on_accepted"))),
             ("Macro F1 / sensitivity / specificity", " / ".join(num(o[k]) for k in ("f1", "sensitivity", "specificity"))),
             ("Calibration error (ECE)", num(doc["ece"]))]
    rows = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts)
    warn = notes(doc)
    items = "".join(f"<li>{_e(t)}</li>" for t in warn)
    return f'<dl class="details">{rows}</dl>' + (f'<ul class="notes" id="notes">{items}</ul>' if warn else "")


# ---------------------------------------------------------------- tables

def macro_auc(m: dict):
    aucs = [r["auc"] for r in m["roc"].values() if r["auc"] is not None]
    return float(np.mean(aucs)) if aucs else None


def _models(doc: dict) -> str:
    members = set(doc["ensemble"]["backbones"])
    role = lambda n: "ensemble" if n == ENSEMBLE else "member" if n in members else "baseline"  # noqa: E731
    rows = [[n, role(n), m["n"], num(m["coverage"]), *(num(m["overall"][k]) for k in METRICS),
             num(macro_auc(m)), f"{num(m['ece_before_temperature'])} → {num(m['ece'])}"]
            for n, m in doc["models"].items()]
    head = ["model", "role", "images", "labelled", *_heads(), "macro AUC", "ECE before → after T"]
    return ("<p>Single networks always give a label; only the ensemble refers. Precision, sensitivity, "
            "specificity and F1 are averages over the classes, one class against the rest.</p>"
            + _table(head, rows, numeric=set(range(2, 11))))


def _per_class(doc: dict) -> str:
    rows = [[c, v.get("support", "–"), *(num(v[k]) for k in METRICS)] for c, v in doc["per_class"].items()]
    return _table(["class", "images", *_heads()], rows, numeric=set(range(1, 7)))


def _weights(doc: dict) -> str:
    ens, rows, chosen = doc["ensemble"], [], None
    for i, r in enumerate(doc.get("table3") or []):
        if np.allclose(r["weights"], ens["weights"]) and abs(r["gamma"] - ens["gamma"]) < 1e-9:
            chosen = i
        rows.append([keyed(ens["backbones"], r["weights"]), num(float(r["gamma"]), 2), num(r["coverage"]),
                     *(num(r[k]) for k in METRICS)])
    if not rows:
        return "<p>Not computed: the paper's weight grid needs exactly two ensemble members.</p>"
    return ("<p>The paper's weight sets × γ (its Table 3) on the test images (the choice itself was made on the validation "
            "images; the chosen one is in bold when it is on this grid).</p>"
            + _table(["weights", "γ", "labelled", *_heads()], rows, numeric=set(range(1, 8)), chosen=chosen))


def _referrals(doc: dict) -> str:
    combos = doc["models"].get(ENSEMBLE, {}).get("referral_reasons") or {}
    n, total = max(doc["n"], 1), sum(combos.values())
    if not total:
        return "<p>No test image was referred.</p>"
    by_rule: dict[str, int] = {}
    for combo, k in combos.items():
        for r in combo.split("+"):
            by_rule[r] = by_rule.get(r, 0) + k
    rule_rows = [[REASON_WORDS.get(r, r), k, f"{100 * k / n:.1f} %"] for r, k in sorted(by_rule.items(), key=lambda x: -x[1])]
    combo_rows = [[c.replace("+", " + "), k] for c, k in sorted(combos.items(), key=lambda x: -x[1])]
    return (f"<p>{total} of {doc['n']} test images ({100 * total / n:.1f} %) were referred instead of labelled. "
            "An image can trip several rules, so the first table can add up to more than that.</p>"
            + _table(["rule", "images", "share of test images"], rule_rows, numeric={1, 2})
            + "<p>Rules that fired together:</p>" + _table(["rules", "images"], combo_rows, numeric={1}))


def _guarantees(doc: dict) -> str:
    rows = doc.get("guarantees") or []
    if not rows:
        return "<p>Not computed for this run.</p>"
    label = {"headline": "bound (valid)", "alpha": "α (error rate allowed)", "delta": "δ (risk the bound fails)",
             "bound": "bound tune stated", "valid": "a guarantee?", "observed": "observed rate",
             "test_upper": "bound from the test split (valid)", "violated": "violated (binomial test)"}
    cols = list(dict.fromkeys(k for r in rows for k in r))
    return _table([label.get(c, c) for c in cols], [[num(r.get(c)) for c in cols] for r in rows],
                  numeric=set(range(len(cols))))


def _control(doc: dict) -> str:
    c = doc.get("control")
    if c is None:
        return "<p>Not run for this run.</p>"
    text = ", ".join(f"{k} {num(v)}" for k, v in c.items()) if isinstance(c, dict) else str(c)
    return f"<p>{_e(text)}</p>"


def _stress(doc: dict, plots: dict[str, bytes]) -> str:
    """The stress table (`alle-dist stress`): each shift and strength beside the unshifted split."""
    s = doc.get("stress")
    if not s:
        return "<p>Not run for this run: <code>alle-dist stress --run-dir RUN</code> measures it.</p>"
    b = s["unshifted"]
    pct = lambda v: "–" if v is None else f"{100 * v:.1f} %"  # noqa: E731
    rows = [["none (unshifted)", "", pct(b["coverage"]), pct(b["accuracy_on_accepted"]), pct(b["confident_error_rate"]),
             "", ""]]
    rows += [[r["shift"], r["strength_label"], pct(r["coverage"]), pct(r["accuracy_on_accepted"]),
              pct(r["confident_error_rate"]), "–" if r["vs_unshifted"] is None else f"{r['vs_unshifted']:.1f}×",
              "BROKEN" if r["breaks_goal"] else "met"] for r in s["rows"]]
    head = ["shift", "strength", "labelled", "accuracy on labelled", "confident errors", "× unshifted", "goal"]
    figs = {t: p for t, p in plots.items() if t.startswith(STRESS_TITLE)}
    return (f"<p>The {_n_images(s['n'])} of the test split, shifted as another stain batch, lamp, camera, focus or "
            "file format would deliver them (seeded), through the same reading, models and decision as bulk "
            "classification. A confident error is an image labelled (not referred) and labelled wrong; the "
            f"goal is at most {s['goal_factor']:g} × the unshifted rate under every shift.</p>"
            f'<p class="notes" id="stress-verdict">{_e(s["verdict"])}</p>'
            + _table(head, rows, numeric={2, 3, 4, 5}) + (_plots(figs) if figs else ""))


def _corrections_intro(doc: dict) -> str:
    c = doc.get("corrections") or {}
    fixed, broken = c.get("corrected", {}), c.get("broken", {})
    rows = [[b, (fixed.get("by_backbone") or {}).get(b, 0), (broken.get("by_backbone") or {}).get(b, 0)]
            for b in doc["ensemble"]["backbones"]]
    k = fixed.get("images", 0)
    return (f"<p>{_n_images(k)} {'was' if k == 1 else 'were'} labelled wrong by at least one network and right by the "
            "ensemble. Each is counted once (the paper counts it twice: a false negative of its true class "
            f"turned true positive, and a false positive of the wrong class turned true negative). "
            f"{_n_images(broken.get('images', 0))} went the other way: a network was right, the ensemble wrong. "
            "Among the referred images, a network's own label was right "
            f"{c.get('referred_but_a_backbone_was_right', 0)} times (each network counted separately).</p>"
            + _table(["network", "it was wrong, the ensemble right", "it was right, the ensemble wrong"],
                     rows, numeric={1, 2}))


# ---------------------------------------------------------------- galleries and plots

def _totals(doc: dict) -> dict[str, int]:
    ens = doc["models"].get(ENSEMBLE, {})
    referred = int(ens.get("n_referred", 0))
    right = int(round(doc["overall"]["accuracy"] * doc["n"]))
    return {"corrected": int((doc.get("corrections") or {}).get("corrected", {}).get("images", 0)),
            "referred": referred, "misclassified": doc["n"] - referred - right}


def _item(it: dict) -> str:
    pics = [f"<div>{_img(it['thumb'], 'image ' + it['path'])}image</div>"]
    flat = set(it.get("flat_cams") or ())     # an all-zero map: no region raised that class's score
    pics += [f"<div>{_img(png, f'Grad-CAM {name} of ' + it['path'])}Grad-CAM {_e(name)}"
             f"{' (flat: no region stood out)' if name in flat else ''}</div>"
             for name, png in (it.get("cams") or {}).items()]
    mark = lambda lab: "right" if lab == it["true"] else "wrong"  # noqa: E731
    rows = [f"<tr><th>true class</th><td>{_e(it['true'])}</td></tr>"]
    rows += [f'<tr><td>{_e(n)}</td><td class="{mark(lab)}">{_e(lab)} {num(float(c), 2)}</td></tr>'
             for n, lab, c in it["members"]]
    lab, conf = it["ensemble"]
    if it.get("reason"):
        why = "; ".join(REASON_WORDS.get(r, r).split(":")[0] for r in it["reason"].split("+"))
        ens = f"referred ({_e(why)}); top class {_e(lab)} {num(float(conf), 2)}"
    else:
        ens = f'<span class="{mark(lab)}">{_e(lab)} {num(float(conf), 2)}</span>'
    rows.append(f"<tr><th>ensemble</th><td>{ens}</td></tr>")
    return (f'<figure class="item"><div class="pics">{"".join(pics)}</div>'
            f'<div class="path">{_e(it["path"])}</div><table>{"".join(rows)}</table></figure>')


def _gallery(items: list[dict], total: int, intro: str = "") -> str:
    if not items:
        # Images exist but none could be shown: say so rather than "None."
        return intro + (f"<p>{_n_images(total)}; their pictures could not be read for this report "
                        "(see the evaluate log).</p>" if total else "<p>None.</p>")
    shown = f"<p>Showing {len(items)} of {_n_images(total)}." if total > len(items) else f"<p>{_n_images(len(items))}."
    shown += (" Next to each image, where each network looked for its answer (Grad-CAM: red = most "
              "influential)." if any(it.get("cams") for it in items) else "") + "</p>"
    return intro + shown + f'<div class="gallery">{"".join(_item(it) for it in items)}</div>'


def _plots(plots: dict[str, bytes]) -> str:
    figs = []
    for title, data in plots.items():
        w, h = _png_size(data)
        wide = " class=wide" if w >= 1.5 * h else ""
        figs.append(f"<figure{wide}><figcaption>{_e(title)}</figcaption>{_img(data, title)}</figure>")
    return f'<div class="plots">{"".join(figs)}</div>'


def render(doc: dict, details: dict, plots: dict[str, bytes], galleries: dict[str, list[dict]]) -> str:
    """The whole page as one HTML string."""
    totals = _totals(doc)
    nav = "".join(f'<li><a href="#{sid}">{_e(t)}</a></li>' for sid, t in SECTIONS)
    body = {"summary": _summary(doc), "models": _models(doc), "per-class": _per_class(doc),
            "weights": _weights(doc), "referrals": _referrals(doc), "guarantees": _guarantees(doc),
            "control": _control(doc), "stress": _stress(doc, plots),
            "plots": _plots({t: p for t, p in plots.items() if not t.startswith(STRESS_TITLE)})}
    for kind in GALLERIES:
        intro = _corrections_intro(doc) if kind == "corrected" else ""
        body[kind] = _gallery(galleries.get(kind) or [], totals[kind], intro)
    return ("<!doctype html><html lang=en><head><meta charset=utf-8>"
            "<meta name=viewport content='width=device-width,initial-scale=1'>"
            f"<title>alle_dist evaluation report</title><style>{_CSS}</style></head><body>"
            "<h1>ALL blood-smear classifier: evaluation on the test images</h1>"
            f'<p class="disclaimer" id="disclaimer">{_e(DISCLAIMER)}</p>{_details(details)}'
            f"<nav><ol>{nav}</ol></nav>"
            + "".join(_section(sid, body[sid]) for sid, _ in SECTIONS) + "</body></html>")
