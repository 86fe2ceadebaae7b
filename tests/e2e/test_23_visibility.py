"""Repositories see only their own content. The blob store is shared and content-addressed, but a blob or
manifest is served through a repository and image name only when that name holds it: pushed or mounted
there (local), fetched through it or confirmed by the upstream for it (remote), or held by the member a
virtual repository answers from. Everything else is the 404 a digest stored nowhere gets, and a remote asks
its upstream under the requested name before serving a copy stored for something else.

The upstream is a real distribution registry, which keeps per-repository layer links itself: a HEAD of a
blob under a name it was never pushed to is 404 there too."""
import urllib.parse

import pytest

from harness.clients import dir_image, skopeo_copy
from harness.oci import Oci, build_image, errors_of
from harness.util import request

SECRET = "e2e/secret"


def blob(br, repo, name, digest, method="GET"):
    return request(method, br.v2(repo, f"{name}/blobs/{digest}"))


def manifest(br, repo, name, ref, method="GET"):
    return request(method, br.v2(repo, f"{name}/manifests/{ref}"),
                   headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})


def assert_unknown(r, code, what):
    assert r.status == 404, f"{what}: expected 404 {code}, got {r!r}"
    if r.body:
        assert errors_of(r) == [code], f"{what}: {r!r}"


@pytest.fixture
def repos(upstream, local_br):
    """docker-local holds e2e/secret (pushed); team-local and docker-remote never had it."""
    br = local_br
    br.create_local("team-local")
    br.create_remote("docker-remote", upstream.url)
    secret = build_image("visibility-secret", layer_sizes=(3000, 70000))
    Oci(br.url, "docker-local").push_image(SECRET, secret, tag="1")
    return br, secret


def test_a_pushed_blob_is_not_served_by_another_name_repository_or_remote(repos, upstream):
    """Guards local::blob's link check (same repository, other name; other local repository) and
    remote::stored_blob / remote::manifest_by_digest (a remote serves a stored copy only after its upstream
    says yes under that name)."""
    br, secret = repos
    layer = secret.layers[1]
    for _ in range(2):  # the second answered by the plan the first offered for reuse
        r = blob(br, "docker-local", SECRET, layer)
        assert r.status == 200 and r.body == secret.blobs[layer], r

    for repo, name in [("docker-local", "e2e/other"), ("team-local", SECRET)]:
        for method in ("GET", "HEAD"):
            assert_unknown(blob(br, repo, name, layer, method), "BLOB_UNKNOWN", f"{method} {repo}/{name} blob")
        assert_unknown(manifest(br, repo, name, secret.digest), "MANIFEST_UNKNOWN", f"{repo}/{name} manifest")

    # the remote: its upstream never had the blob; it is asked under the name and says 404
    m0 = upstream.mark()
    got = {method: blob(br, "docker-remote", SECRET, layer, method) for method in ("GET", "HEAD")}
    for method, r in got.items():
        assert_unknown(r, "BLOB_UNKNOWN", f"{method} docker-remote/{SECRET} blob")
    assert_unknown(manifest(br, "docker-remote", SECRET, secret.digest), "MANIFEST_UNKNOWN", "remote manifest")
    st = upstream.stats(m0)
    asked = st.select(ref=layer)
    assert asked and all(e.status == 404 and f"/v2/{SECRET}/blobs/" in e.path for e in asked), st.listing()
    # asked once: the GET's 404 is remembered for the remote's miss_cache_seconds and answers the HEAD too
    assert st.count("HEAD", "blob", status=404, ref=layer) >= 1, st.listing()
    assert st.count("HEAD", "manifest", status=404, ref=secret.digest) == 1, st.listing()
    assert not [e for e in st.entries if e.kind in ("blob", "manifest") and e.status < 400], st.listing()
    # no hint that it is stored: a digest stored nowhere gets the same answer
    nowhere = "sha256:" + "0" * 64
    cold = blob(br, "docker-remote", SECRET, nowhere)
    assert (cold.status, cold.body) == (got["GET"].status, got["GET"].body), (cold, got["GET"])


def test_a_mount_makes_the_blob_visible_under_the_new_name(repos):
    """Guards mount::mountable: a mount without `from` looks only in its own repository; a mount from the
    image that holds the blob links it."""
    br, secret = repos
    layer = secret.layers[0]
    team = Oci(br.url, "team-local")
    r = team.start_upload("e2e/copy", query=urllib.parse.urlencode({"mount": layer}))
    assert r.status == 202, f"a mount without from must not find another repository's blob: {r!r}"
    assert_unknown(blob(br, "team-local", "e2e/copy", layer), "BLOB_UNKNOWN", "after a refused mount")

    local = Oci(br.url, "docker-local")
    r = local.start_upload("e2e/other", query=urllib.parse.urlencode({"mount": layer, "from": f"docker-local/{SECRET}"}))
    assert r.status == 201, r
    r = blob(br, "docker-local", "e2e/other", layer)
    assert r.status == 200 and r.body == secret.blobs[layer], r

    r = team.start_upload("e2e/copy", query=urllib.parse.urlencode({"mount": layer, "from": f"docker-local/{SECRET}"}))
    assert r.status == 201, r
    r = blob(br, "team-local", "e2e/copy", layer)
    assert r.status == 200 and r.body == secret.blobs[layer], r


