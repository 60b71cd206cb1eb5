"""The model card (Mitchell et al. 2019, "Model Cards for Model Reporting") in Hugging Face's form: YAML
front matter (license, tags, datasets, `model-index` metrics) and Markdown sections.

`gather(run_dir)` reads the run's own files (report/metrics.json, ensemble.json, the manifest, each
member's meta.json); `render(facts)` is pure. Every number on the card comes from those files; a
section whose input is missing (evaluate not run, no shortcut control, no baselines, no stress
results) says so instead of vanishing. evaluate writes RUN/report/model_card.md; export writes the
versioned copy into the bundle.
"""
from __future__ import annotations

import logging

import yaml

from .. import schema
from ..errors import StorageError
from ..io import storage
from ..referral.bounds import binomial_interval
from ..rundir import RunDir
from ..tune.select import too_few_for_a_bound
from .metrics import ENSEMBLE

log = logging.getLogger("alle_dist.card")
CONFIDENCE = 0.95
CITATION = ("Aria M, Ghaderzadeh M, Bashash D, Abolghasemi H, Asadi F, Hosseini A. Acute Lymphoblastic Leukemia "
            "(ALL) image dataset. Kaggle, 2021. DOI 10.34740/KAGGLE/DSV/2175623; Ghaderzadeh M et al., "
            "Int J Intell Syst 2022")
SECTIONS = ("Model details", "Intended use", "Out-of-scope uses", "Not a medical device", "Training data",
            "Duplicate and near-duplicate handling", "Metrics on the test split", "Referral guarantees",
            "Shortcut control", "Baselines", "Stress tests", "Calibration", "Known limitations", "Lineage")
LIMITATIONS = (  # docs/limitations.md, condensed
    "Data scope: the public ALL dataset comes from one hospital, one microscope and one staining protocol "
    "(89 patients); four classes only (benign hematogones, Early Pre-B, Pre-B, Pro-B ALL). T-ALL, AML, CLL, "
    "other leukaemias and other white cells are outside the label set.",
    "No patient identifiers are published, so the split keeps only duplicate and near-duplicate files "
    "together: images of one patient may fall on both sides, which makes test figures optimistic.",
    "Calibration and referral are fitted on the validation split; after a change of microscope, camera or "
    "stain, re-fit (`alle-dist tune`) on labelled images from the new setting before trusting coverage.",
    "Images from another lab are referred wholesale by the image-statistics rule until the models are "
    "trained with labelled images from that setting.",
    "File names and paths appear in the outputs: pseudonymise them if they carry patient identifiers.",
)


# ---------------------------------------------------------------- facts from the run's files

def gather(run_dir: str, model_sha256: str | None = None) -> dict:
    """Everything the card states, read from the run directory (None where a file is missing)."""
    run = RunDir(run_dir)
    ens = _json(run.ensemble)
    facts = {"run_dir": run.root, "ensemble": ens, "metrics": _json(run.report_file(RunDir.METRICS)),
             "manifest": _manifest(run), "model_sha256": model_sha256, "members": {}}
    for b in (ens or {}).get("backbones", []):
        facts["members"][b] = _member(run, b)
    return facts


def _json(uri: str) -> dict | None:
    return storage.read_json(uri) if storage.exists(uri) else None


def _member(run: RunDir, backbone: str) -> dict:
    from ..models import persistence, preprocessing

    meta = persistence.read_meta(run.model(backbone).root)
    prep = preprocessing.read(meta)
    recipe = (meta.get("config") or {}).get("train") or {}
    return {"architecture": meta["architecture"], "model_id": persistence.model_id(meta),
            "image_size": prep.image_size, "segmented": prep.segment is not None,
            "pretrained": meta.get("pretrained"), "best_epoch": meta.get("best_epoch"),
            "epochs": recipe.get("epochs"), "lr": recipe.get("lr"), "batch_size": recipe.get("batch_size"),
            "versions": meta.get("versions") or {}}


