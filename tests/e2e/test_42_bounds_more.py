"""Bounded work and bad input, continued (test_24_bounds.py has the first part). Each test names the guard it checks.

- an upstream that accepts and never answers (host/src/upstream/mod.rs, `send_hop`: `upstream_response_timeout_seconds`)
  is given up on within seconds: cached Docker tags and Helm indexes are served, a cold miss gets the format's 502;
- a request body that trickles (host/src/server/pace.rs, `Paced`: `request_body_idle_seconds`,
  `request_min_bytes_per_second`) is cut: the upload is refused, nothing is committed, what arrived stays resumable;
- an oversized header block, an oversized request target and a malformed head (host/src/server/oversized.rs) are
  answered 431, 414 and 400 with a body that says so, in the OCI shape on registry paths; odd request targets
  (`OPTIONS *`, absolute and authority form) get a clean 4xx on a repository's own port;
- /api JSON bodies and the token endpoint's form are held to the request-body pace limits (408);
- a manifest whose descriptor states another size than the stored blob is refused (plugins/docker);
- a repository change refused for its port leaves every listener as it was (host/src/api.rs, `create`/`put`);
- a fill that dies mid-body is not stuck: the next request fetches again (host/src/upstream/fill.rs).
"""
import json
import socket
import time

from harness.chartrepo import ChartServer, entry_yaml, index_yaml, make_chart, sha256_hex
from harness.fakeregistry import FakeRegistry
from harness.images import ACCEPT_HEADER
from harness.oci import Oci, build_image, errors_of, sha256
from harness.binaryrepo import ADMIN, basic
from harness.util import Mute, free_port, request, stream_get

LOCAL = "docker-local"


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


def oci_error(answer: bytes, status: bytes):
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 " + status), answer[:300]
    assert b"application/json" in head.lower(), head
    doc = json.loads(body)
    assert doc["errors"][0]["code"] and doc["errors"][0]["message"], doc
    return doc["errors"][0]["message"].lower()


def test_a_request_head_hyper_refuses_is_answered_in_the_format_shape(make_binaryrepo):
    """Guards server/oversized.rs for the other answers hyper writes itself: a request target over 64 KiB (414)
    and a malformed request line or header (400) get a body that says so, in the OCI shape on registry paths,
    plain text where no repository answers or the request line cannot be read. A HEAD keeps its bare answer."""
    br = make_binaryrepo()
    br.create_local(LOCAL)
    long_tag = "a" * 70_000
    msg = oci_error(raw_exchange(br.port, f"GET /v2/{LOCAL}/app/manifests/{long_tag} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                                 .encode()), b"414")
    assert "64 kib" in msg, msg
    for bad in (f"GET /v2/{LOCAL}/app/manifests/1 HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header: x\r\n\r\n",
                f"GET /v2/{LOCAL}/app/manifests/1 HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Ctl: a\x01b\r\n\r\n",
                f"GET /v2/{LOCAL}/app/manifests/1 HTTP/7.7\r\nHost: 127.0.0.1\r\n\r\n"):
        msg = oci_error(raw_exchange(br.port, bad.encode()), b"400")
        assert "malformed" in msg, (bad, msg)
    for bad in (b"\x01\x02 what\r\n\r\n", b"GET /api/repositories HTTP/1.1\r\nBad Header: x\r\n\r\n",
                b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n"):
        answer = raw_exchange(br.port, bad)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith((b"HTTP/1.1 400", b"HTTP/1.1 414")) and b"text/plain" in head.lower(), answer[:300]
        assert b"malformed" in body or b"64 KiB" in body, answer[:300]
    head = raw_exchange(br.port, f"HEAD /v2/{LOCAL}/app/manifests/1 HTTP/1.1\r\nBad Header: x\r\n\r\n".encode())
    assert head.startswith(b"HTTP/1.1 400") and head.endswith(b"\r\n\r\n"), head
    assert request("GET", br.url + "/v2/").status in (200, 401)


def test_odd_request_targets_on_a_repository_port_get_a_clean_4xx(make_binaryrepo):
    """`OPTIONS *` and the other request-target forms (absolute, authority) reach a port-bound repository's
    plugin: a 4xx in the format's shape, never a 500 or a dropped connection, and the port keeps serving."""
    br = make_binaryrepo()
    port = free_port()
    br.create_local(LOCAL, port=port)
    for line in ("OPTIONS * HTTP/1.1", "GET * HTTP/1.1", "CONNECT 127.0.0.1:443 HTTP/1.1",
                 f"GET http://127.0.0.1:{port}/v2/app/manifests/nope HTTP/1.1", "OPTIONS /v2/ HTTP/1.1"):
        for p in (port, br.port):
            answer = raw_exchange(p, f"{line}\r\nHost: 127.0.0.1:{p}\r\nConnection: close\r\n\r\n".encode())
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head[9:10] == b"4", (line, p, answer[:300])
            assert body, (line, p, head)
    assert request("GET", f"http://127.0.0.1:{port}/v2/").status in (200, 401)


def test_api_and_token_bodies_are_held_to_the_pace_limits(make_binaryrepo):
    """Guards Paced on /api JSON bodies (api.rs `read_json`) and the token endpoint's form: a body sending a byte
    a second is cut at the window's end with a 408 in the endpoint's JSON shape, and nothing is changed."""
    br = make_binaryrepo(config={"request_body_idle_seconds": 2, "request_min_bytes_per_second": 100,
                                 "request_rate_window_seconds": 2})
    doc = json.dumps({"name": "slow-repo", "type": "local", "format": "docker"}).encode()
    auth = basic(*ADMIN)
    head = (f"POST /api/repositories HTTP/1.1\r\nHost: 127.0.0.1:{br.port}\r\nAuthorization: {auth}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(doc)}\r\n\r\n").encode()
    took, answer = trickle(br.port, head, doc, every=1.0, limit=30)
    assert took < 8, f"a 1 B/s API body stayed open {took:.1f}s (window 2 s)"
    head_, _, body = answer.partition(b"\r\n\r\n")
    assert head_.startswith(b"HTTP/1.1 408"), answer[:300]
    assert json.loads(body)["error"]["code"] == "REQUEST_TIMEOUT", body
    assert request("GET", f"{br.url}/api/repositories/slow-repo", headers={"Authorization": auth}).status == 404

    form = f"grant_type=password&username={ADMIN[0]}&password={ADMIN[1]}&service=binaryrepo&scope=x".encode()
    head = (f"POST /api/token HTTP/1.1\r\nHost: 127.0.0.1:{br.port}\r\n"
            f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(form)}\r\n\r\n").encode()
    took, answer = trickle(br.port, head, form, every=1.0, limit=30)
    assert took < 8, f"a 1 B/s token form stayed open {took:.1f}s (window 2 s)"
    head_, _, body = answer.partition(b"\r\n\r\n")
    assert head_.startswith(b"HTTP/1.1 408"), answer[:300]
    assert json.loads(body)["error"] == "invalid_request", body


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
