"""Test helpers of the review loop: a real classification table (the classify stage on real Ray over
images with helpers_run's tiny models), γ set so that about half the images are referred, and a
simulated reviewer who writes the CSV the review page exports."""
from __future__ import annotations

import csv
import datetime as dt
import json
from pathlib import Path

import numpy as np

from helpers_run import make_run_dir, write_images

PAGE_COLUMNS = ("uri", "sha256", "label", "reviewer", "note", "decided_at", "batch_id")


def confidences(run_dir: str, src: str) -> np.ndarray:
    """The ensemble's confidence on every image of src, Ray-free (classify's own core, in one process)."""
    import pyarrow as pa
    from alle_dist.classify import pipeline, planning, resolve
    from alle_dist.classify.listing import list_inputs
    from alle_dist.config import JobConfig
    from alle_dist.models import inference

    listed = pa.concat_tables(list(list_inputs(src)))
    rows = planning.plan_chunk(listed, planning.empty_index(False), False).todo
    models = resolve.resolve_models(run_dir)
    out = pipeline.Classifier(models, "probe")(inference.read_batch(rows, resolve.read_spec(models, JobConfig())))
    return np.array([c for c in out.column("confidence").to_pylist() if c is not None])


def set_gamma(run_dir: str, gamma: float) -> None:
    """Rewrite RUN/ensemble.json with another γ (lineage kept)."""
    from alle_dist.ensemble import weighted
    from alle_dist.io import storage
    from alle_dist.rundir import RunDir

    doc = storage.read_json(RunDir(run_dir).ensemble)
    spec = weighted.load_spec(run_dir)
    extra = {k: v for k, v in doc.items() if k not in weighted.spec_doc(spec)}
    weighted.save_spec(run_dir, weighted.EnsembleSpec(**{**weighted.spec_doc(spec), "gamma": gamma}), **extra)


def half_referred(run_dir: str, src: str) -> float:
    """γ at the median confidence: about half of src's images referred, the rest accepted."""
    gamma = float(np.median(confidences(run_dir, src)))
    set_gamma(run_dir, gamma)
    return gamma


def classify(run_dir: str, src: str, dst: str, *extra: str) -> int:
    from alle_dist.cli import main

    return main(["classify", "--run-dir", str(run_dir), "--input", str(src), "--output", str(dst),
                 "--batch-size", "8", "--cpu-workers", "1", *extra])


def classified_table(tmp: Path, n: int = 24, size: int = 64, **run_kwargs) -> dict:
    """RUN (tiny untrained models), SRC (n smear images in class folders) and DST classified by the
    real classify stage, about half of it referred. Needs the ray_local fixture."""
    run = make_run_dir(tmp / "run", **run_kwargs)
    src = tmp / "src"
    write_images(src, n, size=size)
    half_referred(str(run), str(src))
    assert classify(run, src, tmp / "dst") == 0
    return {"run": str(run), "src": str(src), "dst": str(tmp / "dst")}


def batch(out_dir) -> dict:
    return json.loads((Path(out_dir) / "batch.json").read_text())


def truth_from_folder(item: dict) -> str:
    """The simulated reviewer: the class folder the image lies in."""
    return item["path"].replace("\\", "/").split("/")[-2]


def decisions_csv(path: Path, doc: dict, label=truth_from_folder, reviewer: str = "Dr Sim",
                  when: str = "2026-01-05T09:30:00.000Z", extra: list[dict] = ()) -> Path:
    """The CSV review.html exports, filled by a simulated reviewer (`label(item)`), plus raw `extra` rows."""
    rows = [{"uri": it["uri"], "sha256": it["sha256"], "label": label(it), "reviewer": reviewer, "note": "",
             "decided_at": when, "batch_id": doc["batch_id"]} for it in doc["items"]]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, PAGE_COLUMNS, quoting=csv.QUOTE_ALL)
        w.writeheader()
        w.writerows([*rows, *extra])
    return path


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()


def row(item: dict, label: str | None = None, batch_id: str | None = None) -> dict:
    """One CSV row for a batch item (the simulated reviewer's)."""
    return {"uri": item["uri"], "sha256": item["sha256"], "label": label or truth_from_folder(item),
            "reviewer": "Dr Sim", "note": "", "decided_at": "2026-01-05T09:30:00.000Z", "batch_id": batch_id}
