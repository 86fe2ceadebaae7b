"""The host's side of contract 0.3, driven through a test-only plugin (plugins/testdata/probe, format `probe`)
whose paths each exercise one import or plan (see plugins/testdata/probe/src/lib.rs), against a real HTTP
upstream started here that counts what it is asked:

- uploads.append/read/commit build a blob from plugin-made bytes under the right sha256;
- upstream.fetch stores a 25 MB document that the plugin reads back in 4 MiB pieces with blobs.read-range,
  with the server's memory staying flat, passes conditional headers through (304: no file), refuses a
  document past max-bytes storing nothing, and lets allow-origin allow only an origin the plugin has read;
- a fetch-file plan streams a file of unknown digest to the client and the store, with 10 concurrent
  requests sharing one upstream GET, the plugin recording the digest once; past max-bytes nothing is
  stored; an upstream 404 stays a 404;
- a virtual repository merges a `merged` path over its members: local answers inline, a remote member's
  fetch-file carried out into the store, a member's 404 included;
- a `live-blobs-page` walk that never ends (cursors a, b, a, …; or 1, 2, 3, … on an empty repository) stops
  the collection with nothing removed, instead of asking the plugin for ever.
"""
from __future__ import annotations

import hashlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from harness.binaryrepo import binary_path, blob_files, plugin_dir
from harness.util import request

FORMAT = "probe"
MIB = 1024 * 1024
BIG = bytes(i % 251 for i in range(25 * 1000 * 1000))
SLOW = os.urandom(3 * MIB)
CHUNKED = b"c" * (2 * MIB)
NAMED = b"downloads are at http://127.0.0.1:9/files and nowhere else\n"


def fnv(data: bytes) -> str:
    h = 0xcbf29ce484222325
    # FNV-1a 64 of 25 MB in pure Python is slow; this runs on a few documents only
    for b in data:
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Upstream:
    """A real HTTP/1.1 server on loopback serving the documents below, counting GETs per path."""

    def __init__(self):
        self.hits: dict[str, int] = {}
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def send_body(self, body: bytes, length=True, pause=0.0, headers=()):
                self.send_response(200)
                for k, v in headers:
                    self.send_header(k, v)
                if length:
                    self.send_header("Content-Length", str(len(body)))
                else:
                    self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                step = 256 * 1024
                for i in range(0, len(body), step):
                    piece = body[i:i + step]
                    if length:
                        self.wfile.write(piece)
                    else:
                        self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                    if pause:
                        time.sleep(pause)
                if not length:
                    self.wfile.write(b"0\r\n\r\n")

            def do_GET(self):
                with lock:
                    outer.hits[self.path] = outer.hits.get(self.path, 0) + 1
                p = self.path
                if p == "/big":
                    self.send_body(BIG)
                elif p.startswith("/slow/"):
                    self.send_body(SLOW, pause=0.05)
                elif p.startswith("/chunked/"):
                    self.send_body(CHUNKED, length=False)
                elif p == "/index.txt":
                    self.send_body(b"remote index\n")
                elif p == "/named":
                    self.send_body(NAMED)
                elif p == "/etag":
                    if self.headers.get("If-None-Match") == '"v1"':
                        self.send_response(304)
                        self.send_header("ETag", '"v1"')
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                    else:
                        self.send_body(b"versioned\n", headers=[("ETag", '"v1"')])
                else:
                    body = b"not here\n"
                    self.send_response(404)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def probe_plugin() -> Path:
    env = os.environ.get("BINARYREPO_TEST_PLUGINS")
    d = Path(env) if env else binary_path().parent / "test-plugins"
    found = sorted(d.glob(f"*{FORMAT}*.wasm"))
    if not found:
        msg = f"the test plugin {FORMAT} is not built in {d}: `make test-plugins` (plugins/build.sh build-test {d})"
        if env:
            pytest.fail(msg)
        pytest.skip(msg)
    return found[0]


@pytest.fixture
def upstream():
    u = Upstream()
    yield u
    u.close()


