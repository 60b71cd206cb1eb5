"""A review batch as Label Studio image-classification tasks, and Label Studio's export read back.

Tasks (Label Studio's task JSON: a list of {"data": {...}}): `image` (what Label Studio shows), and
uri, sha256, batch_id, kind, which Label Studio keeps with the task and exports again, so a decision
comes back tied to the exact bytes and batch. `info` holds the model's answer for referred images
and is empty for audit images (no anchoring). The labelling config: an <Image>, a <Text> for
`info`, <Choices name="decision"> with the review vocabulary (hotkeys 1-9) and a <TextArea
name="note">.

Where `image` points (Label Studio fetches it, not alle_dist):
- s3://bucket/key as is: add the bucket as the project's Source Cloud Storage (S3, "Use pre-signed
  URLs" on, *not* "Treat every bucket object as a source file"); Label Studio then serves each
  task's s3:// URI as a pre-signed URL;
- a local file: /data/local-files/?d=<path below the batch's document root>. Start Label Studio with
  LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true and LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=<root>
  and add a Local Files source storage at <storage_path> (without syncing it); the batch manifest
  records both (label_studio.document_root / storage_path, see local_roots).

The export read back (`parse_export`): Label Studio's "JSON" export (tasks with `annotations`: each
non-cancelled annotation is one decision, its `choices` result the label, its `textarea` result the
note, `updated_at` the time, `completed_by` the reviewer) and its "JSON_MIN" export (one flat row per
annotation with `decision`, `note`, `annotator`, `updated_at`; a task without annotations is one row
without `decision`; a task whose only annotation was skipped is left out). Checked against the
exports of Label Studio 1.23.2 (tests/fixtures/label_studio).
"""
from __future__ import annotations

import os
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

from .. import schema
from ..errors import UsageError
from ..io import storage

CHOICES, NOTE, IMAGE, INFO = "decision", "note", "image", "info"
LOCAL_PREFIX = "/data/local-files/?d="


def words(label: str) -> str:
    """What a review label reads as (a class as itself)."""
    return schema.REVIEW_EXTRA_LABELS.get(label, label)


def config_xml(labels: list[str]) -> str:
    """The project's labelling config (Settings → Labeling Interface → Code)."""
    choices = "\n".join(f'    <Choice value={quoteattr(words(lab))}{f" hotkey={quoteattr(str(i + 1))}" if i < 9 else ""}/>'
                        for i, lab in enumerate(labels))
    return (f'<View>\n  <Image name="{IMAGE}" value="${IMAGE}" zoom="true" zoomControl="true"/>\n'
            f'  <Text name="{INFO}" value="${INFO}"/>\n'
            f'  <Choices name="{CHOICES}" toName="{IMAGE}" choice="single-radio" showInline="true" required="true">\n'
            f'{choices}\n  </Choices>\n'
            f'  <TextArea name="{NOTE}" toName="{IMAGE}" placeholder="note (optional)" maxSubmissions="1" '
            'editable="true"/>\n</View>\n')


def local_roots(uris: list[str]) -> dict:
    """Where Label Studio serves the batch's local images from (both None without local images):
    `storage_path`, the deepest folder holding every image, is the project's Local Files storage, and
    `document_root`, its parent, is LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT. Label Studio (1.23) refuses
    a storage *at* the document root ("cannot be the same as LOCAL_FILES_DOCUMENT_ROOT") and serves a
    file only below a storage of the project, hence the two levels. Images spread over / have no
    single storage: their root is / and the user adds one storage per top folder."""
    paths = [storage.from_uri(u) for u in uris if not storage.is_s3(u)]
    if not paths:
        return {"document_root": None, "storage_path": None}
    common = os.path.commonpath([os.path.dirname(p) for p in paths])
    return {"document_root": os.path.dirname(common), "storage_path": common}


