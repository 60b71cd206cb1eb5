"""Label Studio's own exports (JSON and JSON_MIN, made by Label Studio 1.23.2: see
tests/fixtures/label_studio/README.md) read back by parse_export into the exact decision rows."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from alle_dist import schema
from alle_dist.review import decisions as D
from alle_dist.review import labelstudio as LS

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "label_studio"
SRC = "file:///work/lsrun/b1/src/"
BATCH = "20261203T164747Z-2cd791f7"
ODD = "%20%C3%A9%20%230%26x.jpg"           # " é #0&x.jpg", as the uri writes it
U1, U2 = "label-studio user 1", "label-studio user 2"
# (image below SRC, sha256, label, reviewer, note, decided_at), in the JSON export's order
ROWS = [
    (f"Early/WBC-Malignant-Early-001{ODD}", "1076d5c27a340ab4bc39dbc86c9ad72d325afee8756abb9a8d76333e5a5f1bf7",
     "Early", U1, "nucleus folded", "2026-12-03T16:50:00.507459"),
    ("Pre/WBC-Malignant-Pre-003.jpg", "8c7c9fb8627c6b43cb66cf03841dffebbddb607cac3b62f8da3dd52be2e998c5",
     "other cell type", U1, None, "2026-12-03T16:50:00.713893"),
    ("Pro/WBC-Malignant-Pro-004.jpg", "439f0c76809a997d986bc3d9f813c275286d93a37dc88dfbc209cdd4969fd24f",
     "unusable image", U1, "out of focus\nsecond line", "2026-12-03T16:50:00.874416"),
    (f"Pre/WBC-Malignant-Pre-001{ODD}", "041c58ee78df690b650a5cfc7377649e5a5ce47f2002fc3d13b5d0704112074d",
     "Pro", U2, None, "2026-12-03T16:50:01.283630"),
    (f"Pre/WBC-Malignant-Pre-001{ODD}", "041c58ee78df690b650a5cfc7377649e5a5ce47f2002fc3d13b5d0704112074d",
     "Pre", U1, "second opinion", "2026-12-03T16:50:02.590393"),
    (f"Benign/WBC-Benign-001{ODD}", "8054c1827a2be37668e640c5bf015ecb51fa14d0521dfa084ad9e1213025d12a",
     "Benign", U1, None, "2026-12-03T16:50:04.182300"),          # edited: updated_at, not created_at
    (f"Pro/WBC-Malignant-Pro-002{ODD}", "81fe374f373278d6376d07a1614f4a060a0e79a9c6c0c9879c831a4047b28cec",
     "Benign", U2, None, "2026-12-03T16:50:04.414250"),          # an empty note is no note
    ("Pro/WBC-Malignant-Pro-003.jpg", "26371b1d687fc32dc471a34c4a20bf07b1927b540e17ce9080a8e62f24bf16a7",
     "Pro", U1, "typed in the UI", "2026-12-03T16:57:10.406892"),
    ("Pre/WBC-Malignant-Pre-002.jpg", "093f6059624b509459be2da02f9176483bacce184c2cb730dadaef0518941dd0",
     "Pro", U1, "typed, no Enter", "2026-12-03T16:57:53.072736"),
]


def expected() -> list[dict]:
    return [{"uri": SRC + img, "sha256": sha, "label": label, "reviewer": who, "note": note,
             "decided_at": D.parse_time(at + "Z"), "batch_id": BATCH, "source": schema.LABEL_STUDIO}
            for img, sha, label, who, note, at in ROWS]


def read(fmt: str) -> tuple[list[dict], int]:
    name = f"project-2-{fmt}.json"
    return D.read(name, (FIXTURES / name).read_bytes())     # the importer's path: bytes → format → rows


def test_json_export_one_row_per_submitted_annotation_skipped_and_unannotated_tasks_undecided():
    rows, undecided = read("JSON")
    assert rows == expected()
    assert undecided == 2            # the skipped task (its only annotation was_cancelled) and the untouched one


def test_json_min_export_gives_the_same_rows_and_leaves_the_skipped_task_out():
    rows, undecided = read("JSON_MIN")
    key = lambda r: (r["uri"], r["decided_at"])
    assert sorted(rows, key=key) == sorted(expected(), key=key)
    assert undecided == 1            # Label Studio drops a task with only a skipped annotation from JSON_MIN


def test_every_decision_names_a_task_of_the_batch_and_the_vocabulary():
    tasks = json.loads((FIXTURES / "project-2-JSON.json").read_text())
    data = {t["data"]["uri"]: t["data"] for t in tasks}
    labels = schema.review_labels(["Benign", "Early", "Pre", "Pro"])
    for r in read("JSON")[0] + read("JSON_MIN")[0]:
        assert data[r["uri"]]["sha256"] == r["sha256"] and data[r["uri"]]["batch_id"] == r["batch_id"]
        assert D.normalise_label(r["label"], labels) is not None
        assert data[r["uri"]]["image"] == LS.image_url(r["uri"], "/work/lsrun/b1")


@pytest.mark.parametrize("annotator, reviewer", [(1, U1), ("7", "label-studio user 7"), ("h@lab.org", "h@lab.org"),
                                                 (None, "")])
def test_json_min_annotator_named_like_the_json_export(annotator, reviewer):
    row = {"uri": "file:///a.jpg", "sha256": "aa", "batch_id": "b", "decision": "Pro", "annotator": annotator,
           "updated_at": "2026-01-05T09:30:00Z"}
    assert LS.parse_export("min.json", [row])[0][0]["reviewer"] == reviewer


def test_json_min_export_of_a_project_nobody_labelled_is_all_undecided():
    rows = [{"image": "/data/local-files/?d=src/a.jpg", "uri": "file:///a.jpg", "id": 1, "annotator": None,
             "annotation_id": None, "created_at": None, "updated_at": None, "lead_time": None}]
    assert LS.parse_export("min.json", rows) == ([], 1)


def test_local_images_served_from_one_storage_below_the_document_root():
    uris = ["file:///data/x/Pre/1.jpg", "file:///data/x/Pro/2%20b.jpg", "s3://bucket/k/3.jpg"]
    roots = LS.local_roots(uris)
    # Label Studio 1.23 refuses a Local Files storage at LOCAL_FILES_DOCUMENT_ROOT itself
    assert roots == {"document_root": "/data", "storage_path": "/data/x"}
    assert [LS.image_url(u, roots["document_root"]) for u in uris] == \
        ["/data/local-files/?d=x/Pre/1.jpg", "/data/local-files/?d=x/Pro/2%20b.jpg", "s3://bucket/k/3.jpg"]
    assert LS.local_roots(["s3://bucket/k/3.jpg"]) == {"document_root": None, "storage_path": None}
