"""Bounded by design: whatever clients send, memory, disk and plugin instances stay bounded and one repository
cannot starve the others. Each test names the guard it checks; each fails with that guard removed.

- the plan cache (host/src/plugins/reuse.rs, `PlanCache`): a flood of one-off keys (distinct queries, long queries)
  neither evicts a plan in use nor grows memory; `X-Forwarded-*` from a peer that is not in `trusted_proxies`
  changes nothing (host/src/server/resolve.rs, `base_url`/`resolve` with `forwarded`); the front index of requests
  asked again (host/src/server/front.rs) stays within its share of `plan_cache_mib`;
- upload sessions (host/src/storage/uploads.rs, `Uploads::start`): limited per repository and in all, refused with
  OCI 429 TOOMANYREQUESTS;
- fills (host/src/upstream/fill.rs): joined only within a repository (`FillKey`), bounded (`over_limit`), and cut
  when an upstream dribbles (`RateFloor`);
- plugin instances (host/src/plugins/share.rs): a slow remote with many clients holds at most its share, and a
  document it dribbles is cut at the idle timeout (host/src/plugins/caps/upstream.rs).
"""
import threading
import time
import http.client
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from harness.fakeregistry import FakeRegistry
from harness.images import ACCEPT_HEADER
from harness.oci import Oci, build_image, errors_of
from harness.util import free_port, request, stream_get, wait_until

LOCAL = "docker-local"


def plans(br, source):
    return br.metrics().value("binaryrepo_plans_total", repository=LOCAL, plan="serve-blob", source=source)


def get_many(br, paths, headers=None, threads=4):
    """GET every path (keep-alive connections, a few in parallel); returns the statuses"""
    def run(chunk):
        conn = http.client.HTTPConnection("127.0.0.1", br.port, timeout=30)
        statuses = []
        for path in chunk:
            conn.request("GET", path, headers=headers or {"Accept": ACCEPT_HEADER})
            r = conn.getresponse()
            r.read()
            statuses.append(r.status)
        conn.close()
        return statuses
    chunks = [paths[i::threads] for i in range(threads)]
    with ThreadPoolExecutor(threads) as ex:
        return [s for part in ex.map(run, chunks) for s in part]


def rss_kib(br):
    return br.memory()["VmRSS"]


def test_a_flood_of_one_off_requests_neither_evicts_a_hot_plan_nor_grows_memory(make_binaryrepo):
    """Guards PlanCache (S3-FIFO by bytes, MAX_KEY) and the `forwarded` flag of resolve: before, 4096 distinct
    queries cleared the whole cache and every kept key stayed in memory, whatever its length."""
    br = make_binaryrepo(config={"plan_cache_mib": 1})
    br.create_local(LOCAL)
    oci = Oci(br.url, LOCAL)
    oci.push_image("bounds/app", build_image("bounds-hot"), tag="1")
    hot = f"/v2/{LOCAL}/bounds/app/manifests/1"
    assert get_many(br, [hot, hot], threads=1) == [200, 200]
    reused0, decided0 = plans(br, "reused"), plans(br, "plugin")

    # 6000 one-off queries (more than the 4096 entries that used to flush everything), the hot tag among them
    paths, hot_hits = [], 0
    for i in range(6000):
        paths.append(f"{hot}?flood={i}")
        if i % 100 == 99:
            paths.append(hot)
            hot_hits += 1
    statuses = get_many(br, paths)
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    assert plans(br, "reused") - reused0 == hot_hits, \
        "every GET of the hot tag during the flood should have reused its plan (it was evicted)"
    assert plans(br, "plugin") - decided0 == 6000

    # long one-off queries are not kept: memory stays flat (before: every 32 KiB key was kept, 64 MiB here)
    before = rss_kib(br)
    long_paths = [f"{hot}?pad={'x' * 32768}&n={i}" for i in range(2000)]
    statuses = get_many(br, long_paths)
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    grown = rss_kib(br) - before
    assert grown < 24 * 1024, f"RSS grew by {grown} KiB over 2000 one-off 32 KiB queries"

    # X-Forwarded-Host from a peer that is not a trusted proxy: the same plan, not a new key each time ...
    reused1 = plans(br, "reused")
    for i in range(50):
        r = request("GET", br.url + hot, headers={"Accept": ACCEPT_HEADER, "X-Forwarded-Host": f"h{i}.evil.example"})
        assert r.status == 200, r
    assert plans(br, "reused") - reused1 == 50, "X-Forwarded-Host from an untrusted peer made new cache keys"
    # ... and not the URLs handed out either
    r = oci.start_upload("bounds/app", headers={"X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https"})
    assert r.status == 202 and r.header("Location").startswith(br.url + "/"), r.headers


