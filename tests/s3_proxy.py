"""A flaky S3 in front of the moto server: a real HTTP proxy that answers some requests itself
(503 SlowDown, 403 AccessDenied) and forwards the rest, which is how a throttling or forbidding S3
looks to a client. `policy(method, path, n)` returns None (forward) or (status, S3 error code)."""
from __future__ import annotations

import http.client
import http.server
import threading
from urllib.parse import urlparse

_HOP = {"connection", "transfer-encoding", "keep-alive", "content-length"}


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _handle(self):
        body = self._body()
        srv: FlakyS3 = self.server.owner
        with srv.lock:
            srv.requests += 1
            n = srv.requests
        fail = srv.policy(self.command, self.path, n)
        if fail:
            with srv.lock:
                srv.failed += 1
            status, code = fail
            xml = f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>{code}</Message></Error>".encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(xml)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(xml)
            return
        up = http.client.HTTPConnection(srv.upstream.hostname, srv.upstream.port, timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP and k.lower() != "expect"}
        up.request(self.command, self.path, body=body, headers=headers)
        resp = up.getresponse()
        data = resp.read()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in _HOP:
                self.send_header(k, v)
        length = resp.getheader("Content-Length") if self.command == "HEAD" else str(len(data))
        self.send_header("Content-Length", length or "0")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        up.close()

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle


class FlakyS3:
    def __init__(self, upstream: str, policy=None):
        self.upstream = urlparse(upstream)
        self.policy = policy or (lambda method, path, n: None)
        self.lock = threading.Lock()
        self.requests = self.failed = 0
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.owner = self
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def slowdown_first(k: int):
    """503 SlowDown for the first k requests, then forward everything."""
    return lambda method, path, n: (503, "SlowDown") if n <= k else None


def forbid_all(method, path, n):
    return 403, "AccessDenied"


def forbid_object_reads(method, path, n):
    """403 on reads of image objects (a bucket policy without s3:GetObject on them; HeadObject needs
    it too); listing and everything else still work."""
    key = path.split("?")[0]
    is_image = key.lower().endswith((".jpg", ".jpeg", ".png", ".tif", ".tiff"))
    return (403, "AccessDenied") if method in ("GET", "HEAD") and is_image else None
