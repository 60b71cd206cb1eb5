"""The evaluation report: corrections (images copied for review, counted once per kind), the PNG plots
(evaluate.plots), comparison.md, the run details and report.html (evaluate.page).

Everything is written under RUN/report/ through storage (local or s3://). Image names from the
manifest never choose a folder: `safe_name` flattens a path into one file name of safe characters,
so `../../x.jpg` becomes `x.jpg`-like text inside the corrections folder, never a path outside it.
"""
from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import re

import numpy as np

from .. import schema
from ..errors import StorageError
from ..io import storage
from ..rundir import RunDir
from . import page, plots
from .metrics import ENSEMBLE

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
    ens, y, classes = outputs[ENSEMBLE].pred, data.y, spec.classes
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


def _manifest(run_dir: str):
    """(manifest table, source root), or None when the run has no readable manifest (logged)."""
    from ..prepare.manifest import read_manifest

    try:
        table, source, _ = read_manifest(run_dir)
        return table, source
    except (StorageError, OSError, KeyError) as exc:
        log.warning("no manifest source (%s): report images are listed, not shown or copied", exc)
        return None


def source_root(run_dir: str) -> str | None:
    """The folder or s3:// prefix the manifest's paths are relative to (None: no manifest)."""
    found = _manifest(run_dir)
    return found[1] if found else None


def corrections(run_dir: str, data, outputs: dict, spec, max_copied: int = 1000) -> dict:
    """Copy the correction images into RUN/report/corrections/<kind>/, write corrections.csv; counts."""
    from ..prepare.catalog import image_uri

    rows = correction_rows(data, outputs, spec)
    root, source, copied, done = report_dir(run_dir), source_root(run_dir), 0, set()
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
    return {**correction_counts(rows, spec.backbones),
            "referred_but_a_backbone_was_right": _referred_right(data, outputs, spec), "copied": copied}


def correction_counts(rows: list[dict], backbones) -> dict:
    """Each image counted once per kind. `corrected`: images some network got wrong and the ensemble
    right (the paper lists each twice, as fn_to_tp of its true class and fp_to_tn of the wrong one:
    those two views are `by_class`, per backbone, never added up); `broken`: a network was right, the
    ensemble gave a wrong label. `by_backbone`: images per network (an image both got wrong is in both)."""
    def images(kind: str) -> dict:
        sel = [r for r in rows if r["kind"] == kind]
        return {"images": len({r["path"] for r in sel}),
                "by_backbone": {b: len({r["path"] for r in sel if r["backbone"] == b}) for b in backbones}}

    return {"corrected": images("fn_to_tp"), "broken": images("broken"),
            "by_class": {k: _tally([r for r in rows if r["kind"] == k]) for k in KINDS}}


def _referred_right(data, outputs: dict, spec) -> int:
    ens, y = outputs[ENSEMBLE].pred, data.y
    return int(sum(np.sum((outputs[b].pred == y) & (ens < 0)) for b in spec.backbones))


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


# ---------------------------------------------------------------- comparison.md, run details, the report

def comparison_tables(doc: dict) -> list[tuple[str, list[str], list[list]]]:
    """(title, headers, rows) of every table in comparison.md (report.html: evaluate.page)."""
    f = lambda v: "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))  # noqa: E731
    keys = ("accuracy", "precision", "sensitivity", "specificity", "f1")
    models = [[name, m["n"], f(m["coverage"]), *(f(m["overall"][k]) for k in keys),
               f(page.macro_auc(m)), f"{m['ece_before_temperature']:.4f} → {m['ece']:.4f}"]
              for name, m in doc["models"].items()]
    tables = [("Models on the test split", ["model", "n", "coverage", *keys, "macro AUC", "ECE before → after T"], models)]
    per_class = [[c, *(f(v[k]) for k in keys)] for c, v in doc["per_class"].items()]
    tables.append(("Ensemble per class (one-vs-rest)", ["class", *keys], per_class))
    t3 = [[", ".join(f"{w:g}" for w in r["weights"]), r["gamma"], f(r["coverage"]), *(f(r[k]) for k in keys)]
          for r in doc["table3"]]
    if t3:
        tables.append(("Table 3: weight sets × γ (test split)", ["weights", "γ", "coverage", *keys], t3))
    corr, members = doc.get("corrections") or {}, doc["ensemble"]["backbones"]
    kinds = (("corrected", "a network wrong, the ensemble right"), ("broken", "a network right, the ensemble wrong"))
    tables.append(("Corrections (each image once)", ["kind", "images", *members],
                   [[label, corr[k]["images"], *(corr[k]["by_backbone"].get(b, 0) for b in members)]
                    for k, label in kinds if k in corr]))
    return tables


