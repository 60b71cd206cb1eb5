"""A real Label Studio for the review tests: started from its own installation (env LABEL_STUDIO_BIN,
else `label-studio` on PATH; it has its own virtualenv, not the project's), driven through its REST API
the way a lab would set up a review batch (docs/review.md), annotations posted with the body its own
labelling UI sends, and the project exported as JSON / JSON_MIN. Standard library only.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path


def find_bin() -> str | None:
    return os.environ.get("LABEL_STUDIO_BIN") or shutil.which("label-studio")


class Server:
    """`label-studio start` on 127.0.0.1:port with a throwaway data dir, local files served below
    document_root, one user with a legacy API token (Label Studio 1.2x disables legacy tokens unless
    the organisation is created with --enable-legacy-api-token)."""

    def __init__(self, exe: str, data_dir: Path, document_root: str, port: int, email: str = "rev@lab.org"):
        self.email, self.token, self.base = email, uuid.uuid4().hex, f"http://127.0.0.1:{port}"
        env = {**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
               "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true", "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": document_root}
        self.log = open(Path(data_dir) / "server.log", "wb")
        self.proc = subprocess.Popen([exe, "start", "--no-browser", "--internal-host", "127.0.0.1", "-p", str(port),
                                      "--username", email, "--password", uuid.uuid4().hex, "--user-token", self.token,
                                      "--enable-legacy-api-token"], env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait(self, timeout: float = 600) -> "Client":
        """The API client once the server answers (first start migrates its database: minutes)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"label-studio exited with {self.proc.returncode}; see {self.log.name}")
            try:
                with urllib.request.urlopen(self.base + "/health", timeout=5) as r:
                    if r.status == 200:
                        return Client(self.base, self.token)
            except OSError:
                pass
            time.sleep(3)
        raise TimeoutError(f"label-studio did not answer on {self.base} within {timeout:.0f} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)   # its own session: the server and its children only
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


class Client:
    def __init__(self, base: str, token: str):
        self.base, self.token = base, token

    def raw(self, method: str, path: str, body=None) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Token {self.token}", "Content-Type": "application/json"}
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def api(self, method: str, path: str, body=None):
        status, data = self.raw(method, path, body)
        if status >= 300:
            raise RuntimeError(f"{method} {path}: HTTP {status}: {data[:1000].decode(errors='replace')}")
        return json.loads(data or b"null")


def set_up_batch(client: Client, batch_dir: Path, title: str = "alle_dist review") -> tuple[int, list[dict]]:
    """What docs/review.md tells a lab to do with a batch: a project with the batch's labelling config,
    a Local Files source storage at batch.json's label_studio.storage_path (not synced), tasks.json
    imported. Returns (project id, its tasks as the API lists them)."""
    ls_dir = Path(batch_dir) / "label_studio"
    project = client.api("POST", "/api/projects", {"title": title,
                                                    "label_config": (ls_dir / "labeling_config.xml").read_text()})
    roots = json.loads((Path(batch_dir) / "batch.json").read_text())["label_studio"]
    if roots.get("storage_path"):
        client.api("POST", "/api/storages/localfiles", {"project": project["id"], "title": "review images",
                                                       "path": roots["storage_path"], "use_blob_urls": False})
    client.api("POST", f"/api/projects/{project['id']}/import", json.loads((ls_dir / "tasks.json").read_text()))
    listed = client.api("GET", f"/api/tasks?project={project['id']}&page_size=1000")
    return project["id"], sorted(listed["tasks"], key=lambda t: t["id"])


def ui_result(choice: str | None, note: str | None = None) -> list[dict]:
    """An annotation's `result` as Label Studio's labelling UI serialises it for this config: one region
    per control (ids are random there too), the image's size on the classification of an <Image>."""
    out = []
    if choice is not None:
        out.append({"id": uuid.uuid4().hex[:10], "type": "choices", "from_name": "decision", "to_name": "image",
                    "origin": "manual", "value": {"choices": [choice]}})
    if note is not None:
        out.append({"id": uuid.uuid4().hex[:10], "type": "textarea", "from_name": "note", "to_name": "image",
                    "origin": "manual", "value": {"text": [note]}})
    return out


def annotate(client: Client, project: int, task: int, result: list[dict], cancelled: bool = False) -> dict:
    """POST the body the UI's Submit (or Skip: was_cancelled) sends."""
    body = {"lead_time": 4.2, "result": result, "draft_id": None, "parent_prediction": None,
            "parent_annotation": None, "started_at": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())}
    if cancelled:
        body["was_cancelled"] = True
    return client.api("POST", f"/api/tasks/{task}/annotations?project={project}", body)


def export(client: Client, project: int, fmt: str) -> bytes:
    """The project's export as the UI's Export button downloads it (JSON or JSON_MIN)."""
    status, data = client.raw("GET", f"/api/projects/{project}/export?exportType={fmt}&download_all_tasks=true")
    if status != 200:
        raise RuntimeError(f"export {fmt}: HTTP {status}: {data[:500]!r}")
    return data
