"""A static file upstream for the e2e tests and benchmarks: a real HTTP/1.1 server on 127.0.0.1 serving a
directory, with per-path hit counters, per-path overrides (a tampered file, a 410), an optional delay on the
downloads a subclass names (so that concurrent cold fetches overlap) and, when asked, ETag/Last-Modified
validators with conditional GETs answered 304. Format upstreams (chartrepo.ChartServer, goproxy.GoProxy) are
subclasses that name their slow downloads, their content types and any paths they answer themselves."""
from __future__ import annotations

import email.utils
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .util import free_port

Answer = tuple  # (status, body, headers)


class StaticUpstream:
    # downloads whose path ends with this take `delay` seconds (empty: none)
    delay_suffix = ""
    # percent-decode request paths before looking them up (and counting them)
    unquote = False
    # send ETag/Last-Modified and answer a matching If-None-Match with 304
    validators = False

    def __init__(self, root: Path, port: int | None = None, delay: float = 0.0):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.delay = delay
        self.hits: dict[str, int] = {}
        self.conditional: dict[str, int] = {}  # conditional GETs answered 304, per path
        self.overrides: dict[str, tuple[int, bytes]] = {}  # path -> (status, body)
        self.lock = threading.Lock()
        self.httpd: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def hit(self, path: str) -> int:
        with self.lock:
            return self.hits.get(path, 0)

    def put(self, rel: str, data: bytes | str) -> Path:
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data.encode() if isinstance(data, str) else data)
        return p

    def content_type(self, path: str) -> str | None:
        return None

    def special(self, path: str) -> Answer | None:
        """A subclass's own answer for `path`, or None to serve it from the directory."""
        return None

    def answer(self, path: str, if_none_match: str | None) -> Answer:
        if path in self.overrides:
            status, body = self.overrides[path]
            return status, body, {}
        own = self.special(path)
        if own is not None:
            return own
        f = (self.root / path.lstrip("/")).resolve()
        if self.root.resolve() not in f.parents or not f.is_file():
            return 404, b"not found\n", {}
        headers = {}
        if self.validators:
            st = f.stat()
            headers = {"ETag": '"%x-%x"' % (st.st_mtime_ns, st.st_size),
                       "Last-Modified": email.utils.formatdate(st.st_mtime, usegmt=True)}
            if if_none_match == headers["ETag"]:
                with self.lock:
                    self.conditional[path] = self.conditional.get(path, 0) + 1
                return 304, b"", headers
        if self.delay and self.delay_suffix and path.endswith(self.delay_suffix):
            time.sleep(self.delay)
        ctype = self.content_type(path)
        if ctype:
            headers["Content-Type"] = ctype
        return 200, f.read_bytes(), headers

    def start(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_HEAD(self):
                self.do_GET(head=True)

            def do_GET(self, head=False):
                path = self.path.split("?", 1)[0]
                if server.unquote:
                    path = urllib.parse.unquote(path)
                with server.lock:
                    server.hits[path] = server.hits.get(path, 0) + 1
                status, body, headers = server.answer(path, self.headers.get("If-None-Match"))
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head and status != 304:
                    self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def stop(self):
        if self.httpd:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None
