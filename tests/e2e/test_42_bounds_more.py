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


# --- 2. request bodies that trickle ---------------------------------------------------------------------------

def trickle(port, head: bytes, body: bytes, every: float, limit: float):
    """Sends `head` then `body` one byte every `every` seconds; returns (seconds until the server answered or
    closed, the bytes it answered)"""
    s = socket.create_connection(("127.0.0.1", port), timeout=limit)
    s.sendall(head)
    start = time.monotonic()
    answer = b""
    s.setblocking(False)
    try:
        for b in body:
            try:
                s.send(bytes([b]))
            except (BrokenPipeError, ConnectionResetError, BlockingIOError):
                break
            deadline = time.monotonic() + every
            while time.monotonic() < deadline:
                try:
                    chunk = s.recv(65536)
                except BlockingIOError:
                    time.sleep(0.02)
                    continue
                except ConnectionResetError:
                    chunk = b""
                if not chunk:
                    return time.monotonic() - start, answer
                answer += chunk
            if answer and b"\r\n\r\n" in answer:
                break
            if time.monotonic() - start > limit:
                break
        s.settimeout(2)
        try:
            while chunk := s.recv(65536):
                answer += chunk
        except OSError:
            pass
        return time.monotonic() - start, answer
    finally:
        s.close()


