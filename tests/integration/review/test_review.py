"""review build and review import on a real classification table (the classify stage on real Ray):
what a batch holds and refuses, the decisions that come back and every way they can be wrong (bytes
changed since the batch, an unknown uri, a label outside the vocabulary, another table's file, a
file that is no decisions file), re-import without a new version, a changed decision, two imports at
once in two processes, and the Label Studio export read back."""
from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from deltalake import DeltaTable

import helpers_review as H
from alle_dist import schema
from alle_dist.cli import main
from alle_dist.tables import SideDir
from helpers_run import make_run_dir

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def table(tmp_path_factory, ray_local_module):
    return H.classified_table(tmp_path_factory.mktemp("review"), n=32)


@pytest.fixture(scope="module")
def ray_local_module():
    import ray
    from alle_dist.runtime import init_ray

    if not ray.is_initialized():
        init_ray(num_cpus=4)
    yield ray


def build(table, out, *extra) -> int:
    return main(["review", "build", "--table", table["dst"], "--output", str(out), *map(str, extra)])


def reviews(dst) -> DeltaTable:
    return DeltaTable(SideDir(dst).reviews)


def import_(table, *files) -> int:
    return main(["review", "import", "--table", table["dst"], "--decisions", *map(str, files)])


def test_build_picks_every_referred_image_and_a_stratified_blind_audit(table, tmp_path, capsys):
    assert build(table, tmp_path / "b", "--audit", 5, "--seed", 11) == 0
    doc = H.batch(tmp_path / "b")
    rows = DeltaTable(table["dst"]).to_pyarrow_table(columns=["uri", "refer", "label", "sha256"]).to_pylist()
    referred = {r["uri"] for r in rows if r["refer"]}
    kinds = {it["uri"]: it["kind"] for it in doc["items"]}
    assert {u for u, k in kinds.items() if k == "referred"} == referred and 0 < len(referred) < len(rows)
    audit = [it for it in doc["items"] if it["kind"] == "audit"]
    assert len(audit) == 5 and all(it["model_label"] in doc["classes"] for it in audit)
    assert doc["seed"] == 11 and doc["table_version"] == DeltaTable(table["dst"]).version()
    assert doc["selection"]["audit_by_class"] == {c: sum(it["model_label"] == c for it in audit) for c in doc["classes"]
                                                  if any(it["model_label"] == c for it in audit)}
    # the same version and seed draw the same sample; the batch is stored under DST for import
    assert build(table, tmp_path / "again", "--audit", 5, "--seed", 11) == 0
    assert {it["uri"] for it in H.batch(tmp_path / "again")["items"]} == set(kinds)
    assert json.loads(Path(SideDir(table["dst"]).batch(doc["batch_id"])).read_text())["items"] == doc["items"]
    # Label Studio: one task per item, the labelling config names the vocabulary with hotkeys
    tasks = json.loads((tmp_path / "b" / "label_studio" / "tasks.json").read_text())
    assert [t["data"]["uri"] for t in tasks] == [it["uri"] for it in doc["items"]]
    assert all(t["data"]["info"] == "" for t in tasks if t["data"]["kind"] == "audit")   # blind there too
    assert all(t["data"]["image"].startswith("/data/local-files/?d=") for t in tasks)
    cfg = ET.fromstring((tmp_path / "b" / "label_studio" / "labeling_config.xml").read_text())
    choices = [(c.get("value"), c.get("hotkey")) for c in cfg.iter("Choice")]
    assert choices == [*[(c, str(i + 1)) for i, c in enumerate(doc["classes"])], ("other cell type", "5"),
                       ("unusable image", "6")]
    out = capsys.readouterr().out
    assert "referred (of" in out and "audit (of" in out


def test_build_refuses_models_the_table_was_not_classified_with(table, tmp_path, capsys):
    other = make_run_dir(tmp_path / "other", seed=3)
    assert build(table, tmp_path / "b", "--run-dir", other) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "are not the ones" in err[0] and "give --run-dir" in err[0]
    assert main(["review", "build", "--table", str(tmp_path), "--output", str(tmp_path / "x")]) == 2
    assert "not a classification table of alle_dist" in capsys.readouterr().err


