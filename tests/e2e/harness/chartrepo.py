"""A chart repository upstream for the Helm tests: a real HTTP server on 127.0.0.1 serving a directory
(index.yaml and charts) with per-path hit counters, ETag/Last-Modified and conditional GETs, and an optional
delay on chart downloads (so that concurrent cold pulls overlap). Plus chart and index builders that need no
helm binary: charts are .tgz files with <name>/Chart.yaml, values.yaml and a template."""
from __future__ import annotations

import email.utils
import hashlib
import io
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .util import free_port


class ChartServer:
    def __init__(self, root: Path, port: int | None = None, chart_delay: float = 0.0):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.chart_delay = chart_delay
        self.hits: dict[str, int] = {}
        self.conditional: dict[str, int] = {}  # conditional GETs answered 304, per path
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
                with server.lock:
                    server.hits[path] = server.hits.get(path, 0) + 1
                f = (server.root / path.lstrip("/")).resolve()
                if server.root.resolve() not in f.parents or not f.is_file():
                    return self._send(404, b"not found\n", {})
                st = f.stat()
                etag = '"%x-%x"' % (st.st_mtime_ns, st.st_size)
                lm = email.utils.formatdate(st.st_mtime, usegmt=True)
                if self.headers.get("If-None-Match") == etag:
                    with server.lock:
                        server.conditional[path] = server.conditional.get(path, 0) + 1
                    return self._send(304, b"", {"ETag": etag, "Last-Modified": lm})
                if path.endswith(".tgz") and server.chart_delay:
                    time.sleep(server.chart_delay)
                ctype = "application/x-yaml" if path.endswith(".yaml") else "application/gzip"
                self._send(200, f.read_bytes(), {"ETag": etag, "Last-Modified": lm, "Content-Type": ctype}, head)

            def _send(self, status, body, headers, head=False):
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


TEMPLATE = """apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-%(name)s
data:
  greeting: {{ .Values.greeting | quote }}
  chart: {{ .Chart.Name }}-{{ .Chart.Version }}
"""


def make_chart(name: str, version: str, greeting: str = "hello", chart_yaml: str | None = None,
               extra: dict | None = None) -> bytes:
    """A chart archive as `helm package` lays it out (gzip'd tar, <name>/Chart.yaml first)."""
    files = {
        f"{name}/Chart.yaml": chart_yaml if chart_yaml is not None else
        f"apiVersion: v2\nname: {name}\nversion: {version}\nappVersion: \"{version}\"\ndescription: e2e chart {name}\ntype: application\n",
        f"{name}/values.yaml": f"greeting: {greeting}\n",
        f"{name}/templates/configmap.yaml": TEMPLATE % {"name": name},
    }
    files.update(extra or {})
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for path, content in files.items():
            data = content.encode()
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mtime = 1_700_000_000
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def entry_yaml(name: str, version: str, url: str, digest: str | None, indent_lists: bool = False,
               quote_url: str = "") -> str:
    """One index entry as `helm repo index` writes it (lists not indented unless `indent_lists`)."""
    d = "  " if indent_lists else ""
    out = [f"  {d}- apiVersion: v2", f"  {d}  appVersion: \"{version}\"", f"  {d}  created: \"2024-01-01T00:00:00Z\"",
           f"  {d}  description: e2e chart {name}"]
    if digest:
        out.append(f"  {d}  digest: {digest}")
    out += [f"  {d}  name: {name}", f"  {d}  type: application", f"  {d}  urls:",
            f"  {d}  {d}- {quote_url}{url}{quote_url}", f"  {d}  version: {version}"]
    return "\n".join(out) + "\n"


def index_yaml(charts: dict[str, list[str]]) -> str:
    """charts: name -> [entry_yaml(...) texts]"""
    parts = ["apiVersion: v1\nentries:\n"]
    for name, entries in charts.items():
        parts.append(f"  {name}:\n")
        parts.extend(entries)
    parts.append("generated: \"2024-01-01T00:00:00Z\"\n")
    return "".join(parts)


def sha256_hex(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def big_index(min_bytes: int, url_base: str = "") -> str:
    """An index.yaml of at least `min_bytes`: many charts with many versions, every entry with a digest."""
    parts = ["apiVersion: v1\nentries:\n"]
    size, i = 0, 0
    while size < min_bytes:
        name = f"chart{i:05d}"
        parts.append(f"  {name}:\n")
        for v in range(40):
            digest = hashlib.sha256(f"{name}-{v}".encode()).hexdigest()
            e = entry_yaml(name, f"1.{v}.0", f"{url_base}charts/{name}-1.{v}.0.tgz", digest)
            parts.append(e)
            size += len(e)
        i += 1
    parts.append("generated: \"2024-01-01T00:00:00Z\"\n")
    return "".join(parts)