def image_url(uri: str, root: str | None) -> str:
    """The task's image: an s3:// URI as is, a local file as /data/local-files/?d=<path below root>
    (percent-encoded: Label Studio decodes `d` as a query parameter, so '#', '&', spaces survive)."""
    if storage.is_s3(uri):
        return uri
    return LOCAL_PREFIX + quote(os.path.relpath(storage.from_uri(uri), root).replace(os.sep, "/"))


def tasks(items: list[dict], batch_id: str, root: str | None) -> list[dict]:
    """One task per batch item (uri, sha256, kind, info)."""
    return [{"data": {IMAGE: image_url(it["uri"], root), "uri": it["uri"], "sha256": it["sha256"],
                      "batch_id": batch_id, "kind": it["kind"], INFO: it.get("info") or ""}} for it in items]


# ---------------------------------------------------------------- the export read back

def parse_export(name: str, doc) -> tuple[list[dict], int]:
    """(decision rows, tasks without a decision) of a Label Studio JSON or JSON_MIN export."""
    if isinstance(doc, dict):
        doc = [doc]
    if not isinstance(doc, list) or not all(isinstance(t, dict) for t in doc):
        raise UsageError(f"{name}: not a Label Studio export (expected a list of tasks); export the project "
                         "as JSON")
    # JSON_MIN rows carry `annotator` (null when unannotated): a project nobody labelled yet is no error
    if doc and not any("annotations" in t or CHOICES in t or "annotator" in t for t in doc):
        raise UsageError(f"{name}: JSON without Label Studio annotations (no 'annotations' or "
                         f"'{CHOICES}' key); export the project as JSON or JSON_MIN with the labelling config "
                         "`review build` wrote")
    rows, undecided = [], 0
    for task in doc:
        found = _full(task) if "annotations" in task else _minimal(task)
        undecided += not found
        rows += found
    return rows, undecided


def _row(data: dict, label, reviewer, note, decided_at) -> dict:
    from .decisions import row

    return row({"uri": data.get("uri"), "sha256": data.get("sha256"), "batch_id": data.get("batch_id"),
                "label": label, "reviewer": reviewer, "note": note, "decided_at": decided_at}, schema.LABEL_STUDIO)


def _full(task: dict) -> list[dict]:
    data, out = task.get("data") or {}, []
    for ann in task.get("annotations") or []:
        if ann.get("was_cancelled"):
            continue
        label = _result(ann, "choices")
        if label is None:
            continue
        out.append(_row(data, label, _reviewer(ann), _result(ann, "textarea"),
                        ann.get("updated_at") or ann.get("created_at")))
    return out


def _minimal(task: dict) -> list[dict]:
    label = task.get(CHOICES)
    if isinstance(label, dict):   # JSON_MIN writes {"choices": [...]} for a multi-choice control
        label = (label.get("choices") or [None])[0]
    if not label:
        return []
    return [_row(task, label, _user(task.get("annotator")), task.get(NOTE),
                 task.get("updated_at") or task.get("created_at"))]


def _result(ann: dict, kind: str):
    """The choices label / textarea text of one annotation (our config's control names)."""
    name = CHOICES if kind == "choices" else NOTE
    for r in ann.get("result") or []:
        if r.get("from_name") == name and r.get("type") == kind:
            values = (r.get("value") or {}).get("choices" if kind == "choices" else "text") or []
            return values[0] if kind == "choices" and values else " ".join(values) or None
    return None


def _reviewer(ann: dict) -> str | None:
    by = ann.get("completed_by")
    if isinstance(by, dict):
        return by.get("email") or by.get("username") or _user(by.get("id"))
    return _user(by) or ann.get("created_username")     # the id first: JSON_MIN has only that


def _user(who) -> str | None:
    """A reviewer as the export names them. Label Studio 1.23 exports the annotator's user id, not
    the e-mail (JSON: `completed_by`, JSON_MIN: `annotator`): both become "label-studio user <id>", so
    the same decision read from either export is the same row."""
    if who is None or who == "":
        return None
    return f"label-studio user {who}" if isinstance(who, int) or str(who).isdigit() else str(who)
