"""Small helpers shared by the harness: free ports, waiting, process control, HTTP without deps."""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import random
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
from dataclasses import dataclass, field

LOOPBACK = "127.0.0.1"


_ports_given: set = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, below the kernel's ephemeral range (so that no
    outgoing connection takes it before the server that is to bind it starts), never the same twice."""
    for _ in range(1000):
        port = random.randrange(20000, 32000)
        if port in _ports_given:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((LOOPBACK, port))
            except OSError:
                continue
        _ports_given.add(port)
        return port
    raise RuntimeError("no free port found in 20000-31999")


def port_open(port: int, host: str = LOOPBACK) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.3)
        return s.connect_ex((host, port)) == 0


class Fatal(RuntimeError):
    """raised by a wait_until predicate to stop waiting at once (e.g. the process being waited for exited)"""


def wait_until(pred, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = pred()
            if last:
                return last
        except Fatal:
            raise
        except Exception as e:  # noqa: BLE001 - the predicate may fail while a server starts
            last = e
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def sha256_file(path, bufsize: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(bufsize)
            if not b:
                break
            h.update(b)
    return "sha256:" + h.hexdigest()


def sha256_bytes(b: bytes) -> str:
    return "sha256:" + hashlib.sha256(b).hexdigest()


def tail(path, n: int = 40) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            lines = f.read().decode("utf-8", "replace").splitlines()
        return "\n".join(lines[-n:])
    except OSError as e:
        return f"(no log: {e})"


def stop_process(proc: subprocess.Popen | None, sig=signal.SIGTERM, timeout: float = 15.0):
    """Stop one process we started, by its pid; SIGKILL if it does not exit in time."""
    if proc is None or proc.poll() is not None:
        return
    try:
        proc.send_signal(sig)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


def run(cmd, timeout: float = 300, check: bool = True, env=None, input=None, cwd=None) -> subprocess.CompletedProcess:
    """Run a command, capture output; on failure raise with the command's stderr in the message."""
    full_env = None
    if env is not None:
        full_env = dict(os.environ)
        full_env.update(env)
    p = subprocess.run(cmd, capture_output=True, timeout=timeout, env=full_env, input=input, cwd=cwd)
    if check and p.returncode != 0:
        raise AssertionError(
            f"command failed ({p.returncode}): {' '.join(map(str, cmd))}\n"
            f"stdout: {p.stdout.decode(errors='replace')[-3000:]}\nstderr: {p.stderr.decode(errors='replace')[-3000:]}")
    return p


@dataclass
class Resp:
    status: int
    headers: list = field(default_factory=list)
    body: bytes = b""

    def header(self, name: str, default=None):
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return default

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def __repr__(self):
        b = self.body[:600].decode("utf-8", "replace")
        return f"<HTTP {self.status} {b!r}>"


# host:port -> the CA file an https:// URL to it is verified with (like a certs.d directory)
_trusted: dict = {}


def trust_ca(netloc: str, cafile) -> None:
    """https:// requests to `netloc` (host:port as in the URL) verify the server against `cafile`."""
    _trusted[netloc] = str(cafile)


def tls_context(cafile) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cafile))


def _conn(url: str, timeout: float):
    u = urllib.parse.urlsplit(url)
    if u.scheme == "https":
        ctx = tls_context(_trusted[u.netloc]) if u.netloc in _trusted else ssl.create_default_context()
        conn = http.client.HTTPSConnection(u.hostname, u.port or 443, timeout=timeout, context=ctx)
    else:
        conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)
    path = u.path or "/"
    if u.query:
        path += "?" + u.query
    return conn, path, u