def test_a_flood_of_requests_asked_twice_stays_bounded_in_the_front_index(make_binaryrepo):
    """Guards the front index's bound (host/src/server/front.rs, `Front`, weighed with the plans its entries keep
    alive): a request asked twice is indexed, so a client asking each of many distinct ~1 KiB queries twice makes
    an entry for each; with `plan_cache_mib = 1` they stay within half a MiB more (unbounded, 4000 of them keep
    about 12 MiB), and the hot tag is still answered from its plan."""
    br = make_binaryrepo(config={"plan_cache_mib": 1})
    br.create_local(LOCAL)
    Oci(br.url, LOCAL).push_image("bounds/app", build_image("bounds-twice"), tag="1")
    hot = f"/v2/{LOCAL}/bounds/app/manifests/1"
    assert get_many(br, [hot, hot, hot], threads=1) == [200, 200, 200]
    pad = "x" * 1000
    warm = [f"{hot}?pad={pad}&n={i}" for i in range(200) for _ in range(2)]
    assert set(get_many(br, warm, threads=1)) == {200}
    before = rss_kib(br)
    twice = [f"{hot}?pad={pad}&n={i}" for i in range(200, 4200) for _ in range(2)]
    statuses = get_many(br, twice, threads=1)
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    grown = rss_kib(br) - before
    assert grown < 6 * 1024, f"RSS grew by {grown} KiB over 4000 distinct queries asked twice"
    reused = plans(br, "reused")
    assert get_many(br, [hot], threads=1) == [200] and plans(br, "reused") - reused == 1, "the hot tag was not reused"


def test_forwarded_headers_count_from_a_trusted_proxy(make_binaryrepo):
    """The positive side of the guard above: from a peer in trusted_proxies, X-Forwarded-* make the URLs."""
    br = make_binaryrepo(config={"trusted_proxies": ["127.0.0.1/32"]})
    br.create_local(LOCAL)
    r = Oci(br.url, LOCAL).start_upload("bounds/app", headers={"X-Forwarded-Host": "registry.example",
                                                               "X-Forwarded-Proto": "https"})
    assert r.status == 202 and r.header("Location").startswith("https://registry.example/"), r.headers


def test_upload_sessions_are_limited_per_repository_and_in_all(make_binaryrepo):
    """Guards Uploads::start's two checks: past them a POST gets OCI 429 TOOMANYREQUESTS and no file is made,
    while another repository (under the total) still starts uploads."""
    br = make_binaryrepo(config={"upload_sessions_per_repository": 5, "upload_sessions_total": 8})
    br.create_local("a-repo")
    br.create_local("b-repo")
    a, b = Oci(br.url, "a-repo"), Oci(br.url, "b-repo")
    sessions = [a.upload_url("img") for _ in range(5)]
    r = a.start_upload("img")
    assert r.status == 429 and errors_of(r) == ["TOOMANYREQUESTS"], r
    assert len(br.upload_files()) == 5
    # another repository is not blocked by the first one's sessions
    for _ in range(3):
        b.upload_url("img")
    r = b.start_upload("img")
    assert r.status == 429 and errors_of(r) == ["TOOMANYREQUESTS"], f"past the total of 8: {r!r}"
    assert len(br.upload_files()) == 8
    # a session that ends gives its place back
    assert request("DELETE", sessions[0]).status == 204
    blob = b"bounded"
    assert a.push_blob("img", blob).startswith("sha256:")