def _manifest(run: RunDir) -> dict | None:
    """Split sizes and the duplicate groups, or None when the run has no readable manifest."""
    from ..prepare.manifest import read_manifest, recorded_id_of

    if not storage.exists(run.manifest):
        return None
    try:
        table, source, classes = read_manifest(run)
    except (StorageError, OSError) as exc:
        log.warning("model card: manifest unreadable (%s)", storage.first_line(exc))
        return None
    rows = table.select(["label", "split", "status", "dup_group", "split_group", "group_reason"]).to_pylist()
    ok = [r for r in rows if r["status"] == schema.OK]
    sizes = {s: {c: sum(r["split"] == s and r["label"] == c for r in ok) for c in classes} for s in schema.SPLITS}
    splits_of: dict = {}
    for r in ok:
        if r["split_group"] is not None and r["split_group"] >= 0:
            splits_of.setdefault(r["split_group"], set()).add(r["split"])
    meta = table.schema.metadata or {}
    return {"source": source, "classes": classes, "id": recorded_id_of(table), "files": len(rows),
            "errors": len(rows) - len(ok), "sizes": sizes,
            "seed": meta.get(schema.META_SEED, b"?").decode(), "near_radius": meta.get(schema.META_NEAR_RADIUS, b"?").decode(),
            "exact_groups": len({r["dup_group"] for r in ok if r["dup_group"] is not None and r["dup_group"] >= 0}),
            "near_files": sum("near" in (r["group_reason"] or "") for r in ok),
            "split_groups": len(splits_of), "straddling": sum(len(s) > 1 for s in splits_of.values())}


# ---------------------------------------------------------------- the card

def render(facts: dict, name: str, version: str | None = None, license: str = "apache-2.0") -> str:
    """The whole card: front matter, then every section of SECTIONS in order."""
    body = [f"# {name}" + (f" (version {version})" if version else ""), ""]
    for title, lines in zip(SECTIONS, _sections(facts, version)):
        body += [f"## {title}", "", *lines, ""]
    return f"---\n{yaml.safe_dump(front_matter(facts, name, license), sort_keys=False)}---\n\n" + "\n".join(body)


def front_matter(facts: dict, name: str, license: str) -> dict:
    m = facts["metrics"]
    doc = {"license": license, "library_name": "timm", "pipeline_tag": "image-classification",
           "tags": ["image-classification", "medical-imaging", "haematology", "acute-lymphoblastic-leukemia",
                    "blood-smear", "ensemble", "selective-classification", "alle_dist", "not-a-medical-device"],
           "datasets": ["ALL image dataset (Aria et al., 2021), DOI 10.34740/KAGGLE/DSV/2175623"],
           "metrics": ["accuracy", "f1", "precision", "recall"]}
    if m:
        o = m["overall"]
        values = [("accuracy", o["accuracy"], "Accuracy (a referral counts as an error)"),
                  ("f1", o["f1"], "Macro F1"), ("precision", o["precision"], "Macro precision"),
                  ("recall", o["sensitivity"], "Macro sensitivity"), ("coverage", m["coverage"], "Coverage (not referred)"),
                  ("ece", m["ece"], "Expected calibration error (after temperature scaling)")]
        if m.get("accuracy_on_accepted") is not None:
            values.insert(1, ("accuracy", m["accuracy_on_accepted"], "Accuracy on accepted images"))
        doc["model-index"] = [{"name": name, "results": [{
            "task": {"type": "image-classification", "name": "ALL blood-smear classification with referral"},
            "dataset": {"type": "image-folder", "name": (facts["manifest"] or {}).get("source", "the run's data"),
                        "split": "test"},
            "metrics": [{"type": t, "value": round(float(v), 6), "name": n} for t, v, n in values]}]}]
    return doc


def _sections(f: dict, version: str | None) -> list[list[str]]:
    return [_details(f, version), _intended(), _out_of_scope(), _not_a_device(), _data(f), _duplicates(f),
            _metrics(f), _guarantees(f), _control(f), _baselines(f), _stress(f), _calibration(f),
            [f"- {x}" for x in LIMITATIONS] + ["", "More: docs/limitations.md."], _lineage(f)]


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.2f} %"


