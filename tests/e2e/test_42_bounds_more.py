"""Bounded work and bad input, continued (test_24_bounds.py has the first part). Each test names the guard it checks.

- an upstream that accepts and never answers (host/src/upstream/mod.rs, `send_hop`: `upstream_response_timeout_seconds`)
  is given up on within seconds: cached Docker tags and Helm indexes are served, a cold miss gets the format's 502;
- a request body that trickles (host/src/server/pace.rs, `Paced`: `request_body_idle_seconds`,
  `request_min_bytes_per_second`) is cut: the upload is refused, nothing is committed, what arrived stays resumable;
- an oversized header block (host/src/server/oversized.rs) is answered 431 with a body that says so, in the OCI shape
  on registry paths;
- a manifest whose descriptor states another size than the stored blob is refused (plugins/docker);
- a repository change refused for its port leaves every listener as it was (host/src/api.rs, `create`/`put`);
- a fill that dies mid-body is not stuck: the next request fetches again (host/src/upstream/fill.rs).
"""
import json
import socket
import threading
import time

from harness.chartrepo import ChartServer, entry_yaml, index_yaml, make_chart, sha256_hex
from harness.fakeregistry import FakeRegistry
from harness.images import ACCEPT_HEADER
from harness.oci import Oci, build_image, errors_of, sha256
from harness.util import free_port, request, stream_get

LOCAL = "docker-local"


class Mute:
    """A server that accepts every connection, reads what it is sent, and never answers (an upstream whose
    process hangs with its socket still open)."""

    def __init__(self, port: int):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
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


def timed(fn, *a, **kw):
    t = time.monotonic()
    out = fn(*a, **kw)
    return out, time.monotonic() - t


# --- 1. an upstream that accepts and never answers -----------------------------------------------------------

def test_a_mute_upstream_is_given_up_on_and_the_cached_tag_served(upstream, make_binaryrepo, images):
    """Guards the response timeout in Upstream::send_hop: with the default (10 s) the revalidation of a cached
    tag gives up and serves the cached manifest (it used to wait for the 120 s idle timeout)."""
    small = images["small"]
    br = make_binaryrepo()
    # tag_check_seconds=0: every tag request revalidates upstream
    br.create_remote("docker-remote", upstream.url, tag_check_seconds=0)
    url = br.v2("docker-remote", f"{small.repo}/manifests/1")
    r = request("GET", url, headers={"Accept": ACCEPT_HEADER})
    assert r.status == 200 and r.body == small.manifest, r
    layer, size = small.largest_layer()
    blob_url = br.v2("docker-remote", f"{small.repo}/blobs/{layer}")
    assert stream_get(blob_url, timeout=30).digest == layer
    port = upstream.port
    upstream.stop()  # its process ends: no kept-alive connection answers for it
    mute = Mute(port)
    try:
        r, took = timed(request, "GET", url, headers={"Accept": ACCEPT_HEADER}, timeout=60)
        assert r.status == 200 and r.body == small.manifest, r
        assert took < 15, f"the cached tag took {took:.1f}s with a mute upstream"
        assert mute.accepted >= 1, "the revalidation never reached the mute upstream"
        # the cached layer is served as it is
        got = stream_get(blob_url, timeout=30)
        assert got.status == 200 and got.digest == layer and got.nbytes == size, got
    finally:
        mute.close()


def test_a_mute_upstream_fails_a_cold_miss_promptly_in_the_format_shape(make_binaryrepo, images):
    """The other side of the guard above: nothing cached, so the client gets the format's upstream error after
    the (here 2 s) response timeout, not a hang."""
    small = images["small"]
    port = free_port()
    mute = Mute(port)
    try:
        br = make_binaryrepo(config={"upstream_response_timeout_seconds": 2})
        br.create_remote("docker-remote", f"http://127.0.0.1:{port}")
        r, took = timed(request, "GET", br.v2("docker-remote", f"{small.repo}/manifests/1"),
                        headers={"Accept": ACCEPT_HEADER}, timeout=60)
        assert r.status in (502, 503, 504) and errors_of(r), r
        assert took < 8, f"a cold miss took {took:.1f}s with a 2 s response timeout"
    finally:
        mute.close()


def helm_remote(name, url, window):
    return {"name": name, "type": "remote", "format": "helm", "url": url, "tag_check_seconds": window}


def test_a_mute_chart_repository_is_given_up_on_and_the_cached_index_served(make_binaryrepo, tmp_path):
    """The same guard for Helm: index.yaml revalidation against a mute upstream serves the cached index within
    the response timeout; a cold repository gets a plain-text 502."""
    up = ChartServer(tmp_path / "charts")
    tgz = make_chart("kept", "1.0.0")
    up.put("charts/kept-1.0.0.tgz", tgz)
    up.put("index.yaml", index_yaml({"kept": [entry_yaml("kept", "1.0.0", "charts/kept-1.0.0.tgz", sha256_hex(tgz))]}))
    up.start()
    # one request per connection: once stopped, no kept-alive connection answers for it
    up.httpd.RequestHandlerClass.protocol_version = "HTTP/1.0"
    br = make_binaryrepo(config={"upstream_response_timeout_seconds": 2},
                         repositories=[helm_remote("helm-remote", up.url, 0)])
    base = f"{br.url}/repo/helm-remote"
    first = request("GET", base + "/index.yaml")
    assert first.status == 200 and b"kept" in first.body, first
    assert request("GET", base + "/charts/kept-1.0.0.tgz").body == tgz
    port = up.port
    up.stop()
    mute = Mute(port)
    try:
        r, took = timed(request, "GET", base + "/index.yaml", timeout=60)
        assert r.status == 200 and r.body == first.body, r
        assert took < 6, f"the cached index took {took:.1f}s with a mute upstream (response timeout 2 s)"
        assert mute.accepted >= 1
        cold = make_binaryrepo(name="cold", config={"upstream_response_timeout_seconds": 2},
                               repositories=[helm_remote("helm-remote", f"http://127.0.0.1:{port}", 0)])
        r, took = timed(request, "GET", f"{cold.url}/repo/helm-remote/index.yaml", timeout=60)
        assert r.status == 502 and r.header("Content-Type").startswith("text/plain"), r
        assert took < 6, f"a cold index took {took:.1f}s"
    finally:
        mute.close()
