"""A tiny misbehaving registry (in the test process) for failure tests.

Serves the images of OCI layouts (manifests by tag and digest, blobs by digest), and can:
  - corrupt: serve wrong bytes (same length, first byte flipped) for some digests
  - pause:   stop sending a blob after N bytes until `release()` (to kill binaryrepo mid-fill)
  - cut:     close the connection after N bytes of a blob (a body shorter than its Content-Length)
  - redirect: answer a blob GET or HEAD with a 307 to a URL (the blob itself is served, by any FakeRegistry
            that has it, at /storage/<digest>)
  - challenge: a Bearer realm URL: /v2/ requests without a Bearer token get 401 naming it (any token is accepted)
  - tls:     a harness.testca.TestCA: serve https with its certificate
  - dribble: after N bytes of a blob, send one byte every 0.2 s (never idle, never done) until stopped
Every request is recorded in `requests` as (method, path, status), and its Authorization header (or None) in
`authorizations` as (path, value).
"""
from __future__ import annotations

import hashlib
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .util import free_port


class FakeRegistry:
    def __init__(self, port: int | None = None, tls=None):
        self.port = port or free_port()
        self.tls = tls
        self.redirect: dict[str, str] = {}                   # digest -> Location for its blob GET/HEAD
        self.challenge: str | None = None                    # Bearer realm, when tokens are required
        self.authorizations: list[tuple[str, str | None]] = []
        self.manifests: dict[str, tuple[bytes, str]] = {}   # "repo|ref" -> (bytes, media type)
        self.blobs: dict[str, Path] = {}                     # digest -> file
        self.corrupt: set[str] = set()
        self.pause: dict[str, int] = {}                      # digest -> bytes to send before pausing
        self.cut: dict[str, int] = {}                        # digest -> bytes to send before hanging up
        self.dribble: dict[str, int] = {}                    # digest -> bytes to send before dribbling
        self.paused = threading.Event()                      # set when a paused transfer is waiting
        self._release = threading.Event()
        self.requests: list[tuple[str, str, int]] = []
        self._lock = threading.Lock()
        self._httpd = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def add_layout(self, layout: Path, repo: str):
        """every manifest, index and blob of an OCI image layout, tags from its index.json"""
        layout = Path(layout)
        bdir = layout / "blobs" / "sha256"
        for f in bdir.iterdir():
            if len(f.name) == 64:
                self.blobs["sha256:" + f.name] = f
        index = json.loads((layout / "index.json").read_text())

        def add_manifest(desc, tag=None):
            data = (bdir / desc["digest"].split(":", 1)[1]).read_bytes()
            mt = desc["mediaType"]
            self.manifests[f"{repo}|{desc['digest']}"] = (data, mt)
            if tag:
                self.manifests[f"{repo}|{tag}"] = (data, mt)
            doc = json.loads(data)
            for sub in doc.get("manifests", []):
                add_manifest(sub)
        for m in index["manifests"]:
            add_manifest(m, m.get("annotations", {}).get("org.opencontainers.image.ref.name"))

    def count(self, method=None, path_contains=None) -> int:
        with self._lock:
            return sum(1 for m, p, _ in self.requests
                       if (method is None or m == method) and (path_contains is None or path_contains in p))

    def release(self):
        self._release.set()

    def _log(self, method, path, status):
        with self._lock:
            self.requests.append((method, path, status))

    def _serve(self, h: BaseHTTPRequestHandler, head: bool):
        method = "HEAD" if head else "GET"
        path = h.path.split("?", 1)[0]
        auth = h.headers.get("Authorization")
        with self._lock:
            self.authorizations.append((path, auth))

        def send(status, body=b"", ctype="application/json", extra=()):
            self._log(method, path, status)
            h.send_response(status)
            h.send_header("Content-Type", ctype)
            h.send_header("Content-Length", str(len(body)))
            h.send_header("Docker-Distribution-Api-Version", "registry/2.0")
            for k, v in extra:
                h.send_header(k, v)
            h.end_headers()
            if not head:
                h.wfile.write(body)

        if path.startswith("/storage/"):
            return self._send_blob(h, head, method, path, path[len("/storage/"):])
        if self.challenge and path.startswith("/v2") and not (auth or "").lower().startswith("bearer "):
            return send(401, b'{"errors":[{"code":"UNAUTHORIZED","message":"token required"}]}',
                        extra=[("WWW-Authenticate", f'Bearer realm="{self.challenge}",service="fake"')])
        if path in ("/v2", "/v2/"):
            return send(200, b"{}")
        if not path.startswith("/v2/"):
            return send(404, b'{"errors":[{"code":"NOT_FOUND","message":"not found"}]}')
        rest = path[4:]
        if "/manifests/" in rest:
            repo, ref = rest.rsplit("/manifests/", 1)
            got = self.manifests.get(f"{repo}|{ref}")
            if not got:
                return send(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}')
            data, mt = got
            dg = "sha256:" + hashlib.sha256(data).hexdigest()
            if dg in self.corrupt:
                data = bytes([data[0] ^ 0x20]) + data[1:]
            return send(200, data, mt, [("Docker-Content-Digest", dg)])
        if "/blobs/" in rest:
            repo, dg = rest.rsplit("/blobs/", 1)
            if dg in self.redirect:
                return send(307, extra=[("Location", self.redirect[dg])])
            return self._send_blob(h, head, method, path, dg)
        return send(404, b'{"errors":[{"code":"NOT_FOUND","message":"not found"}]}')

    def _send_blob(self, h: BaseHTTPRequestHandler, head: bool, method: str, path: str, dg: str):
        f = self.blobs.get(dg)
        if not f:
            body = b'{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown"}]}'
            self._log(method, path, 404)
            h.send_response(404)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            if not head:
                h.wfile.write(body)
            return
        size = f.stat().st_size
        self._log(method, path, 200)
        h.send_response(200)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", str(size))
        h.send_header("Docker-Content-Digest", dg)
        h.end_headers()
        if head:
            return
        pause_at = self.pause.get(dg)
        cut_at = self.cut.get(dg)
        dribble_at = self.dribble.get(dg)
        sent = 0
        try:
            with open(f, "rb") as fh:
                first = True
                while True:
                    want = 1 << 20
                    if pause_at is not None and sent < pause_at:
                        want = min(want, pause_at - sent)
                    if cut_at is not None:
                        if sent >= cut_at:
                            h.wfile.flush()
                            h.close_connection = True
                            h.connection.shutdown(socket.SHUT_RDWR)
                            break
                        want = min(want, cut_at - sent)
                    if dribble_at is not None:
                        want = 1 if sent >= dribble_at else min(want, dribble_at - sent)
                    b = fh.read(want)
                    if not b:
                        break
                    if first and dg in self.corrupt:
                        b = bytes([b[0] ^ 0xFF]) + b[1:]
                    first = False
                    h.wfile.write(b)
                    sent += len(b)
                    if dribble_at is not None and sent > dribble_at:
                        h.wfile.flush()
                        if self._release.wait(0.2):
                            h.close_connection = True
                            return
                    if pause_at is not None and sent == pause_at:
                        h.wfile.flush()
                        self.paused.set()
                        self._release.wait(60)
                        pause_at = None
        except (BrokenPipeError, ConnectionResetError):
            pass

    def start(self):
        srv = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                srv._serve(self, False)

            def do_HEAD(self):
                srv._serve(self, True)

            def log_message(self, *a):
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), H)
        self._httpd.daemon_threads = True
        if self.tls:
            self._httpd.socket = self.tls.server_context().wrap_socket(self._httpd.socket, server_side=True)
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def stop(self):
        self._release.set()
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        self._release = threading.Event()
        self.paused.clear()