def _ci(k: int, n: int) -> str:
    """'97.50 % (95 % CI 93.1–99.3 %, k/n)': a proportion with its exact Clopper-Pearson interval."""
    if not n:
        return "– (n = 0)"
    lo, hi = binomial_interval(int(k), int(n), CONFIDENCE)
    return f"{_pct(k / n)} (95 % CI {100 * lo:.2f}–{100 * hi:.2f} %, {int(k)}/{int(n)})"


def _missing(what: str, how: str) -> list[str]:
    return [f"_Not available: {what}. {how}_"]


def _details(f: dict, version: str | None) -> list[str]:
    e = f["ensemble"]
    if not e:
        return _missing(f"no {RunDir.ENSEMBLE} in the run", "Run `alle-dist tune` first.")
    lines = [f"- Version: {version or 'not exported (the run directory itself)'}",
             f"- Task: four-class classification of peripheral-blood-smear images ({', '.join(e['classes'])}), "
             "with referral of uncertain or unfamiliar images to a haematologist.",
             f"- Ensemble: EP = argmax Σ wᵢ·pᵢ over temperature-scaled members; confident when the top score ≥ γ = "
             f"{e['gamma']:.4g}; weights {', '.join(f'{b} {w:.4g}' for b, w in zip(e['backbones'], e['weights']))}; "
             f"temperatures {', '.join(f'{t:.4g}' for t in e.get('temperatures') or [])}.",
             "", "| member | architecture | input | pretrained | epochs (best) | lr | batch | trained with |",
             "|---|---|---|---|---|---|---|---|"]
    for b, m in f["members"].items():
        seg = "HSV-segmented" if m["segmented"] else "original"
        v = ", ".join(f"{k} {x}" for k, x in m["versions"].items())
        d = {k: "–" if x is None else x for k, x in m.items()}
        lines.append(f"| {b} | {d['architecture']} | {d['image_size']} px, {seg} | {d['pretrained']} | "
                     f"{d['epochs']} ({d['best_epoch']}) | {d['lr']} | {d['batch_size']} | {v or '–'} |")
    return lines


def _intended() -> list[str]:
    return ["- Users: a machine-learning engineer in a haematology lab and the haematologists who review its output.",
            "- Use: triage and second reading of 224×224 smear fields of B-lineage lymphoblasts from the "
            "lab whose images trained it; every accepted label is a suggestion, every referred image goes to a human.",
            "- Research on ensembles, calibration and referral (selective classification)."]


def _out_of_scope() -> list[str]:
    return ["- Diagnosis or treatment decisions without a haematologist; screening of patients.",
            "- Images from another microscope, camera, stain or lab without re-tuning on labelled images "
            "from that setting (they are referred, not labelled).",
            "- Other leukaemias (T-ALL, AML, CLL), other white cells, bone-marrow aspirates, whole slides."]


def _not_a_device() -> list[str]:
    return ["**Not a medical device.** Research and engineering software, not cleared or approved by any "
            "regulator (FDA, CE/MDR). Its labels are suggestions for a haematologist, who makes every diagnosis."]


def _data(f: dict) -> list[str]:
    m = f["manifest"]
    head = [f"Method's dataset: {CITATION}."]
    if not m:
        return head + [""] + _missing("no manifest in this run or bundle",
                                      "Split sizes are in the run directory's manifest.parquet (`alle-dist prepare`).")
    lines = head + ["", f"This model's images: `{m['source']}` ({m['files']} files, {m['errors']} unreadable and left "
                    f"out; split seed {m['seed']}).", "", "| split | " + " | ".join(m["classes"]) + " | total |",
                    "|---|" + "---|" * (len(m["classes"]) + 1)]
    for s, counts in m["sizes"].items():
        lines.append(f"| {s} | " + " | ".join(str(counts[c]) for c in m["classes"]) + f" | {sum(counts.values())} |")
    return lines + ["", "Random oversampling of the minority classes applies to the training split only, after the split."]


