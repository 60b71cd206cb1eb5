"""The Label Studio round trip against a real Label Studio (docs/review.md, "Label Studio"): a batch
`review build` wrote from real images, a Label Studio started with the batch's document root, a project
with the batch's labelling config (Label Studio validates it), a Local Files storage at its storage path,
tasks.json imported, every image served through /data/local-files/, annotations posted as Label
Studio's UI posts them (choices, notes, an edit, a skip, a second annotator's view untouched), the
project exported as JSON and JSON_MIN, and both read by `alle-dist review import` into the exact rows.

Needs a `label-studio` executable in its own virtualenv (env LABEL_STUDIO_BIN, else PATH): skipped
without one (CI). Its first start migrates a fresh database: minutes.
"""
from __future__ import annotations

import json
import shutil
import socket
import urllib.parse
from pathlib import Path

import pytest
from deltalake import DeltaTable

import helpers_label_studio as L
import helpers_review as H
from alle_dist import schema
from alle_dist.cli import main
from alle_dist.review.decisions import parse_time
from alle_dist.tables import SideDir
from helpers_run import CLASSES, make_run_dir

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.timeout(1800)]
ODD = " é #{}&x.jpg"          # a name to quote in the task's URL


@pytest.fixture
def label_studio_bin():
    exe = L.find_bin()
    if not exe:
        pytest.skip("no label-studio executable (set LABEL_STUDIO_BIN or put label-studio on PATH; install it "
                    "in its own virtualenv: python3 -m venv V && V/bin/pip install label-studio)")
    return exe


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _images(leukemia_dir: Path, src: Path, per_class: int = 2) -> None:
    for c in CLASSES:
        (src / c).mkdir(parents=True)
        for j, f in enumerate(sorted((leukemia_dir / "Original" / c).glob("*.jpg"))[:per_class]):
            shutil.copy(f, src / c / (f.stem + ODD.format(j) if j == 0 else f.name))


def _served(client: L.Client, tasks: list[dict], root: str) -> None:
    for t in tasks:
        status, data = client.raw("GET", t["data"]["image"])
        rel = urllib.parse.parse_qs(urllib.parse.urlsplit(t["data"]["image"]).query)["d"][0]
        assert status == 200 and data == (Path(root) / rel).read_bytes(), (status, t["data"]["image"])


def _annotate(client: L.Client, project: int, tasks: list[dict], user: str) -> dict:
    """Decisions on all but the last two tasks (one of those skipped); the expected rows by uri."""
    want = {}
    for i, t in enumerate(tasks[:-2]):
        truth = H.truth_from_folder({"path": urllib.parse.unquote(t["data"]["uri"])})
        label = {0: "other cell type", 1: "unusable image"}.get(i, truth)
        note = {0: "two cells", 2: "nucleus folded"}.get(i)
        ann = L.annotate(client, project, t["id"], L.ui_result(label, note))
        if i == 3:                               # changed their mind: the edit's time and label count
            label = "Pre" if truth != "Pre" else "Pro"
            ann = client.api("PATCH", f"/api/annotations/{ann['id']}", {"result": L.ui_result(label), "lead_time": 7.0})
        token = {"other cell type": schema.OTHER_CELL, "unusable image": schema.UNUSABLE}.get(label, label)
        want[t["data"]["uri"]] = {"sha256": t["data"]["sha256"], "batch_id": t["data"]["batch_id"], "label": token,
                                  "reviewer": user, "note": note, "decided_at": parse_time(ann["updated_at"])}
    L.annotate(client, project, tasks[-2]["id"], [], cancelled=True)
    return want


def _recorded(dst: str, batch_id: str) -> dict:
    rows = DeltaTable(SideDir(dst).reviews).to_pyarrow_table().to_pylist()
    keys = ("sha256", "batch_id", "label", "reviewer", "note", "decided_at")
    return {r["uri"]: {k: r[k] for k in keys} for r in rows
            if r["batch_id"] == batch_id and r["source"] == schema.LABEL_STUDIO}


def test_review_batch_through_a_real_label_studio(label_studio_bin, leukemia_dir, ray_local, tmp_path, capsys):
    src = tmp_path / "images" / "src"
    _images(leukemia_dir, src)
    (tmp_path / "ls").mkdir()
    server = L.Server(label_studio_bin, tmp_path / "ls", str(src.parent), _free_port())   # starts while we classify
    try:
        run = make_run_dir(tmp_path / "run", image_size=32)
        H.half_referred(str(run), str(src))
        assert H.classify(run, src, tmp_path / "dst") == 0
        assert main(["review", "build", "--table", str(tmp_path / "dst"), "--output", str(tmp_path / "b"),
                     "--audit", "3", "--seed", "2"]) == 0
        doc = H.batch(tmp_path / "b")
        assert doc["label_studio"] == {"document_root": str(src.parent), "storage_path": str(src)}

        client = server.wait()
        project, tasks = L.set_up_batch(client, tmp_path / "b")      # the config is validated here
        assert [t["data"]["uri"] for t in tasks] == [it["uri"] for it in doc["items"]]
        _served(client, tasks, doc["label_studio"]["document_root"])
        user = f"label-studio user {client.api('GET', '/api/current-user/whoami')['id']}"
        want = _annotate(client, project, tasks, user)
        for fmt in ("JSON", "JSON_MIN"):
            (tmp_path / f"{fmt}.json").write_bytes(L.export(client, project, fmt))
    finally:
        server.stop()

    capsys.readouterr()
    dst = str(tmp_path / "dst")
    assert main(["review", "import", "--table", dst, "--decisions", str(tmp_path / "JSON.json")]) == 0
    line = capsys.readouterr().out
    assert f"{len(want)} recorded ({len(want)} new, 0 changed)" in line and "0 refused" in line, line
    assert "2 task(s) undecided" in line, line                   # the skipped task and the untouched one
    assert _recorded(dst, doc["batch_id"]) == want
    # JSON_MIN: the same decisions (nothing new, no commit); the skipped task is not in it
    assert main(["review", "import", "--table", dst, "--decisions", str(tmp_path / "JSON_MIN.json")]) == 0
    line = capsys.readouterr().out
    assert f"0 recorded (0 new, 0 changed); {len(want)} already recorded" in line, line
    assert "1 task(s) undecided" in line, line
    assert _recorded(dst, doc["batch_id"]) == want
    assert json.loads((tmp_path / "JSON.json").read_text())[0]["data"]["batch_id"] == doc["batch_id"]