def test_a_fill_is_joined_only_by_its_own_repository(make_binaryrepo, images):
    """Guards FillKey = (repository, digest): remote `a`'s upstream sends wrong bytes for a layer and stalls
    mid-way; a client of remote `b` asking for the same digest meanwhile gets `b`'s upstream's right bytes at once
    (it used to join `a`'s fill: stalled, then wrong)."""
    small = images["small"]
    layer, size = small.largest_layer()  # 2 MiB
    bad, good = FakeRegistry(), FakeRegistry()
    for f in (bad, good):
        f.add_layout(small.layout, small.repo)
    bad.corrupt.add(layer)
    bad.pause[layer] = 1 << 20
    bad.start()
    good.start()
    try:
        br = make_binaryrepo()
        br.create_remote("a-repo", bad.url)
        br.create_remote("b-repo", good.url)
        client_a = threading.Thread(target=stream_get, args=(br.v2("a-repo", f"{small.repo}/blobs/{layer}"),), daemon=True)
        client_a.start()
        assert bad.paused.wait(20), "remote a never fetched the layer"
        started = time.monotonic()
        got = stream_get(br.v2("b-repo", f"{small.repo}/blobs/{layer}"), timeout=10)
        assert got.status == 200 and got.complete and got.digest == layer and got.nbytes == size, got
        assert time.monotonic() - started < 8
        assert good.count("GET", f"/blobs/{layer}") == 1, "remote b fetched from its own upstream"
    finally:
        bad.stop()
        good.stop()


def test_fills_are_bounded_and_a_dribbling_upstream_is_cut(make_binaryrepo, images):
    """Guards Fills::over_limit and RateFloor: with one fill allowed per repository, a second blob is refused at once
    (429 TOOMANYREQUESTS, not a hang) while an upstream dribbles the first; the dribble (a byte every 0.2 s, never
    idle for the 5 s idle timeout) is cut at the end of a 2 s window below 50 kB/s, which frees the slot."""
    small = images["small"]
    layer, _ = small.largest_layer()
    other = small.config
    fake = FakeRegistry()
    fake.add_layout(small.layout, small.repo)
    fake.dribble[layer] = 64 * 1024
    fake.start()
    try:
        br = make_binaryrepo(config={"upstream_fills_per_repository": 1, "upstream_idle_timeout_seconds": 5,
                                     "upstream_min_bytes_per_second": 50000, "upstream_rate_window_seconds": 2})
        br.create_remote("docker-remote", fake.url)
        result = {}

        def slow_client():
            result["got"] = stream_get(br.v2("docker-remote", f"{small.repo}/blobs/{layer}"), timeout=60)
        client = threading.Thread(target=slow_client, daemon=True)
        client.start()
        wait_until(lambda: fake.count("GET", f"/blobs/{layer}") == 1, timeout=20, what="the dribbled fill to start")
        started = time.monotonic()
        r = request("GET", br.v2("docker-remote", f"{small.repo}/blobs/{other}"), timeout=10)
        assert r.status == 429 and errors_of(r) == ["TOOMANYREQUESTS"], r
        assert time.monotonic() - started < 2, "a fill over the limit must be refused at once"

        client.join(15)
        assert not client.is_alive(), "the dribbling upstream was never cut"
        assert not result["got"].complete, result["got"]
        got = stream_get(br.v2("docker-remote", f"{small.repo}/blobs/{other}"), timeout=10)
        assert got.status == 200 and got.complete and got.digest == other, got
        m = br.metrics()
        assert m.value("binaryrepo_blob_fetches_total", repository="docker-remote", result="refused") == 1, m.text
        assert m.value("binaryrepo_upstream_fills_total", repository="docker-remote", outcome="failed") == 1
    finally:
        fake.stop()