def _duplicates(f: dict) -> list[str]:
    m = f["manifest"]
    if not m:
        return _missing("no manifest", "Duplicate groups are recorded by `alle-dist prepare`.")
    return [f"- Exact duplicates (identical sha256): {m['exact_groups']} groups.",
            f"- Perceptual near-duplicates (64-bit DCT hash, Hamming radius {m['near_radius']}): {m['near_files']} "
            "files in near-duplicate groups.",
            f"- Every group is a split unit: {m['split_groups']} groups, {m['straddling']} straddling a split "
            "(checked on the manifest). See docs/near-duplicates.md."]


def _metrics(f: dict) -> list[str]:
    m = f["metrics"]
    if not m:
        return _missing("evaluate was not run", "Run `alle-dist evaluate --run-dir RUN`, then export again.")
    pc, n = m["per_class"], m["n"]
    correct = sum(v["tp"] for v in pc.values())
    accepted = n - m["models"][ENSEMBLE]["n_referred"]
    lines = [f"Test split, n = {n}; 95 % exact (Clopper-Pearson) intervals. A referred image counts as an error "
             "in accuracy, as a false negative of its class and a true negative of the others.", "",
             f"- Accuracy: {_ci(correct, n)}",
             f"- Coverage (not referred): {_ci(accepted, n)}",
             f"- Accuracy on accepted images: {_ci(correct, accepted)}",
             f"- Macro F1: {m['overall']['f1']:.4f}; macro precision {m['overall']['precision']:.4f}; "
             f"macro sensitivity {m['overall']['sensitivity']:.4f}; macro specificity {m['overall']['specificity']:.4f}",
             "", "| class | support | sensitivity | specificity | precision |", "|---|---|---|---|---|"]
    for c, v in pc.items():
        lines.append(f"| {c} | {v['support']} | {_ci(v['tp'], v['tp'] + v['fn'])} | "
                     f"{_ci(v['tn'], v['tn'] + v['fp'])} | {_ci(v['tp'], v['tp'] + v['fp'])} |")
    return lines


def _guarantees(f: dict) -> list[str]:
    g = (f["ensemble"] or {}).get("guarantees")
    if not g:
        return _missing(f"{RunDir.ENSEMBLE} records no guarantees (tuned by an older alle_dist)",
                        "Rerun `alle-dist tune`.")
    img, gr = g.get("image_rule") or {}, g.get("gamma_rule") or {}
    sgr = gr.get("sgr") or {}
    first = ("off" if not img else "an uncalibrated quantile (no guarantee)" if img.get("method") == "quantile" else
             f"refers at most {_pct(img.get('alpha_bound'))} of new in-distribution images, with probability "
             f"≥ {g['confidence']} over its {img.get('n_val', '?')} + {img.get('n_oof', '?')} calibration images")
    whole = g["whole_rule_validation"]
    lines = [f"- Image-statistics rule: {first}.",
             f"- Whole rule on validation: {_pct(whole['rate'])} referred " + (
                 f"(≤ {_pct(whole['upper'])}; optimistic: fitted on these images)." if not too_few_for_a_bound(whole) else
                 f"of {whole['n']} images, too few for a bound (need ≥ {whole['n_required']}); the test split's "
                 "bound below is the valid one."),
             "- γ rule (SGR, Geifman & El-Yaniv 2017): " + (
                 f"error rate among accepted ≤ {_pct(sgr['risk_bound'])} at γ ≥ {sgr['threshold']:.4g} (coverage "
                 f"{_pct(sgr['coverage'])})" if sgr.get("feasible") else
                 f"no γ certifies an error rate ≤ {sgr.get('target_risk')} on validation") + "."]
    rows = (f["metrics"] or {}).get("guarantees") or []
    if rows:
        lines += ["", "Checked on the test split (exact one-sided upper bound at the same confidence):", "",
                  "| rule | bound (valid) | observed | upper bound from test | stated by tune | violated |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['name']} | {_pct(r.get('headline', r['test_upper']))} | {_pct(r['observed'])} of {r['n']} | "
                  f"{_pct(r['test_upper'])} | {_pct(r['bound'])} ({r['basis']}) | "
                  f"{'–' if r['violated'] is None else 'yes' if r['violated'] else 'no'} |" for r in rows]
    return lines + ["", "Assumptions: new images are exchangeable with the calibration images (same lab, scanner, "
                    "stain and population); a bound holds with the stated probability over the calibration draw, "
                    "not for every batch. See docs/referral-guarantees.md."]


