"""Plans reused without a plugin call (contract 0.2.1, `reusable`): a plan the plugin offered answers the same
request again -- a warm manifest GET by tag costs no plugin call -- and never once it could be wrong: a header the
plan varies on differs, the repository's metadata was written (a push to the tag, a delete), the offer ran out (a
tag's check window), or the repository was reconfigured. A call that wrote anything is never reused, whatever it
offered.

The first test uses the test plugin (plugins/testdata/misbehave, see test_17): its `count` tells a reused plan (the
same number again) from a new decision (the instance's next number). The others drive the Docker plugin with real
clients and check what a user sees."""
import time

from harness.images import ACCEPT_HEADER
from harness.util import request, sha256_bytes
from test_02_pull import _retag_upstream
from test_12_push import push_layout
from test_17_plugin_isolation import start  # noqa: F401  (a fixture)

LOCAL = "docker-local"


def get(b, action, variant=None):
    headers = {"X-Variant": variant} if variant else {}
    r = request("GET", f"{b.url}/repo/mb/{action}", headers=headers, timeout=30)
    assert r.status == 200, f"{action}: {r!r}\n{b.log_tail(10)}"
    return r.text()


def test_an_offered_plan_answers_again_until_a_header_or_the_metadata_changes(start):  # noqa: F811
    b = start()
    assert [get(b, "reusable") for _ in range(3)] == ["1", "1", "1"], "the plan offered by the first call is reused"
    # another value of a header the plan varies on is another request
    assert [get(b, "reusable", "b") for _ in range(2)] == ["2", "2"]
    # a call that wrote is not reused, whatever it offered ...
    assert [get(b, "reusable-write") for _ in range(2)] == ["3", "4"]
    # ... and its write to the repository's metadata retired the plan kept for `reusable`
    assert get(b, "reusable", "b") == "5"
    # plain `count` offers nothing: every request is the plugin's
    assert [get(b, "count") for _ in range(2)] == ["6", "7"]


def manifest_by_tag(br, repo, name, tag):
    return request("GET", br.v2(repo, f"{name}/manifests/{tag}"), headers={"Accept": ACCEPT_HEADER})


def test_a_push_or_delete_is_seen_at_once_by_a_reused_tag(local_br, images):
    br, small, small2 = local_br, images["small"], images["small2"]
    ref = f"{br.prefix(LOCAL)}/e2e/app:1"
    push_layout(small, ref)
    for _ in range(3):
        r = manifest_by_tag(br, LOCAL, "e2e/app", "1")
        assert r.status == 200 and sha256_bytes(r.body) == small.digest, r
    push_layout(small2, ref)
    r = manifest_by_tag(br, LOCAL, "e2e/app", "1")
    assert r.status == 200 and r.header("Docker-Content-Digest") == small2.digest and r.body == small2.manifest, \
        f"the tag was pushed again: the next GET must serve the new manifest\n{r!r}"
    r = request("DELETE", br.v2(LOCAL, f"e2e/app/manifests/{small2.digest}"))
    assert r.status == 202, r
    r = manifest_by_tag(br, LOCAL, "e2e/app", "1")
    assert r.status == 404 and r.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN", \
        f"the manifest was deleted: its tag must be unknown at once\n{r!r}"
    r = request("GET", br.v2(LOCAL, f"e2e/app/manifests/{small2.digest}"))
    assert r.status == 404, r


def test_a_reused_tag_never_outlives_its_check_window(upstream, br, images):
    small, small2 = images["small"], images["small2"]
    br.create_remote("short-remote", upstream.url, tag_check_seconds=3)
    t0 = time.monotonic()
    assert sha256_bytes(manifest_by_tag(br, "short-remote", "library/small", "1").body) == small.digest
    m = upstream.mark()
    while time.monotonic() - t0 < 1.5:
        r = manifest_by_tag(br, "short-remote", "library/small", "1")
        assert r.status == 200 and sha256_bytes(r.body) == small.digest, r
    assert upstream.stats(m).count(kind_="manifest") == 0, upstream.stats(m).listing()
    _retag_upstream(upstream, small2, "1")
    time.sleep(max(0.0, t0 + 3.2 - time.monotonic()))
    r = manifest_by_tag(br, "short-remote", "library/small", "1")
    assert r.status == 200 and sha256_bytes(r.body) == small2.digest, \
        f"past the 3 s window the moved tag must be seen\n{r!r}"


def test_a_reconfigured_repository_decides_afresh(upstream, br, images):
    small = images["small"]
    br.create_remote("cfg-remote", upstream.url)  # tag_check_seconds 300
    for _ in range(3):
        assert sha256_bytes(manifest_by_tag(br, "cfg-remote", "library/small", "1").body) == small.digest
    r = br.api("PUT", "/api/repositories/cfg-remote",
               json_body={"type": "remote", "format": "docker", "url": upstream.url, "tag_check_seconds": 0})
    assert r.status == 200, r
    m = upstream.mark()
    r = manifest_by_tag(br, "cfg-remote", "library/small", "1")
    assert r.status == 200 and sha256_bytes(r.body) == small.digest, r
    st = upstream.stats(m)
    assert st.count("HEAD", "manifest") == 1, \
        f"tag_check_seconds is now 0: the GET must revalidate upstream, not reuse the old plan\n{st.listing()}"
