"""The upstream goes away after a warm pull: cached content is still served, fast."""
import time

from harness.clients import dir_image, skopeo_copy
from harness.images import ACCEPT_HEADER
from harness.util import Blackhole, request, stream_get

LIMIT = 5.0  # seconds for one pull with the upstream down


def timed(fn, *a, **kw):
    t = time.monotonic()
    out = fn(*a, **kw)
    return out, time.monotonic() - t


def test_cached_content_served_with_upstream_down(upstream, make_binaryrepo, images, tmp_path):
    small, big = images["small"], images["big"]
    br = make_binaryrepo(config={"upstream_connect_timeout_ms": 2000, "upstream_down_seconds": 30})
    # tag_check_seconds=0: every tag request wants to revalidate upstream, the hard case
    br.create_remote("docker-remote", upstream.url, tag_check_seconds=0)
    skopeo_copy(small.ref(br.prefix("docker-remote")), tmp_path / "warm")
    upstream.stop()

    timings = {}
    for i, by_digest in enumerate((False, True, False)):
        dest = tmp_path / f"down{i}"
        _, timings[f"skopeo {'digest' if by_digest else 'tag'} #{i}"] = timed(
            skopeo_copy, small.ref(br.prefix("docker-remote"), by_digest=by_digest), dest)
        assert dir_image(dest) == (small.digest, small.blobs)
    r, timings["GET manifest by tag"] = timed(
        request, "GET", br.v2("docker-remote", "library/small/manifests/1"), headers={"Accept": ACCEPT_HEADER})
    assert r.status == 200 and r.body == small.manifest, r
    layer, size = small.largest_layer()
    got, timings["GET blob"] = timed(stream_get, br.v2("docker-remote", f"library/small/blobs/{layer}"))
    assert got.status == 200 and got.digest == layer, got
    slow = {k: round(v, 2) for k, v in timings.items() if v >= LIMIT}
    assert not slow, f"pulls with the upstream down took too long: {slow} (all: {timings})"

    # something never cached: a prompt error in the OCI shape, not a hang
    r, took = timed(request, "GET", br.v2("docker-remote", f"{big.repo}/manifests/{big.tag}"),
                    headers={"Accept": ACCEPT_HEADER})
    assert r.status >= 400 and "errors" in r.json(), r
    assert took < LIMIT, f"uncached manifest with upstream down took {took:.1f}s"


def test_unreachable_upstream_is_marked_down(upstream, make_binaryrepo, images, tmp_path):
    """Connects to the upstream hang (host down, SYNs dropped): the first revalidation waits for the connect
    timeout at most, then the upstream counts as down and cached content is served without waiting."""
    small = images["small"]
    br = make_binaryrepo(config={"upstream_connect_timeout_ms": 1500, "upstream_down_seconds": 60})
    br.create_remote("docker-remote", upstream.url, tag_check_seconds=0)
    skopeo_copy(small.ref(br.prefix("docker-remote")), tmp_path / "warm")
    upstream.stop()
    hole = Blackhole(upstream.port)
    try:
        url = br.v2("docker-remote", "library/small/manifests/1")
        errors = br.metrics().value("binaryrepo_upstream_errors_total", repository="docker-remote")
        r, first = timed(request, "GET", url, headers={"Accept": ACCEPT_HEADER})
        assert r.status == 200 and r.body == small.manifest, r
        assert first < 1.5 + 2.5, f"first request with a hanging upstream took {first:.1f}s (connect timeout 1.5s)"
        r, second = timed(request, "GET", url, headers={"Accept": ACCEPT_HEADER})
        assert r.status == 200 and r.body == small.manifest, r
        assert second < 1.0, f"upstream marked down, yet the second request took {second:.1f}s (first {first:.1f}s)"
        # the one attempt that timed out is counted; while marked down nothing more is sent
        assert br.metrics().value("binaryrepo_upstream_errors_total", repository="docker-remote") == errors + 1
        for by_digest in (False, True):
            dest = tmp_path / f"d{by_digest}"
            _, took = timed(skopeo_copy, small.ref(br.prefix("docker-remote"), by_digest=by_digest), dest)
            assert dir_image(dest) == (small.digest, small.blobs)
            assert took < LIMIT, f"skopeo pull (by_digest={by_digest}) with the upstream down took {took:.1f}s"
    finally:
        hole.close()