def _control(f: dict) -> list[str]:
    c = (f["metrics"] or {}).get("control")
    if not c:
        return _missing("no shortcut control was trained" if f["metrics"] else "evaluate was not run",
                        "Train one with `alle-dist train --control background`, then evaluate.")
    return [f"{c['backbone']} trained on the fields with the cells removed: accuracy {_pct(c['accuracy'])}, chance "
            f"{_pct(c['chance'])}, the real {c['backbone']} {_pct(c['real_accuracy'])}. Reading: {c['reading']}."]


def _baselines(f: dict) -> list[str]:
    m = f["metrics"]
    if not m:
        return _missing("evaluate was not run", "Run `alle-dist evaluate`.")
    members = set((f["ensemble"] or {}).get("backbones", []))
    others = {k: v for k, v in m["models"].items() if k != ENSEMBLE and k not in members and RunDir.CONTROL not in k}
    rows = ["| model | accuracy | macro F1 |", "|---|---|---|"]
    rows += [f"| {k} (member) | {_pct(v['overall']['accuracy'])} | {v['overall']['f1']:.4f} |"
             for k, v in m["models"].items() if k in members]
    rows += [f"| {k} | {_pct(v['overall']['accuracy'])} | {v['overall']['f1']:.4f} |" for k, v in others.items()]
    note = [] if others else [""] + _missing("no baselines were trained", "`alle-dist train --backbone all` trains "
                                             "the paper's baselines (AlexNet, VGG-16, MobileNetV2).")
    return rows + note


def _stress(f: dict) -> list[str]:
    s = (f["metrics"] or {}).get("stress")
    if not s:
        return _missing("no stress results in this run", "Shift tests (stain, illumination, blur, compression) are "
                        "not part of this evaluation.")
    return [f"- {k}: {v}" for k, v in s.items()] if isinstance(s, dict) else [str(s)]


def _calibration(f: dict) -> list[str]:
    m = f["metrics"]
    if not m:
        return _missing("evaluate was not run", "Run `alle-dist evaluate`.")
    lines = ["Expected calibration error (15 bins, top-label) on the test split, before → after temperature scaling "
             "(temperatures fitted on validation):", ""]
    temps = dict(zip(m["ensemble"]["backbones"], m["ensemble"]["temperatures"]))
    for k, v in m["models"].items():
        t = f", T = {temps[k]:.4g}" if k in temps else ""
        lines.append(f"- {k}: {v['ece_before_temperature']:.4f} → {v['ece']:.4f}{t}")
    return lines


def _lineage(f: dict) -> list[str]:
    e, m = f["ensemble"] or {}, f["manifest"]
    lin = e.get("lineage") or {}
    lines = [f"- Manifest (split) it was tuned on: `{lin.get('manifest') or (m or {}).get('id') or '–'}`"]
    lines += [f"- {b} model id: `{mid}`" for b, mid in (lin.get("models") or {}).items()]
    ens = ((f["metrics"] or {}).get("lineage") or {}).get("ensemble")
    lines.append(f"- {RunDir.ENSEMBLE} sha256 (evaluated): `{ens or '– (evaluate not run)'}`")
    if f.get("model_sha256"):
        lines.append(f"- model_sha256 (every classification row): `{f['model_sha256']}`")
    return lines + ["", "What each hash covers: docs/lineage.md."]


def write(run_dir: str) -> str:
    """RUN/report/model_card.md from the run's files (evaluate, after metrics.json); returns its URI."""
    run = RunDir(run_dir)
    uri = run.report_file(RunDir.MODEL_CARD)
    storage.write_bytes(uri, render(gather(run_dir), run.root.rstrip("/").rsplit("/", 1)[-1]).encode())
    return uri
