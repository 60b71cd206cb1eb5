"""The evaluation report: corrections (images copied for review), PNG plots, comparison.md, report.html.

Everything is written under RUN/report/ through storage (local or s3://). Image names from the
manifest never choose a folder: `safe_name` flattens a path into one file name of safe characters,
so `../../x.jpg` becomes `x.jpg`-like text inside the corrections folder, never a path outside it.
"""
from __future__ import annotations

import base64
import csv
import hashlib
import html
import io
import logging
import os
import re

import numpy as np

from ..errors import StorageError
from ..io import storage
from ..rundir import RunDir

log = logging.getLogger("alle_dist.report")
KINDS = ("fn_to_tp", "fp_to_tn", "broken")   # broken: a backbone was right and the ensemble labelled it wrong
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def report_dir(run_dir: str) -> str:
    return RunDir(run_dir).report


def safe_name(path: str, max_len: int = 150) -> str:
    """One file name from a relative path: components joined by '__', unsafe characters → '_'.

    '..', '.' and empty components are dropped; a long name is cut and given a hash suffix so
    two long names stay distinct. The result never contains a separator or starts with '.'."""
    parts = [p for p in re.split(r"[\\/]+", str(path)) if p not in ("", ".", "..")]
    name = "__".join(_UNSAFE.sub("_", p) for p in parts).lstrip(".") or "unnamed"
    if len(name) > max_len:
        digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
        stem, ext = os.path.splitext(name)
        name = f"{stem[: max_len - len(ext) - 13]}-{digest}{ext[:12]}"
    return name


def _inside(root: str, target: str) -> str:
    """target, after checking that it resolves inside root (defence in depth for local paths)."""
    if not storage.is_s3(root):
        r, t = os.path.realpath(root), os.path.realpath(target)
        if os.path.commonpath([r, t]) != r:
            raise StorageError(f"{target}: would be written outside {root}; refused")
    return target


def correction_rows(data, outputs: dict, spec) -> list[dict]:
    """One row per (image, backbone, class, kind), one-vs-rest per class:
    fn_to_tp: true class c, the backbone said not-c, the ensemble said c.
    fp_to_tn: the backbone said c wrongly, the ensemble gave the true label (so not c).
    broken:   the backbone was right, the ensemble gave a wrong label (a referral is not counted)."""
    ens, y, classes = outputs["ensemble"].pred, data.y, spec.classes
    rows = []
    for b in spec.backbones:
        pb = outputs[b].pred
        for i in np.flatnonzero((pb != y) & (ens == y)):
            rows.append((i, b, classes[y[i]], "fn_to_tp"))
            rows.append((i, b, classes[pb[i]], "fp_to_tn"))
        for i in np.flatnonzero((pb == y) & (ens >= 0) & (ens != y)):
            rows.append((i, b, classes[y[i]], "broken"))
    name = lambda k: classes[k] if k >= 0 else "refer"  # noqa: E731
    return [{"path": data.paths[i], "label": classes[y[i]], "kind": kind, "backbone": b, "class": c,
             **{f"{bb}_pred": name(outputs[bb].pred[i]) for bb in spec.backbones},
             "ensemble_pred": name(ens[i]), "file": f"{RunDir.CORRECTIONS}/{kind}/{safe_name(data.paths[i])}"}
            for i, b, c, kind in rows]


def _source(run_dir: str) -> str | None:
    from ..prepare.manifest import read_manifest
    try:
        return read_manifest(run_dir)[1]
    except (StorageError, OSError, KeyError) as exc:
        log.warning("no manifest source (%s): correction images are listed, not copied", exc)
        return None