def markdown(doc: dict) -> str:
    out = ["# alle_dist evaluation", ""]
    for title, headers, rows in comparison_tables(doc):
        out += [f"## {title}", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
        out.append("")
    return "\n".join(out)


def run_details(run_dir: str, doc: dict) -> dict:
    """What the page prints above everything: when, from which data, which models, which code."""
    from datetime import datetime, timezone

    found = _manifest(run_dir)
    details = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "run_dir": run_dir}
    if found:
        table, details["data_source"] = found
        splits = [s for s, ok in zip(table.column("split").to_pylist(), table.column("status").to_pylist())
                  if s and ok == schema.OK]
        details["split_sizes"] = {s: splits.count(s) for s in schema.SPLITS if s in splits}
    details["models"] = {name: _identity(run_dir, name) for name in doc["models"] if name != ENSEMBLE}
    details["versions"] = versions()
    return details


def versions() -> dict[str, str]:
    """Versions of the code and the libraries that shape the numbers, for the run details."""
    import platform
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in ("alle_dist", "torch", "timm", "numpy", "scikit-learn", "ray"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out


def _identity(run_dir: str, name: str) -> dict:
    """A model's identity from its meta.json: architecture, model id, input, how it was trained."""
    from ..models import persistence, preprocessing

    try:
        meta = persistence.read_meta(RunDir(run_dir).model(name).root)
    except (OSError, StorageError) as exc:   # a missing, damaged or edited meta.json: said on the page
        return {"model id": f"unreadable meta.json ({storage.first_line(exc)})"}
    prep = preprocessing.read(meta)
    return {"architecture": meta["architecture"], "model id": persistence.model_id(meta),
            "image size": f"{prep.image_size} px", "input": ("HSV-segmented" if prep.segment else "original")
            + (f", {prep.stain.method} stain-normalised" if prep.stain else ""),
            "read at": f"{prep.working_size}² (working size)" if prep.working_size else "full resolution (original path)",
            "pretrained": meta.get("pretrained", "?"), "trained with": _versions(meta.get("versions"))}


def _versions(v) -> str:
    return ", ".join(f"{k} {x}" for k, x in v.items()) if isinstance(v, dict) else "?"


def write_report(run_dir: str, doc: dict, galleries: dict[str, list[dict]] | None = None) -> dict[str, bytes]:
    """The whole report under RUN/report/: metrics.json, the plots as PNGs, comparison.md and report.html
    (evaluate.page: the plots and the gallery images inlined). Returns {file name: PNG}."""
    root = report_dir(run_dir)
    named = plots.plot_set(doc)
    files = {f"{safe_name(stem)}.png": png for stem, _, png in named}
    for name, data in files.items():
        storage.write_bytes(_inside(root, storage.join(root, name)), data)
    storage.write_json(storage.join(root, RunDir.METRICS), doc)
    storage.write_bytes(storage.join(root, RunDir.COMPARISON), markdown(doc).encode())
    text = page.render(doc, run_details(run_dir, doc), {title: png for _, title, png in named}, galleries or {})
    storage.write_bytes(storage.join(root, RunDir.REPORT_HTML), text.encode())
    return files
