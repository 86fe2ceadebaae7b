"""GET /metrics: what an operator watches, in the Prometheus exposition format. A cold pull shows up as
fills and upstream bytes that match the upstream's own access log; a warm pull as blobs served from the store and
not one upstream request. The exposition is read with the Prometheus project's own OpenMetrics parser."""
from concurrent.futures import ThreadPoolExecutor

from prometheus_client.openmetrics.parser import text_string_to_metric_families

from harness.clients import dir_image, skopeo_copy
from harness.util import request

REPO = "docker-remote"


def delta(after, before, name, **labels):
    return after.value(name, **labels) - before.value(name, **labels)


def test_a_cold_then_a_warm_pull_in_the_metrics(upstream, br, images, tmp_path):
    small = images["small"]
    br.create_remote(REPO, upstream.url)
    m0, u0 = br.metrics(), upstream.mark()
    skopeo_copy(small.ref(br.prefix(REPO)), tmp_path / "cold")
    assert dir_image(tmp_path / "cold") == (small.digest, small.blobs)
    m1, cold = br.metrics(), upstream.stats(u0)

    assert delta(m1, m0, "binaryrepo_blob_fetches_total", repository=REPO, result="started") == len(small.blobs)
    assert delta(m1, m0, "binaryrepo_upstream_body_bytes_total", repository=REPO) == cold.body_bytes(), cold.listing()
    assert delta(m1, m0, "binaryrepo_upstream_requests_total", repository=REPO) == len(cold.entries), cold.listing()
    assert delta(m1, m0, "binaryrepo_upstream_errors_total") == 0
    assert delta(m1, m0, "binaryrepo_plugin_calls_total", format="docker", export="handle", outcome="ok") > 0
    assert delta(m1, m0, "binaryrepo_plugin_calls_total", outcome="failed") == 0

    u1 = upstream.mark()
    skopeo_copy(small.ref(br.prefix(REPO)), tmp_path / "warm")
    assert dir_image(tmp_path / "warm") == (small.digest, small.blobs)
    m2, warm = br.metrics(), upstream.stats(u1)
    assert warm.entries == [], warm.listing()
    assert delta(m2, m1, "binaryrepo_upstream_requests_total") == 0, "a warm pull inside the tag window stays local"
    assert delta(m2, m1, "binaryrepo_upstream_body_bytes_total") == 0
    assert delta(m2, m1, "binaryrepo_plans_total", repository=REPO, plan="fetch-blob") == 0
    assert delta(m2, m1, "binaryrepo_plans_total", repository=REPO, plan="serve-blob") >= len(small.blobs), m2.text
    served = delta(m2, m1, "binaryrepo_http_response_body_bytes_total", repository=REPO)
    assert served >= small.total_bytes + len(small.manifest), f"{served} < the image's {small.total_bytes} bytes"
    gets = delta(m2, m1, "binaryrepo_http_requests_total", repository=REPO, method="GET", status=200)
    assert gets >= len(small.blobs) + 1, m2.text
    latency = delta(m2, m1, "binaryrepo_http_request_duration_seconds_count", repository=REPO)
    assert latency == delta(m2, m1, "binaryrepo_http_requests_total", repository=REPO)


def test_the_exposition_parses_and_stays_bounded(br, upstream):
    br.create_remote(REPO, upstream.url)
    # a method nobody registered is counted, under a bounded label
    r = request("BREW", br.v2(REPO, ""))
    assert r.status == 405, r
    r = request("GET", br.url + "/metrics")
    assert r.status == 200 and r.header("Content-Type").startswith("application/openmetrics-text"), r
    text = r.body.decode()
    assert text.endswith("# EOF\n")
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, kind in [("binaryrepo_http_requests", "counter"), ("binaryrepo_http_request_duration_seconds", "histogram"),
                       ("process_resident_memory_bytes", "gauge"), ("process_cpu_seconds", "counter"),
                       ("binaryrepo_upstream_fills_in_flight", "gauge")]:
        assert name in families and families[name].type == kind, f"{name}: {families.get(name)}"
    methods = {s.labels["method"] for s in families["binaryrepo_http_requests"].samples}
    assert "BREW" not in methods and "other" in methods, methods
    rss = families["process_resident_memory_bytes"].samples[0].value
    assert 1 << 20 < rss < 1 << 30, rss

    head = request("HEAD", br.url + "/metrics")
    assert head.status == 200 and head.body == b"", head
    post = request("POST", br.url + "/metrics")
    assert post.status == 405 and post.json()["error"]["code"] == "METHOD_NOT_ALLOWED", post


def test_every_read_is_counted_and_logged_however_fast_they_come(upstream, br, images, tmp_path):
    """Reads answered 200/206/304/404 are counted and logged once the worker that answered them runs out of work
    (server/account.rs), off the time their client waits: a scrape right after a burst still counts every one of
    them, every one has its access line, and none is lost when the server stops right after a burst. (What a
    scrape does when a worker has not run out of work yet, `flush_all`, and the queue's bound are proven by the
    unit test in server/account.rs: a client cannot hold a worker busy at will.)"""
    small = images["small"]
    br.create_remote(REPO, upstream.url)
    skopeo_copy(small.ref(br.prefix(REPO)), tmp_path / "cold")
    manifest = br.v2(REPO, f"{small.repo}/manifests/{small.tag}")
    missing = br.v2(REPO, f"{small.repo}/manifests/no-such-tag")
    assert request("GET", missing).status == 404
    m0 = br.metrics()
    br.served(br.log_mark())  # the log writer has written the lines so far (it batches them up to 50 ms)
    mark = br.log_mark()
    asked = [("GET", manifest)] * 400 + [("HEAD", manifest)] * 100 + [("GET", missing)] * 60
    with ThreadPoolExecutor(8) as ex:
        statuses = list(ex.map(lambda a: request(a[0], a[1]).status, asked))
    assert statuses.count(200) == 500 and statuses.count(404) == 60, set(statuses)
    m1 = br.metrics()
    for method, status, n in (("GET", "200", 400), ("HEAD", "200", 100), ("GET", "404", 60)):
        assert delta(m1, m0, "binaryrepo_http_requests_total", repository=REPO, method=method, status=status) == n, (method, status)
    lines = [s for s in br.served(mark) if s[1].startswith(f"/v2/{REPO}/{small.repo}/manifests/")]
    assert len(lines) == len(asked), len(lines)
    # a burst, then the server stops at once: every line is in the log
    br.served(br.log_mark())
    mark = br.log_mark()
    with ThreadPoolExecutor(8) as ex:
        assert set(ex.map(lambda _: request("GET", manifest).status, range(200))) == {200}
    br.stop()
    assert len([s for s in br.served(mark) if s[1].endswith(f"/manifests/{small.tag}")]) == 200
