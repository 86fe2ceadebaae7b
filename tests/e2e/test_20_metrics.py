"""GET /metrics: what an operator watches, in the Prometheus exposition format. A cold pull shows up as
fills and upstream bytes that match the upstream's own access log; a warm pull as blobs served from the store and
not one upstream request. The exposition is read with the Prometheus project's own OpenMetrics parser."""
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