def corrections(run_dir: str, data, outputs: dict, spec, max_copied: int = 1000) -> dict:
    """Copy the correction images into RUN/report/corrections/<kind>/, write corrections.csv; counts."""
    from ..prepare.catalog import image_uri

    rows = correction_rows(data, outputs, spec)
    root, source, copied, done = report_dir(run_dir), _source(run_dir), 0, set()
    for r in rows:
        if source is None or r["file"] in done or copied >= max_copied:
            continue
        target = _inside(root, storage.join(root, *r["file"].split("/")))
        try:
            storage.write_bytes(target, storage.read_bytes(image_uri(source, r["path"])))
            done.add(r["file"])
            copied += 1
        except (OSError, StorageError) as exc:
            log.warning("correction image %s not copied: %s", r["path"], exc)
    for r in rows:
        r["copied"] = r["file"] in done
    _write_csv(storage.join(root, RunDir.CORRECTIONS, "corrections.csv"), rows)
    counts = {k: {"rows": 0, "images": 0} for k in KINDS}
    for k in KINDS:
        sel = [r for r in rows if r["kind"] == k]
        counts[k] = {"rows": len(sel), "images": len({r["path"] for r in sel}),
                     "by_backbone_class": _tally(sel)}
    ens, y = outputs["ensemble"].pred, data.y
    counts["referred_but_a_backbone_was_right"] = int(sum(
        np.sum((outputs[b].pred == y) & (ens < 0)) for b in spec.backbones))
    counts["copied"] = copied
    return counts


def _tally(rows) -> dict:
    out: dict = {}
    for r in rows:
        out.setdefault(r["backbone"], {}).setdefault(r["class"], 0)
        out[r["backbone"]][r["class"]] += 1
    return out


def _write_csv(uri: str, rows: list[dict]) -> None:
    buf = io.StringIO()
    fields = list(rows[0]) if rows else ["path", "label", "kind", "backbone", "class", "ensemble_pred", "file", "copied"]
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    w.writerows(rows)
    storage.write_bytes(uri, buf.getvalue().encode())


# ---------------------------------------------------------------- plots (matplotlib Agg)

def _figure():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    _figure().close(fig)
    return buf.getvalue()


def plot_confusion(name: str, m: dict, classes) -> bytes:
    plt = _figure()
    counts, pct = np.array(m["confusion"]["counts"]), np.array(m["confusion"]["percent"])
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    ax.imshow(pct, cmap="Blues", vmin=0, vmax=100)
    cols = list(classes) + ["refer"]
    ax.set_xticks(range(len(cols)), cols, rotation=30)
    ax.set_yticks(range(len(classes)), classes)
    for (i, j), v in np.ndenumerate(counts):
        ax.text(j, i, f"{v}\n{pct[i, j]:.1f}%", ha="center", va="center", fontsize=8,
                color="white" if pct[i, j] > 60 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=f"{name}: confusion matrix")
    return _png(fig)


def plot_roc(name: str, m: dict) -> bytes:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(5, 4.5))
    for c, r in m["roc"].items():
        if r["auc"] is not None:
            ax.plot(r["fpr"], r["tpr"], label=f"{c} (AUC {r['auc']:.4f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"{name}: ROC (one-vs-rest)")
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def plot_coverage_risk(models: dict) -> bytes:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for name, m in models.items():
        cr = m["coverage_risk"]
        ax.plot(cr["coverage"], cr["risk"], label=f"{name} (AURC {cr['aurc']:.4f})")
    ax.set(xlabel="coverage (most confident first)", ylabel="risk (error rate among accepted)",
           title="coverage–risk")
    ax.legend(fontsize=8)
    return _png(fig)


def plot_reliability(models: dict) -> bytes:
    plt = _figure()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5), sharey=True)
    for ax, when in zip(axes, ("before", "after")):
        for name, m in models.items():
            b = m["reliability"][when]
            keep = np.array(b["count"]) > 0
            e = m["ece_before_temperature"] if when == "before" else m["ece"]
            ax.plot(np.array(b["confidence"])[keep], np.array(b["accuracy"])[keep], "o-", label=f"{name} (ECE {e:.4f})")
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set(xlabel="confidence", title=f"reliability {when} temperature scaling")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("accuracy")
    return _png(fig)


