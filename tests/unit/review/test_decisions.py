"""Decisions files (pure): the page's CSV and Label Studio's exports read into one row shape, whole-file
problems as one UsageError line, each row's refusal reason, the latest decision per key, and what
recording a decision over the recorded one does."""
from __future__ import annotations

import datetime as dt
import json
import re

import pytest

from alle_dist import schema
from alle_dist.errors import UsageError
from alle_dist.review import decisions as D
from alle_dist.review import labelstudio as LS

T = dt.datetime(2026, 1, 5, 9, 30, tzinfo=dt.timezone.utc)
BATCH = {"batch_id": "b1", "classes": ["Benign", "Early", "Pre", "Pro"]}
ITEMS = {("file:///a.jpg", "aa"): {}}


def csv_text(*rows) -> bytes:
    head = ",".join(D.PAGE_COLUMNS)
    return ("\n".join([head, *(",".join(r) for r in rows)]) + "\n").encode()


def test_the_pages_csv_reads_with_aware_times_and_empty_notes_as_null():
    rows, undecided = D.read("d.csv", csv_text(["file:///a.jpg", "aa", "Pre", "Dr A", "", "2026-01-05T09:30:00.000Z", "b1"]))
    assert undecided == 0 and rows == [{"uri": "file:///a.jpg", "sha256": "aa", "label": "Pre", "reviewer": "Dr A",
                                        "note": None, "decided_at": T, "batch_id": "b1", "source": schema.PAGE}]
    assert D.parse_time("2026-01-05T10:30:00+01:00") == T and D.parse_time("2026-01-05T09:30:00") == T
    assert D.parse_time("last tuesday") is None


@pytest.mark.parametrize("data, words", [(b"\xff\xfe\x00bin", "not a text file"), (b"uri,label\nx,y\n", "no column(s)"),
                                         (b"[{\"x\": 1}]", "without Label Studio"), (b"{bad json", "not valid JSON"),
                                         (b"\"just a string\"", "not a decisions file"),
                                         (b"{\"tasks\": 3}", "without Label Studio")])
def test_a_file_that_is_no_decisions_file_is_one_usage_error(data, words):
    with pytest.raises(UsageError, match=re.escape(words)):
        D.read("f", data)


def ok_row(**over) -> dict:
    return {"uri": "file:///a.jpg", "sha256": "aa", "label": "Pre", "reviewer": "Dr A", "note": None,
            "decided_at": T, "batch_id": "b1", "source": schema.PAGE, **over}


@pytest.mark.parametrize("over, batch, current, why", [
    ({}, BATCH, "aa", None),
    ({"label": "other cell type"}, BATCH, "aa", None),                       # the words of a review label
    ({"reviewer": ""}, BATCH, "aa", "incomplete"),
    ({"decided_at": "noon"}, BATCH, "aa", "bad_time"),
    ({}, None, "aa", "other_table"),
    ({}, BATCH, None, "unknown_uri"),
    ({"sha256": "bb"}, BATCH, "bb", "not_in_batch"),
    ({}, BATCH, "cc", "bytes_changed"),
    ({"label": "Blast"}, BATCH, "aa", "bad_label"),
    ({"label": "refer"}, BATCH, "aa", "bad_label"),
])
def test_each_refusal_reason(over, batch, current, why):
    assert D.refusal(ok_row(**over), batch, ITEMS, current) == why
    assert why is None or why in D.REFUSALS


def test_labels_are_tokens_or_their_words():
    vocab = schema.review_labels(BATCH["classes"])
    assert [D.normalise_label(x, vocab) for x in ("Pre", "other_cell", "other cell type", "unusable image", "pre")] == \
        ["Pre", "other_cell", "other_cell", "unusable", None]


def test_latest_decision_per_key_and_outcome_against_the_recorded_one():
    later = ok_row(label="Pro", decided_at=T + dt.timedelta(hours=1))
    rows, superseded = D.latest_per_key([later, ok_row(), ok_row(uri="file:///b.jpg")])
    assert superseded == 1 and {r["uri"]: r["label"] for r in rows} == {"file:///a.jpg": "Pro", "file:///b.jpg": "Pre"}
    assert D.outcome(ok_row(), None) == D.NEW
    assert D.outcome(ok_row(source=schema.LABEL_STUDIO), ok_row()) == D.UNCHANGED     # the same decision, re-read
    assert D.outcome(later, ok_row()) == D.CHANGED and D.outcome(ok_row(), later) == D.OLDER
    assert D.outcome(ok_row(note="two cells"), ok_row()) == D.CHANGED               # same time, a note added


def ls_task(**ann) -> dict:
    base = {"completed_by": 3, "was_cancelled": False, "updated_at": "2026-01-05T09:30:00.000000Z",
            "result": [{"type": "choices", "from_name": "decision", "to_name": "image", "value": {"choices": ["Pro"]}}]}
    return {"id": 1, "data": {"image": "/data/local-files/?d=a.jpg", "uri": "file:///a.jpg", "sha256": "aa",
                              "batch_id": "b1", "kind": "audit", "info": ""}, "annotations": [{**base, **ann}]}


def test_label_studio_json_export_each_annotation_a_decision_cancelled_ones_skipped():
    doc = [ls_task(), ls_task(was_cancelled=True), {**ls_task(), "annotations": []},
           ls_task(completed_by={"id": 4, "email": "h@lab.org"}, result=[
               {"type": "choices", "from_name": "decision", "value": {"choices": ["unusable image"]}},
               {"type": "textarea", "from_name": "note", "value": {"text": ["blurred", "no cell"]}}])]
    rows, undecided = D.read("export.json", json.dumps(doc).encode())
    assert undecided == 2 and len(rows) == 2
    assert rows[0] == ok_row(label="Pro", reviewer="label-studio user 3", source=schema.LABEL_STUDIO)
    assert rows[1]["label"] == "unusable image" and rows[1]["reviewer"] == "h@lab.org" and rows[1]["note"] == "blurred no cell"


def test_labelling_config_is_xml_with_the_vocabulary_and_local_images_below_one_root():
    import xml.etree.ElementTree as ET

    labels = list(schema.review_labels(["A&B", "Pre"]))
    cfg = ET.fromstring(LS.config_xml(labels))
    assert [c.get("value") for c in cfg.iter("Choice")] == ["A&B", "Pre", "other cell type", "unusable image"]
    assert cfg.find("Choices").get("toName") == cfg.find("Image").get("name") == "image"
    uris = ["file:///data/x/Pre/1.jpg", "file:///data/x/Pro/2%20b.jpg", "s3://bucket/k/3.jpg"]
    root = LS.local_roots(uris)["document_root"]
    assert root == "/data"
    assert [t["data"]["image"] for t in LS.tasks([{"uri": u, "sha256": "s", "kind": "audit"} for u in uris], "b", root)] \
        == ["/data/local-files/?d=x/Pre/1.jpg", "/data/local-files/?d=x/Pro/2%20b.jpg", "s3://bucket/k/3.jpg"]