class SlowUpstream:
    """Accepts every request and answers 404 after `delay` seconds (an upstream or token realm that hangs)."""

    def __init__(self, delay: float):
        self.port = free_port()
        self.stop_event = threading.Event()
        self.requests = 0
        slow = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                slow.requests += 1
                slow.stop_event.wait(delay)
                body = b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"slow"}]}'
                self.send_response(404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_HEAD = do_GET

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), H)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def close(self):
        self.stop_event.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def test_a_slow_remote_cannot_take_every_plugin_instance(make_binaryrepo):
    """Guards the per-repository share (host/src/plugins/share.rs): 8 instances, 2 per repository; 16 clients of a
    remote whose upstream takes 8 s hold 2, and a local repository's request is answered at once (before, the
    slow remote held all 8 and the local request waited for them)."""
    slow = SlowUpstream(delay=8)
    try:
        br = make_binaryrepo(config={"plugin_instances": 8, "plugin_instances_per_repository": 2})
        br.create_remote("slow-remote", slow.url)
        br.create_local(LOCAL)
        clients = ThreadPoolExecutor(16)
        for i in range(16):
            clients.submit(request, "GET", br.v2("slow-remote", f"library/x{i}/manifests/1"),
                           headers={"Accept": ACCEPT_HEADER}, timeout=60)
        wait_until(lambda: slow.requests >= 2, timeout=10, what="the slow remote's calls to start")
        time.sleep(0.5)  # every client is in: holding a share, or waiting for one
        started = time.monotonic()
        r = request("GET", br.v2(LOCAL, "bounds/app/manifests/none"), headers={"Accept": ACCEPT_HEADER}, timeout=30)
        took = time.monotonic() - started
        assert r.status == 404 and errors_of(r) == ["MANIFEST_UNKNOWN"], r
        assert took < 2, f"a local repository's request took {took:.1f} s behind a slow remote"
        clients.shutdown(wait=False, cancel_futures=True)
    finally:
        slow.close()


class DribblingUpstream:
    """Answers every GET with 200 and a 100 kB Content-Length, then sends one byte every 0.2 s: never idle, never
    done (a remote that dribbles a manifest or a token)."""

    def __init__(self):
        self.port = free_port()
        self.stop_event = threading.Event()
        self.gets = 0
        up = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                up.gets += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
                self.send_header("Content-Length", "100000")
                self.end_headers()
                try:
                    while not up.stop_event.wait(0.2):
                        self.wfile.write(b" ")
                        self.wfile.flush()
                except OSError:
                    pass
                self.close_connection = True

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), H)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def close(self):
        self.stop_event.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def test_a_dribbled_document_is_cut_at_the_idle_timeout(make_binaryrepo):
    """Guards the deadline on a plugin's upstream request (host/src/plugins/caps/upstream.rs, `request`): a small
    document must arrive whole within upstream_idle_timeout_seconds, so an upstream that dribbles a manifest (a byte
    every 0.2 s resets any idle timer) holds its plugin instance and client for 2 s, not for ever."""
    up = DribblingUpstream()
    try:
        br = make_binaryrepo(config={"upstream_idle_timeout_seconds": 2})
        br.create_remote("dribble-remote", up.url)
        started = time.monotonic()
        digest = "sha256:" + "ab" * 32
        r = request("GET", br.v2("dribble-remote", f"library/x/manifests/{digest}"), headers={"Accept": ACCEPT_HEADER},
                    timeout=12)
        took = time.monotonic() - started
        assert up.gets >= 1, "the remote was never asked"
        assert r.status == 502 and errors_of(r) == ["UPSTREAM_UNAVAILABLE"], r
        assert took < 6, f"the dribbled manifest held its client for {took:.1f} s"
    finally:
        up.close()
