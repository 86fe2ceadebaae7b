"""What an upstream registry served, read from CNCF distribution's combined-format access log.

distribution writes, per request, an app line (logrus text) and a combined access line:
  127.0.0.1 - - [22/Nov/2025:21:25:00 +0000] "GET /v2/library/small/blobs/sha256:... HTTP/1.1" 200 2097152 "" "ua"
The line is written when the handler finishes, so the byte count is what was actually sent.
HEAD lines carry the would-be body size; nothing was sent, so HEAD bytes are ignored.
"""
from __future__ import annotations

import os
import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass

LINE = re.compile(r'^(\S+) \S+ \S+ \[[^\]]+\] "(\S+) (\S+) [^"]*" (\d{3}) (\d+|-)')


def kind(path: str) -> str:
    p = path.split("?", 1)[0]
    if "/blobs/uploads" in p:
        return "upload"
    if "/blobs/" in p:
        return "blob"
    if "/manifests/" in p:
        return "manifest"
    if p.rstrip("/") == "/v2":
        return "ping"
    return "other"


@dataclass(frozen=True)
class Entry:
    method: str
    path: str
    status: int
    size: int

    @property
    def kind(self) -> str:
        return kind(self.path)

    @property
    def ref(self) -> str:
        """the last path segment: a digest or a tag"""
        return self.path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]

    def __str__(self):
        return f"{self.method} {self.path} {self.status} {self.size}"


class AccessLog:
    def __init__(self, path):
        self.path = str(path)

    def mark(self) -> int:
        """an offset: entries(since=mark) are the requests after this moment"""
        self.settle()
        try:
            return os.path.getsize(self.path)
        except OSError:
            return 0

    def settle(self, quiet: float = 0.25, timeout: float = 10.0):
        """wait until the log has not grown for `quiet` seconds (lines are written when a request ends)"""
        deadline = time.monotonic() + timeout
        last, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            try:
                size = os.path.getsize(self.path)
            except OSError:
                size = 0
            now = time.monotonic()
            if size != last:
                last, since = size, now
            elif now - since >= quiet:
                return
            time.sleep(0.05)

    def entries(self, since: int = 0, settle: bool = True) -> list[Entry]:
        if settle:
            self.settle()
        out = []
        try:
            with open(self.path, "rb") as f:
                f.seek(since)
                for raw in f:
                    m = LINE.match(raw.decode("utf-8", "replace"))
                    if not m:
                        continue
                    _, meth, path, status, size = m.groups()
                    out.append(Entry(meth, path, int(status), 0 if size == "-" else int(size)))
        except OSError:
            pass
        return out


class Stats:
    """Counts over a list of entries."""

    def __init__(self, entries: list[Entry]):
        self.entries = entries

    def select(self, method=None, kind_=None, status=None, ref=None):
        return [e for e in self.entries
                if (method is None or e.method == method)
                and (kind_ is None or e.kind == kind_)
                and (status is None or e.status == status)
                and (ref is None or e.ref == ref)]

    def count(self, method=None, kind_=None, status=None, ref=None) -> int:
        return len(self.select(method, kind_, status, ref))

    def blob_gets(self, status: int | None = 200) -> dict[str, list[int]]:
        """digest -> sizes of each GET of that blob"""
        d = defaultdict(list)
        for e in self.select("GET", "blob", status):
            d[e.ref].append(e.size)
        return dict(d)

    def body_bytes(self, kind_=None) -> int:
        return sum(e.size for e in self.entries if e.method == "GET" and (kind_ is None or e.kind == kind_))

    def summary(self) -> str:
        c = Counter((e.method, e.kind, e.status) for e in self.entries)
        return ", ".join(f"{m} {k} {s} x{n}" for (m, k, s), n in sorted(c.items())) or "(no requests)"

    def listing(self) -> str:
        return "\n".join(str(e) for e in self.entries) or "(no requests)"