def test_a_virtual_serves_the_blob_only_through_the_member_that_holds_it(repos, upstream):
    """A virtual repository answers what a member answers (server::run_virtual, member by member); a
    cross-repository mount through a virtual (writes go to its default_local) links the blob there."""
    br, secret = repos
    layer = secret.layers[1]
    br.create_virtual("v-without", ["team-local", "docker-remote"], default_local="team-local")
    br.create_virtual("v-with", ["team-local", "docker-local"], default_local="team-local")
    m0 = upstream.mark()
    assert_unknown(blob(br, "v-without", SECRET, layer), "BLOB_UNKNOWN", "virtual without the holder")
    assert upstream.stats(m0).count(kind_="blob", status=200) == 0, upstream.stats(m0).listing()
    r = blob(br, "v-with", SECRET, layer)
    assert r.status == 200 and r.body == secret.blobs[layer], r
    assert_unknown(blob(br, "v-with", "e2e/elsewhere", layer), "BLOB_UNKNOWN", "virtual, another name")

    # mounted through the virtual into its default_local (team-local), from the virtual's name
    v = Oci(br.url, "v-with")
    r = v.start_upload("e2e/mounted", query=urllib.parse.urlencode({"mount": layer, "from": f"v-with/{SECRET}"}))
    assert r.status == 201, r
    r = blob(br, "team-local", "e2e/mounted", layer)
    assert r.status == 200 and r.body == secret.blobs[layer], r
    r = blob(br, "v-without", "e2e/mounted", layer)
    assert r.status == 200 and r.body == secret.blobs[layer], "now team-local holds it under e2e/mounted"


def test_a_remote_asks_its_upstream_before_serving_a_blob_cached_under_another_name(repos, upstream, images, tmp_path):
    """Guards remote::stored_blob: a blob cached for library/small is served under another name only when
    the upstream confirms that name may see it (a HEAD, no second download), and a warm pull of what was
    fetched through a name never goes upstream."""
    br, _ = repos
    small = images["small"]
    skopeo_copy(small.ref(br.prefix("docker-remote")), tmp_path / "cold")
    assert dir_image(tmp_path / "cold") == (small.digest, small.blobs)
    m0 = upstream.mark()
    skopeo_copy(small.ref(br.prefix("docker-remote")), tmp_path / "warm")
    assert dir_image(tmp_path / "warm") == (small.digest, small.blobs)
    warm = upstream.stats(m0)
    assert warm.count(kind_="blob") == 0 and warm.count(kind_="manifest") == 0, warm.listing()

    layer = max(small.blobs, key=small.blobs.get)
    # a name the upstream does not give the blob to: asked, refused, not served
    m1 = upstream.mark()
    assert_unknown(blob(br, "docker-remote", "e2e/not-granted", layer), "BLOB_UNKNOWN", "ungranted name")
    st = upstream.stats(m1)
    assert st.count("HEAD", "blob", status=404, ref=layer) == 1 and st.count(kind_="blob", status=200) == 0, st.listing()

    # the upstream links the blob to another name (a mount there): one HEAD, served from the cache
    r = request("POST", f"{upstream.url}/v2/e2e/granted/blobs/uploads/?"
                + urllib.parse.urlencode({"mount": layer, "from": small.repo}))
    assert r.status == 201, f"mount in the upstream: {r!r}"
    m2, before = upstream.mark(), br.metrics()
    for _ in range(3):
        r = blob(br, "docker-remote", "e2e/granted", layer)
        assert r.status == 200 and len(r.body) == small.blobs[layer], r
    st = upstream.stats(m2)
    assert st.count("HEAD", "blob", ref=layer) == 1 and st.count("GET", "blob") == 0, st.listing()
    # the warm GET of a held blob is still offered for reuse (host/src/plugins/reuse.rs), and a reused plan,
    # keyed by the path, never answers another name
    reused = dict(repository="docker-remote", plan="serve-blob", source="reused")
    assert br.metrics().value("binaryrepo_plans_total", **reused) > before.value("binaryrepo_plans_total", **reused)
    assert_unknown(blob(br, "docker-remote", "e2e/not-granted", layer), "BLOB_UNKNOWN", "ungranted name, after reuse")