def test_import_refuses_bad_rows_one_by_one_and_counts_them(table, tmp_path, capsys):
    assert build(table, tmp_path / "b", "--audit", 3, "--seed", 2) == 0
    doc = H.batch(tmp_path / "b")
    first = doc["items"][0]
    bad = [{**H.row(first), "uri": "file:///nowhere/x.jpg"},                       # unknown uri
           {**H.row(first), "label": "Blast"},                                      # outside the vocabulary
           {**H.row(first), "batch_id": "20200101T000000Z-0123abcd"},               # another table's batch
           {**H.row(first), "decided_at": "yesterday"},                             # not a time
           {**H.row(first), "reviewer": ""}]                                        # unsigned
    f = H.decisions_csv(tmp_path / "d.csv", doc, extra=[{**r, "batch_id": r["batch_id"] or doc["batch_id"]}
                                                        for r in bad])
    capsys.readouterr()
    assert import_(table, f) == 0
    line = capsys.readouterr().out.strip()
    assert f"{len(doc['items'])} recorded ({len(doc['items'])} new, 0 changed)" in line
    for words in ("1 uri not in the table", "1 label outside the vocabulary", "1 batch not from this table",
                  "1 decided_at not an ISO 8601 time", "1 a required field empty"):
        assert words in line, line
    t = reviews(table["dst"])
    got = {r["uri"]: r for r in t.to_pyarrow_table().to_pylist()}
    assert set(got) >= {it["uri"] for it in doc["items"]}
    mine = got[first["uri"]]
    assert mine["kind"] == first["kind"] and mine["model_label"] == first["model_label"]
    assert mine["source"] == schema.PAGE and mine["reviewer"] == "Dr Sim"
    # re-importing the same file changes nothing: no new version
    version = t.version()
    assert import_(table, f) == 0
    assert "nothing new: no commit" in capsys.readouterr().out and reviews(table["dst"]).version() == version


def test_whole_file_problems_are_one_line_exit_2(table, tmp_path, capsys):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x89PNG\r\n\x00\xff")
    no_cols = tmp_path / "cols.csv"
    no_cols.write_text("uri,label\nfile:///x.jpg,Pre\n")
    not_ls = tmp_path / "x.json"
    not_ls.write_text('[{"a": 1}]')
    for f, words in ((junk, "not a text file"), (no_cols, "no column(s) sha256"), (not_ls, "without Label Studio"),
                     (tmp_path / "missing.csv", "no such decisions file")):
        assert import_(table, f) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err


def test_a_later_different_decision_wins_and_the_old_one_stays_in_history(table, tmp_path, capsys):
    assert build(table, tmp_path / "b", "--audit", 2, "--limit", 0) == 0
    doc = H.batch(tmp_path / "b")
    first = H.decisions_csv(tmp_path / "1.csv", doc, label=lambda it: "Pre", when="2026-02-01T10:00:00Z")
    later = H.decisions_csv(tmp_path / "2.csv", doc, label=lambda it: "unusable image", when="2026-02-02T10:00:00Z")
    older = H.decisions_csv(tmp_path / "0.csv", doc, label=lambda it: "Early", when="2026-01-01T10:00:00Z")
    assert import_(table, first) == 0 and import_(table, later) == 0 and import_(table, older) == 0
    out = [line for line in capsys.readouterr().out.splitlines() if line.startswith("review import")]
    assert "(2 new, 0 changed)" in out[0] and "(0 new, 2 changed)" in out[1]
    assert "2 older than the recorded decision (kept)" in out[2]
    t = reviews(table["dst"])
    now = {r["uri"]: r["label"] for r in t.to_pyarrow_table().to_pylist()}
    assert all(now[it["uri"]] == schema.UNUSABLE for it in doc["items"])
    t.load_as_version(t.version() - 1)
    assert all(r["label"] == "Pre" for r in t.to_pyarrow_table().to_pylist() if r["uri"] in now
               and r["batch_id"] == doc["batch_id"])


def test_bytes_changed_since_the_batch_are_refused(table, tmp_path, capsys):
    assert build(table, tmp_path / "b", "--audit", 3, "--limit", 0) == 0
    doc = H.batch(tmp_path / "b")
    changed = doc["items"][0]
    path = Path(changed["path"])
    original = path.read_bytes()
    try:
        path.write_bytes(original + b"\x00")            # the same picture, other bytes: reclassified
        assert H.classify(table["run"], table["src"], table["dst"], "--trust-size") == 0   # reads the changed file only
        f = H.decisions_csv(tmp_path / "d.csv", doc)
        capsys.readouterr()
        assert import_(table, f) == 0
        line = capsys.readouterr().out
        assert "1 bytes changed since the batch" in line and "2 recorded" in line
    finally:
        path.write_bytes(original)
        assert H.classify(table["run"], table["src"], table["dst"], "--trust-size") == 0