def request(method: str, url: str, body=None, headers=None, timeout: float = 60, host: str | None = None,
            json_body=None) -> Resp:
    """One HTTP/1.1 request. headers: dict or list of (name, value) (names may repeat).
    host: a Host header to send instead of the URL's authority."""
    if json_body is not None:
        body = json.dumps(json_body).encode()
        headers = list(_hdr_items(headers)) + [("Content-Type", "application/json")]
    conn, path, u = _conn(url, timeout)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host or u.netloc)
        for k, v in _hdr_items(headers):
            conn.putheader(k, v)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        try:
            conn.endheaders(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered (e.g. 413) and closed before reading the whole body: read that answer
        r = conn.getresponse()
        data = r.read()
        return Resp(r.status, r.getheaders(), data)
    finally:
        conn.close()


def _hdr_items(headers):
    if headers is None:
        return []
    if isinstance(headers, dict):
        return list(headers.items())
    return list(headers)


@dataclass
class StreamResult:
    status: int
    headers: list
    nbytes: int
    digest: str
    complete: bool  # the body ended normally (Content-Length reached / final chunk seen)
    error: str | None = None
    body_head: bytes = b""

    def header(self, name, default=None):
        return Resp(self.status, self.headers).header(name, default)

    def __repr__(self):
        head = self.body_head[:400]
        text = head.decode("utf-8", "replace") if head[:1] in (b"{", b"[", b"<") or head.isascii() else f"<{len(head)} binary bytes>"
        return (f"<HTTP {self.status} body {self.nbytes} bytes {self.digest} complete={self.complete}"
                f"{' error=' + self.error if self.error else ''} content-length={self.header('Content-Length')} "
                f"body: {text!r}>")


def stream_get(url: str, headers=None, timeout: float = 120, host: str | None = None,
               stop_after: int | None = None, on_bytes=None) -> StreamResult:
    """GET and hash the body as it streams (never held in memory). stop_after: close the
    connection after that many body bytes (a client that goes away)."""
    conn, path, u = _conn(url, timeout)
    h = hashlib.sha256()
    n = 0
    head = b""
    try:
        conn.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host or u.netloc)
        for k, v in _hdr_items(headers):
            conn.putheader(k, v)
        conn.endheaders()
        r = conn.getresponse()
        status, hdrs = r.status, r.getheaders()
        try:
            while True:
                want = 1 << 20
                if stop_after is not None:
                    want = min(want, stop_after - n)
                    if want <= 0:
                        return StreamResult(status, hdrs, n, "sha256:" + h.hexdigest(), False, "stopped by client", head)
                b = r.read1(want) if hasattr(r, "read1") else r.read(want)
                if not b:
                    break
                if len(head) < 4096:
                    head += b[: 4096 - len(head)]
                h.update(b)
                n += len(b)
                if on_bytes:
                    on_bytes(n)
            # http.client's read1 returns b"" at a clean end; an early EOF raises IncompleteRead
            complete = True
            cl = r.getheader("Content-Length")
            if cl is not None and int(cl) != n and status != 304 and r._method != "HEAD":
                complete = False
            return StreamResult(status, hdrs, n, "sha256:" + h.hexdigest(), complete, None, head)
        except (http.client.IncompleteRead, ConnectionError, OSError, http.client.HTTPException) as e:
            return StreamResult(status, hdrs, n, "sha256:" + h.hexdigest(), False, repr(e), head)
    finally:
        conn.close()


def proc_status(pid: int) -> dict:
    """VmRSS, VmHWM, VmPeak, VmSize and the RSS split RssAnon / RssFile / RssShmem (KiB) of a process."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "VmPeak", "VmSize", "RssAnon", "RssFile", "RssShmem"):
                out[k] = int(v.split()[0])
    return out


class Blackhole:
    """A port where TCP connects hang (an upstream host that is down, as opposed to refusing): a listening
    socket with backlog 0 whose accept queue is kept full, so the kernel drops further SYNs."""

    def __init__(self, port: int):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((LOOPBACK, port))
        self.sock.listen(0)
        self.fillers = []
        for _ in range(2):
            c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            c.setblocking(False)
            c.connect_ex((LOOPBACK, port))
            self.fillers.append(c)
        time.sleep(0.1)

    def close(self):
        for c in self.fillers:
            c.close()
        self.sock.close()


class Mute:
    """A server that accepts every connection, reads what it is sent, and never answers (an upstream whose
    process hangs with its socket still open)."""

    def __init__(self, port: int):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((LOOPBACK, port))
        self.sock.listen(64)
        self.accepted = 0
        self.held = []
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self.held.append(conn)
            threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    @staticmethod
    def _drain(conn):
        try:
            while conn.recv(65536):
                pass
        except OSError:
            pass

    def close(self):
        self.closed = True
        for c in self.held:
            c.close()
        self.sock.close()


def server_factory(new):
    """The body of a fixture that starts servers on demand: yields `make(*args, **kw)`, which starts
    `new(*args, **kw)` and returns it; every server it started is stopped at teardown."""
    started = []

    def make(*args, **kw):
        s = new(*args, **kw).start()
        started.append(s)
        return s
    yield make
    for s in started:
        s.stop()
