"""Cache limits of remote repositories: `cache_max_bytes` (a size budget: what was pulled least recently is
evicted first) and `cache_max_age_days`, enforced by every garbage collection run. A remote whose budget is
smaller than what was pulled through it is back under budget after a run, and an evicted image pulls again
(fetched from upstream once more)."""
import time

from harness.clients import dir_image, skopeo_copy
from harness.util import wait_until

REMOTE = "docker-remote"


def cached_bytes(br, digests):
    return sum(br.blob_path(d).stat().st_size for d in digests if br.blob_path(d).is_file())


def all_digests(img):
    return set(img.blobs) | {img.digest}


def test_a_remote_over_its_budget_evicts_least_recently_pulled_and_pulls_again(upstream, br, images, tmp_path):
    small, small2 = images["small"], images["small2"]
    budget = 1 << 20  # "small" alone has a 2 MiB layer; "small2" is ~300 KiB
    r = br.api("POST", "/api/repositories", {"name": REMOTE, "type": "remote", "format": "docker",
                                             "url": upstream.url, "cache_max_bytes": budget})
    assert r.status == 201 and r.json()["cache_max_bytes"] == budget, r

    skopeo_copy(small.ref(br.prefix(REMOTE)), tmp_path / "a")
    time.sleep(1.1)  # access times have whole seconds
    skopeo_copy(small2.ref(br.prefix(REMOTE)), tmp_path / "b")
    every = all_digests(small) | all_digests(small2)
    wait_until(lambda: all(br.blob_path(d).is_file() for d in set(small.blobs) | set(small2.blobs)), timeout=15,
               what="the pulled blobs in the cache")
    before = cached_bytes(br, every)
    assert before > budget, f"the test needs more cached ({before}) than the budget ({budget})"

    res = br.gc(repo=REMOTE, grace_seconds=None)
    after = cached_bytes(br, every)
    assert after <= budget, f"the remote holds {after} bytes after a run, its budget is {budget}: {res}"
    assert res["evicted"] >= 1 and res["evicted_bytes"] >= before - after, res
    big_layer, _ = small.largest_layer()
    assert not br.blob_path(big_layer).exists(), "the least recently pulled (and largest) layer was kept"
    assert all(br.blob_path(d).is_file() for d in small2.blobs), "the most recently pulled image was evicted"

    # the evicted image pulls again: its layer comes from upstream once more
    m = upstream.mark()
    skopeo_copy(small.ref(br.prefix(REMOTE)), tmp_path / "a2")
    assert dir_image(tmp_path / "a2") == (small.digest, small.blobs)
    assert upstream.stats(m).count(kind_="blob") >= 1, "an evicted blob was served without fetching it again"
    # and the one still cached comes from the cache
    m = upstream.mark()
    skopeo_copy(small2.ref(br.prefix(REMOTE)), tmp_path / "b2")
    assert dir_image(tmp_path / "b2") == (small2.digest, small2.blobs)
    assert upstream.stats(m).count(kind_="blob") == 0, upstream.stats(m).listing()

    wait_until(lambda: br.blob_path(big_layer).is_file(), timeout=15, what="the re-fetched layer in the cache")
    res = br.gc(repo=REMOTE, grace_seconds=None)
    assert cached_bytes(br, every) <= budget, res


def test_a_remote_without_limits_keeps_everything_and_limits_are_validated(upstream, br, images, tmp_path):
    small = images["small"]
    br.create_remote(REMOTE, upstream.url)
    skopeo_copy(small.ref(br.prefix(REMOTE)), tmp_path / "a")
    wait_until(lambda: all(br.blob_path(d).is_file() for d in small.blobs), timeout=15, what="the cache")
    res = br.gc(repo=REMOTE, grace_seconds=0)
    assert res["evicted"] == 0 and all(br.blob_path(d).is_file() for d in small.blobs), res

    r = br.api("POST", "/api/repositories", {"name": "loc", "type": "local", "format": "docker",
                                             "cache_max_bytes": 1000})
    assert r.status == 400 and "remote" in r.body.decode(), r
    r = br.api("POST", "/api/repositories", {"name": "rem", "type": "remote", "format": "docker",
                                             "url": upstream.url, "cache_max_age_days": 0})
    assert r.status == 400, r
    r = br.api("PUT", f"/api/repositories/{REMOTE}", {"type": "remote", "format": "docker", "url": upstream.url,
                                                     "cache_max_age_days": 30, "cache_max_bytes": 10 << 30})
    assert r.status == 200 and r.json()["cache_max_age_days"] == 30 and r.json()["cache_max_bytes"] == 10 << 30, r