def test_two_imports_at_once_lose_nothing(table, tmp_path):
    assert build(table, tmp_path / "b", "--audit", 4, "--seed", 9, "--limit", 0) == 0
    doc = H.batch(tmp_path / "b")
    half = len(doc["items"]) // 2
    files = []
    for i, part in enumerate((doc["items"][:half], doc["items"][half:])):
        files.append(H.decisions_csv(tmp_path / f"{i}.csv", {**doc, "items": part}, reviewer=f"Dr {i}",
                                     when="2026-03-01T08:00:00Z"))
    cmd = [str(ROOT / ".venv" / "bin" / "alle-dist"), "review", "import", "--table", table["dst"], "--decisions"]
    procs = [subprocess.Popen([*cmd, str(f)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for f in files]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    got = {r["uri"]: r["reviewer"] for r in reviews(table["dst"]).to_pyarrow_table().to_pylist()
           if r["batch_id"] == doc["batch_id"]}
    assert got == {it["uri"]: f"Dr {0 if k < half else 1}" for k, it in enumerate(doc["items"])}


def test_label_studio_export_round_trip(table, tmp_path, capsys):
    """The tasks build wrote, annotated as Label Studio exports them (JSON and JSON_MIN formats, per its
    documented export format: annotations → result → choices / textarea), read back by import."""
    assert build(table, tmp_path / "b", "--audit", 3, "--seed", 4, "--limit", 0) == 0
    doc = H.batch(tmp_path / "b")
    tasks = json.loads((tmp_path / "b" / "label_studio" / "tasks.json").read_text())
    truth = {it["uri"]: H.truth_from_folder(it) for it in doc["items"]}
    export = []
    for i, t in enumerate(tasks):
        ann = {"id": 100 + i, "completed_by": 7, "was_cancelled": False, "created_at": "2026-04-01T10:00:00.000000Z",
               "updated_at": "2026-04-01T10:05:00.000000Z", "result": [
                   {"id": f"r{i}", "type": "choices", "from_name": "decision", "to_name": "image", "origin": "manual",
                    "value": {"choices": ["other cell type" if i == 0 else truth[t["data"]["uri"]]]}},
                   {"id": f"n{i}", "type": "textarea", "from_name": "note", "to_name": "image",
                    "value": {"text": ["two cells"]}}]}
        export.append({"id": i + 1, "data": t["data"], "annotations": [ann] if i < len(tasks) - 1 else [],
                       "predictions": []})
    f = tmp_path / "project-1-at-2026.json"
    f.write_text(json.dumps(export))
    capsys.readouterr()
    assert import_(table, f) == 0
    line = capsys.readouterr().out
    assert f"{len(tasks) - 1} recorded" in line and "1 task(s) undecided" in line
    got = {r["uri"]: r for r in reviews(table["dst"]).to_pyarrow_table().to_pylist() if r["batch_id"] == doc["batch_id"]}
    first = tasks[0]["data"]["uri"]
    assert got[first]["label"] == schema.OTHER_CELL and got[first]["source"] == schema.LABEL_STUDIO
    assert got[first]["reviewer"] == "label-studio user 7" and got[first]["note"] == "two cells"
    assert all(got[u]["label"] == truth[u] for u in got if u != first)
    # JSON_MIN: flat rows, the choice under the control's name
    mini = [{**t["data"], "id": 1, "decision": "unusable image", "annotator": "h@lab.org",
             "updated_at": "2026-04-02T10:00:00Z"} for t in tasks[:1]]
    (tmp_path / "min.json").write_text(json.dumps(mini))
    assert import_(table, tmp_path / "min.json") == 0
    assert reviews(table["dst"]).to_pyarrow_table().to_pylist() and any(
        r["uri"] == first and r["label"] == schema.UNUSABLE and r["reviewer"] == "h@lab.org"
        for r in reviews(table["dst"]).to_pyarrow_table().to_pylist())


def test_ray_jobs_review_entrypoint_runs_the_same_stage(table, tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "ray_jobs" / "review.py"), "build", "--table", table["dst"],
                          "--output", str(tmp_path / "b"), "--audit", "1", "--limit", "1"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("review build: ")