@pytest.fixture
def b(make_binaryrepo, tmp_path, monkeypatch, upstream):
    """binaryrepo with the shipped plugins + probe; repositories: `pl` (local), `pr` (remote on the upstream
    above), `p-empty` (local that 404s the index), `pv` (virtual over pl, p-empty, pr)"""
    mixed = tmp_path / "plugins"
    mixed.mkdir()
    for p in sorted(plugin_dir().glob("*.wasm")) + [probe_plugin()]:
        (mixed / p.name).symlink_to(p.resolve())
    monkeypatch.setenv("BINARYREPO_PLUGIN_DIR", str(mixed))
    br = make_binaryrepo()
    br.create(name="pl", type="local", format=FORMAT)
    br.create(name="p-empty", type="local", format=FORMAT)
    br.create(name="pr", type="remote", format=FORMAT, url=upstream.url)
    br.create(name="pv", type="virtual", format=FORMAT, members=["pl", "p-empty", "pr"])
    return br


def report(r) -> dict:
    assert r.status == 200, repr(r)
    return dict(line.split("=", 1) for line in r.text().splitlines() if "=" in line)


def get(b, repo, path, **kw):
    return request("GET", f"{b.url}/repo/{repo}/probe/{path}", timeout=120, **kw)


def test_uploads_append_read_and_commit_plugin_made_bytes(b):
    got = report(get(b, "pl", "upload"))
    assert got == {
        "appended": "11", "read": "lo wo", "too-large": "true",
        "digest": sha256(b"hello world"), "size": "11", "after-commit": "true",
        "mismatch": "true", "gone": "true",
    }, got
    r = get(b, "pl", f"blob/{got['digest']}")
    assert (r.status, r.body) == (200, b"hello world")
    assert b.upload_files() == [], "every session ended (committed, or removed on the mismatch)"


def test_a_large_document_is_fetched_into_the_store_and_read_back_in_pieces_with_flat_memory(b, upstream):
    before = b.memory()
    got = report(get(b, "pr", "fetch/big"))
    assert (got["status"], got["digest"], got["size"]) == ("200", sha256(BIG), str(len(BIG))), got
    assert got["read"] == str(len(BIG)) and got["fnv"] == fnv(BIG), got
    assert b.blob_path(got["digest"]).read_bytes() == BIG
    after = b.memory()
    print(f"RSS {before['VmRSS']} -> {after['VmRSS']} KiB, peak {before['VmHWM']} -> {after['VmHWM']} KiB")
    # the body streams to disk and crosses into the plugin 4 MiB at a time; nothing holds it whole
    peak = after["VmHWM"] - before["VmRSS"]
    assert peak < 20 * 1024, f"peak RSS grew {peak} KiB fetching and reading a {len(BIG)}-byte document"
    assert upstream.hits["/big"] == 1


def test_fetch_passes_conditional_headers_and_stores_only_2xx(b, upstream):
    got = report(get(b, "pr", "fetch/etag"))
    assert (got["status"], got["digest"]) == ("200", sha256(b"versioned\n")), got
    got = report(get(b, "pr", "fetch/etag", headers={"X-If-None-Match": '"v1"'}))
    assert got == {"status": "304", "file": "none"}, got
    got = report(get(b, "pr", "fetch/missing"))
    assert got == {"status": "404", "file": "none"}, got


def test_fetch_past_max_bytes_is_refused_and_stores_nothing(b):
    stored = set(blob_files(b.data_dir))
    for path in ("fetch/big?max=1000000", "fetch/chunked/x?max=1000000"):
        got = report(get(b, "pr", path))
        assert "TooLarge(" in got.get("error", ""), (path, got)
    assert set(blob_files(b.data_dir)) == stored, "a refused document leaves nothing in the store"
    assert list((b.data_dir / "staging").iterdir()) == []


def test_allow_origin_needs_the_origin_read_from_the_document(b):
    got = report(get(b, "pr", "origin/named?origin=http://127.0.0.1:9"))
    assert got == {"before": "false", "after": "true"}, got