def test_a_trickling_upload_is_cut_and_left_resumable(make_binaryrepo):
    """Guards Paced (request_min_bytes_per_second over request_rate_window_seconds): a PATCH sending 2 bytes a
    second into an upload session is cut after the 2 s window; the bytes that arrived stay in the session (a
    client may resume), and a monolithic PUT cut the same way commits nothing."""
    br = make_binaryrepo(config={"request_body_idle_seconds": 2, "request_min_bytes_per_second": 100,
                                 "request_rate_window_seconds": 2})
    br.create_local(LOCAL)
    oci = Oci(br.url, LOCAL)
    loc = oci.upload_url("slow/app")
    path = loc[len(br.url):]
    data = bytes(range(256)) * 4
    head = (f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1:{br.port}\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {len(data)}\r\n\r\n").encode()
    took, answer = trickle(br.port, head, data, every=0.5, limit=20)
    assert took < 8, f"a 2 B/s PATCH stayed open {took:.1f}s (window 2 s)"
    assert answer.startswith(b"HTTP/1.1 4"), answer[:300]
    # what arrived is kept for a resume, and the session still takes the rest
    r = request("GET", loc)
    assert r.status == 204, r
    end = int(r.header("Range").split("-")[1]) + 1 if r.header("Range") else 0
    assert 0 < end < len(data), r.headers
    r = request("PUT", oci.with_query(loc, digest=sha256(data)), body=data[end:],
                headers={"Content-Type": "application/octet-stream"})
    assert r.status == 201, r
    assert oci.get_blob("slow/app", sha256(data)).body == data

    # a monolithic PUT cut short commits nothing
    other = bytes(reversed(data))
    loc = oci.upload_url("slow/app")
    path = oci.with_query(loc, digest=sha256(other))[len(br.url):]
    head = (f"PUT {path} HTTP/1.1\r\nHost: 127.0.0.1:{br.port}\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {len(other)}\r\n\r\n").encode()
    took, answer = trickle(br.port, head, other, every=0.5, limit=20)
    assert took < 8 and answer.startswith(b"HTTP/1.1 4"), (took, answer[:300])
    assert oci.head_blob("slow/app", sha256(other)).status == 404


def test_a_stalled_helm_upload_is_cut(make_binaryrepo):
    """The same guard on a body read whole (a chart upload): a body that stops is cut at the idle timeout with
    a clear error, and no chart appears."""
    br = make_binaryrepo(config={"request_body_idle_seconds": 2}, repositories=[
        {"name": "helm-local", "type": "local", "format": "helm"}])
    tgz = make_chart("stalled", "1.0.0")
    head = (f"POST /repo/helm-local/api/charts HTTP/1.1\r\nHost: 127.0.0.1:{br.port}\r\n"
            f"Content-Length: {len(tgz)}\r\n\r\n").encode()
    s = socket.create_connection(("127.0.0.1", br.port), timeout=20)
    try:
        s.sendall(head + tgz[:100])
        start = time.monotonic()
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
        took = time.monotonic() - start
    finally:
        s.close()
    assert took < 8, f"a stalled chart upload stayed open {took:.1f}s (idle limit 2 s)"
    assert answer.startswith(b"HTTP/1.1 4"), answer[:300]
    assert b"stalled" not in request("GET", f"{br.url}/repo/helm-local/index.yaml").body


# --- 3. oversized header blocks -------------------------------------------------------------------------------

def raw_exchange(port, data: bytes) -> bytes:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = b""
        try:
            while chunk := s.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
        return answer
    finally:
        s.close()


def test_an_oversized_header_block_gets_a_431_that_says_so(make_binaryrepo):
    """Guards server/oversized.rs: hyper answers a header block over its limit with a bare 431; binaryrepo's
    answer has a body, in the OCI shape on /v2/ paths and plain text elsewhere."""
    br = make_binaryrepo()
    br.create_local(LOCAL)
    many = "".join(f"X-Pad-{i}: {'x' * 100}\r\n" for i in range(150))      # over 100 fields
    large = "".join(f"X-Pad-{i}: {'x' * 12000}\r\n" for i in range(90))    # over 1 MiB
    manifest = f"/v2/{LOCAL}/app/manifests/1"
    for path, headers, oci_shape in ((manifest, many, True), (manifest, large, True),
                                     ("/repo/anything/index.yaml", many, False), ("/api/repositories", many, False)):
        answer = raw_exchange(br.port, f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\r\n".encode())
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 431"), answer[:300]
        assert body, f"a bare 431: {head!r}"
        if oci_shape:
            doc = json.loads(body)
            assert doc["errors"][0]["code"] and "header" in doc["errors"][0]["message"].lower(), doc
            assert b"application/json" in head.lower()
        else:
            assert b"header" in body.lower() and b"text/plain" in head.lower(), answer[:400]
    # the server is fine afterwards
    assert request("GET", br.url + "/v2/").status in (200, 401)


# --- 4. descriptor sizes ----------------------------------------------------------------------------------------

def test_a_manifest_stating_another_size_than_the_stored_blob_is_refused(make_binaryrepo):
    """A layer or config descriptor whose size is not the stored blob's: 400 MANIFEST_INVALID or SIZE_INVALID,
    and no tag is made."""
    br = make_binaryrepo()
    br.create_local(LOCAL)
    oci = Oci(br.url, LOCAL)
    img = build_image("sizes")
    for d, b in img.blobs.items():
        oci.push_blob("sizes/app", b, d)
    doc = json.loads(img.manifest)
    for where in ("layers", "config"):
        bad = json.loads(json.dumps(doc))
        desc = bad["layers"][0] if where == "layers" else bad["config"]
        for delta in (1, -1):
            d2 = json.loads(json.dumps(bad))
            (d2["layers"][0] if where == "layers" else d2["config"])["size"] = desc["size"] + delta
            r = oci.put_manifest("sizes/app", f"bad-{where}", json.dumps(d2).encode())
            assert r.status == 400 and set(errors_of(r)) & {"MANIFEST_INVALID", "SIZE_INVALID"}, (where, delta, r)
            assert oci.get_manifest("sizes/app", f"bad-{where}").status == 404
    assert oci.put_manifest("sizes/app", "good", img.manifest).status == 201


# --- 5. a refused repository change changes nothing --------------------------------------------------------------

def test_a_port_conflict_is_refused_and_the_holder_keeps_serving(make_binaryrepo):
    """Guards api.rs `create`/`put`: only a listener the failing call started is stopped again. Before, the
    refused create stopped the listener of the repository that held the port."""
    br = make_binaryrepo()
    port = free_port()
    br.create_local(LOCAL, port=port)
    img = build_image("ports")
    Oci(f"http://127.0.0.1:{port}").push_image("ports/app", img, tag="1")

    def pull_through_port():
        r = Oci(f"http://127.0.0.1:{port}").get_manifest("ports/app", "1")
        assert r.status == 200 and r.body == img.manifest, r

    r = br.api("POST", "/api/repositories", json_body={"name": "other", "type": "local", "format": "docker",
                                                        "port": port})
    assert r.status in (400, 409) and str(port) in r.text(), r
    assert br.api("GET", "/api/repositories/other").status == 404
    pull_through_port()

    br.create_local("second")
    r = br.api("PUT", "/api/repositories/second", json_body={"name": "second", "type": "local", "format": "docker",
                                                              "port": port})
    assert r.status in (400, 409) and str(port) in r.text(), r
    pull_through_port()

    # a port some other process holds: refused, and the repository keeps its own port and listener
    busy = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    busy.bind(("0.0.0.0", 0))
    busy.listen(1)
    try:
        taken = busy.getsockname()[1]
        r = br.api("PUT", f"/api/repositories/{LOCAL}", json_body={"name": LOCAL, "type": "local",
                                                                   "format": "docker", "port": taken})
        assert r.status in (400, 409) and str(taken) in r.text(), r
        assert br.api("GET", f"/api/repositories/{LOCAL}").json()["port"] == port
        pull_through_port()
    finally:
        busy.close()


# --- 6. a fill that dies ----------------------------------------------------------------------------------------

def test_a_fill_whose_upstream_dies_mid_body_is_fetched_again(make_binaryrepo, images):
    """Guards the fill's release of its single-flight entry on failure: the upstream hangs up half-way through a
    layer once; that pull fails, and the next one fetches again (one more upstream GET) and gets the whole blob."""
    small = images["small"]
    layer, size = small.largest_layer()
    fake = FakeRegistry()
    fake.add_layout(small.layout, small.repo)
    fake.cut[layer] = size // 2
    fake.start()
    try:
        br = make_binaryrepo()
        br.create_remote("docker-remote", fake.url)
        url = br.v2("docker-remote", f"{small.repo}/blobs/{layer}")
        got = stream_get(url, timeout=30)
        assert not got.complete or got.digest != layer, got
        assert fake.count("GET", f"/blobs/{layer}") == 1
        del fake.cut[layer]
        got = stream_get(url, timeout=30)
        assert got.status == 200 and got.complete and got.digest == layer and got.nbytes == size, got
        assert fake.count("GET", f"/blobs/{layer}") == 2
        # and from the cache now
        got = stream_get(url, timeout=30)
        assert got.digest == layer and fake.count("GET", f"/blobs/{layer}") == 2
    finally:
        fake.stop()