# ---------------------------------------------------------------- tables, markdown, HTML

def comparison_tables(doc: dict) -> list[tuple[str, list[str], list[list]]]:
    """(title, headers, rows) of every table in comparison.md and report.html."""
    f = lambda v: "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))  # noqa: E731
    keys = ("accuracy", "precision", "sensitivity", "specificity", "f1")
    models = [[name, m["n"], f(m["coverage"]), *(f(m["overall"][k]) for k in keys),
               f(_macro_auc(m)), f"{m['ece_before_temperature']:.4f} → {m['ece']:.4f}"]
              for name, m in doc["models"].items()]
    tables = [("Models on the test split", ["model", "n", "coverage", *keys, "macro AUC", "ECE before → after T"], models)]
    per_class = [[c, *(f(v[k]) for k in keys)] for c, v in doc["per_class"].items()]
    tables.append(("Ensemble per class (one-vs-rest)", ["class", *keys], per_class))
    t3 = [[", ".join(f"{w:g}" for w in r["weights"]), r["gamma"], f(r["coverage"]), *(f(r[k]) for k in keys)]
          for r in doc["table3"]]
    if t3:
        tables.append(("Table 3: weight sets × γ (test split)", ["weights", "γ", "coverage", *keys], t3))
    corr = doc.get("corrections") or {}
    tables.append(("Corrections", ["kind", "rows", "images"],
                   [[k, corr[k]["rows"], corr[k]["images"]] for k in KINDS if k in corr]))
    return tables


def _macro_auc(m: dict):
    aucs = [r["auc"] for r in m["roc"].values() if r["auc"] is not None]
    return float(np.mean(aucs)) if aucs else None


def markdown(doc: dict) -> str:
    out = ["# alle_dist evaluation", ""]
    for title, headers, rows in comparison_tables(doc):
        out += [f"## {title}", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
        out.append("")
    return "\n".join(out)


def html_report(doc: dict, images: dict[str, bytes]) -> str:
    """One self-contained page: tables and the PNGs inlined as base64."""
    e = html.escape
    ens = doc["ensemble"]
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>alle_dist evaluation</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px}</style></head><body>",
             "<h1>alle_dist evaluation (test split)</h1>",
             f"<p>Ensemble {e(str(ens['backbones']))}, weights {e(str(ens['weights']))}, γ = {ens['gamma']:.3f}, "
             f"temperatures {e(str(ens['temperatures']))}. n = {doc['n']}, coverage {doc['coverage']:.4f}.</p>"]
    for title, headers, rows in comparison_tables(doc):
        parts.append(f"<h2>{e(title)}</h2><table><tr>" + "".join(f"<th>{e(str(h))}</th>" for h in headers) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in rows]
        parts.append("</table>")
    for name, data in images.items():
        parts.append(f"<h3>{e(name)}</h3><img alt='{e(name)}' src='data:image/png;base64,"
                     f"{base64.b64encode(data).decode()}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(run_dir: str, doc: dict) -> dict[str, bytes]:
    """The whole report under RUN/report/: the metrics, the PNGs, the comparison tables and the HTML page."""
    root = report_dir(run_dir)
    classes = list(doc["per_class"])
    images = {"coverage_risk.png": plot_coverage_risk(doc["models"]),
              "reliability.png": plot_reliability(doc["models"])}
    for name, m in doc["models"].items():
        images[f"confusion_{safe_name(name)}.png"] = plot_confusion(name, m, classes)
        images[f"roc_{safe_name(name)}.png"] = plot_roc(name, m)
    for name, data in images.items():
        storage.write_bytes(_inside(root, storage.join(root, name)), data)
    storage.write_json(storage.join(root, RunDir.METRICS), doc)
    storage.write_bytes(storage.join(root, RunDir.COMPARISON), markdown(doc).encode())
    storage.write_bytes(storage.join(root, RunDir.REPORT_HTML), html_report(doc, images).encode())
    return images