def test_concurrent_fetch_file_plans_share_one_upstream_get_and_the_plugin_records_it(b, upstream):
    with ThreadPoolExecutor(10) as ex:
        answers = list(ex.map(lambda _: get(b, "pr", "file/slow/a"), range(10)))
    assert [r.status for r in answers] == [200] * 10, answers[0]
    assert all(r.body == SLOW for r in answers), [len(r.body) for r in answers]
    assert upstream.hits["/slow/a"] == 1, upstream.hits
    deadline = time.time() + 10
    while (r := get(b, "pr", "recorded/slow/a")).status != 200 and time.time() < deadline:
        time.sleep(0.1)
    assert (r.status, r.text()) == (200, sha256(SLOW)), "file-fetched recorded the stored digest"
    assert b.blob_path(sha256(SLOW)).read_bytes() == SLOW
    # once stored, later requests are served without the upstream
    r = get(b, "pr", "file/slow/a")
    assert (r.status, r.body) == (200, SLOW)
    assert upstream.hits["/slow/a"] == 1


def test_fetch_file_past_max_bytes_stores_nothing_and_an_upstream_404_stays_404(b, upstream):
    stored = set(blob_files(b.data_dir))
    # announced length over the limit: refused before any header, in the plugin's shape
    r = get(b, "pr", "file/slow/b?max=1000")
    assert r.status == 413 and "TooLarge" in r.text(), repr(r)
    # no length announced: the client's response is cut when the limit is passed
    try:
        r = get(b, "pr", "file/chunked/b?max=1000000")
    except Exception:  # http.client: IncompleteRead, the chunked body was cut
        r = None
    assert r is None or r.status != 200, f"a cut answer must not look complete: {len(r.body)} bytes"
    time.sleep(0.5)
    assert set(blob_files(b.data_dir)) == stored
    assert get(b, "pr", "recorded/slow/b").status == 404
    assert get(b, "pr", "recorded/chunked/b").status == 404
    r = get(b, "pr", "file/absent")
    assert r.status == 404 and "UpstreamStatus" in r.text(), repr(r)


def test_a_virtual_repository_merges_its_members_answers(b, upstream):
    r = request("GET", f"{b.url}/repo/pv/probe/index.txt", timeout=60)
    assert r.status == 200, repr(r)
    assert r.text() == "pl 200 inline local pl\np-empty 404 inline no index here\npr 200 blob remote index\n", r.text()
    assert upstream.hits["/index.txt"] == 1
    assert b.blob_path(sha256(b"remote index\n")).read_bytes() == b"remote index\n", "carried out into the store"
    # a member's file stored moments ago is answered from the store
    r = request("GET", f"{b.url}/repo/pv/probe/index.txt", timeout=60)
    assert r.status == 200 and r.text().endswith("pr 200 blob remote index\n"), r.text()
    assert upstream.hits["/index.txt"] == 1


def test_a_live_set_walk_that_never_ends_stops_the_collection(b):
    """the probe answers repositories named *cycle* with cursors a -> b -> a and *endless* ones with 1, 2, 3, …;
    either stops the run (nothing collected) soon, and the next run without them finishes"""
    report(get(b, "pl", "upload"))  # a blob no repository needs: a run that finishes with grace 0 removes it
    stored = sorted(blob_files(b.data_dir))
    assert stored
    for name, says in [("p-cycle", "came back to cursor \"a\""), ("p-endless", "pages without finishing")]:
        b.create(name=name, type="local", format=FORMAT)
        t = time.monotonic()
        r = b.api("POST", "/api/gc?wait=true&grace_seconds=0")
        assert r.status == 500, r
        status = b.api("GET", "/api/gc").json()
        assert status["state"] == "failed" and says in status["error"] and "nothing collected" in status["error"], status
        assert time.monotonic() - t < 60, "stopped soon, not at a budget"
        assert sorted(blob_files(b.data_dir)) == stored, "a failed run removes nothing"
        assert b.api("DELETE", f"/api/repositories/{name}").status in (200, 204)
    r = b.api("POST", "/api/gc?wait=true&grace_seconds=0")
    assert r.status == 200 and r.json()["state"] == "finished", r
    assert sorted(blob_files(b.data_dir)) != stored, "the run that finished removed the loose blob"
