"""Pull through a remote repository with skopeo (path method: 127.0.0.1:PORT/<repo>/library/small:1):
digests and bytes equal the upstream's; warm pulls do not go upstream; tags are revalidated with one HEAD
only when tag_check_seconds says so."""
import json
import time
from pathlib import Path

from harness.clients import dir_image, skopeo_copy, skopeo_raw
from harness.images import ACCEPT_HEADER
from harness.util import request, sha256_bytes, stream_get

REPO = "docker-remote"


def pull(br, image, dest, by_digest=False, repo=REPO):
    skopeo_copy(image.ref(br.prefix(repo), by_digest=by_digest), dest)
    return dir_image(dest)


def test_pull_by_tag_cold_then_warm(upstream, br, images, tmp_path):
    small = images["small"]
    br.create_remote(REPO, upstream.url)
    m0 = upstream.mark()
    assert pull(br, small, tmp_path / "cold") == (small.digest, small.blobs)
    assert skopeo_raw(small.ref(br.prefix(REPO))) == small.manifest
    cold = upstream.stats(m0)
    assert cold.blob_gets() == {d: [size] for d, size in small.blobs.items()}, \
        f"cold pull: every blob fetched once upstream\n{cold.listing()}"

    m1 = upstream.mark()
    assert pull(br, small, tmp_path / "warm") == (small.digest, small.blobs)
    warm = upstream.stats(m1)
    assert warm.count(kind_="blob") == 0 and warm.count(kind_="manifest") == 0, \
        f"warm pull inside the tag window went upstream:\n{warm.listing()}"


def test_pull_by_digest_cold_then_warm(upstream, br, images, tmp_path):
    small = images["small"]
    br.create_remote(REPO, upstream.url)
    assert pull(br, small, tmp_path / "cold", by_digest=True) == (small.digest, small.blobs)
    m1 = upstream.mark()
    assert pull(br, small, tmp_path / "warm", by_digest=True) == (small.digest, small.blobs)
    warm = upstream.stats(m1)
    assert warm.count(kind_="blob") == 0 and warm.count(kind_="manifest") == 0, warm.listing()
    # the tag was never seen: it is resolved upstream, but nothing else is fetched again
    m2 = upstream.mark()
    assert pull(br, small, tmp_path / "tag", by_digest=False) == (small.digest, small.blobs)
    st = upstream.stats(m2)
    assert st.count(kind_="blob") == 0 and st.count(kind_="manifest") == st.count(kind_="manifest", ref="1") <= 1, \
        st.listing()


def test_tag_check_zero_revalidates_with_one_head(upstream, br, images, tmp_path):
    small = images["small"]
    br.create_remote(REPO, upstream.url, tag_check_seconds=0)
    assert pull(br, small, tmp_path / "cold") == (small.digest, small.blobs)

    m1 = upstream.mark()
    r = request("GET", br.v2(REPO, "library/small/manifests/1"), headers={"Accept": ACCEPT_HEADER})
    assert r.status == 200 and r.body == small.manifest, r
    assert r.header("Docker-Content-Digest") == small.digest, r.headers
    st = upstream.stats(m1)
    assert st.count("HEAD", "manifest") == 1 and st.count("GET", "manifest") == 0 and st.count(kind_="blob") == 0, \
        f"one GET of a cached tag with tag_check_seconds=0: expected exactly one upstream HEAD\n{st.listing()}"

    m2 = upstream.mark()
    assert pull(br, small, tmp_path / "warm") == (small.digest, small.blobs)
    st = upstream.stats(m2)
    assert st.count("GET", "manifest") == 0 and st.count(kind_="blob") == 0 and st.count("HEAD", "manifest") == 1, \
        f"a warm skopeo pull by tag with tag_check_seconds=0: expected exactly one upstream HEAD\n{st.listing()}"


def _retag_upstream(upstream, image, tag):
    """point upstream tag `tag` of image.repo at image's manifest (its blobs are in that repo already)"""
    r = request("PUT", f"{upstream.url}/v2/{image.repo}/manifests/{tag}", body=image.manifest,
                headers={"Content-Type": image.media_type})
    assert r.status == 201, r


def test_moved_tag_is_seen_only_after_tag_check(upstream, br, images):
    small, small2 = images["small"], images["small2"]
    br.create_remote("fresh-tags", upstream.url, tag_check_seconds=0)
    br.create_remote("cached-tags", upstream.url)  # default tag_check_seconds (300)
    for repo in ("fresh-tags", "cached-tags"):
        r = request("GET", br.v2(repo, "library/small/manifests/1"), headers={"Accept": ACCEPT_HEADER})
        assert r.status == 200 and sha256_bytes(r.body) == small.digest, r
    _retag_upstream(upstream, small2, "1")
    r = request("GET", br.v2("fresh-tags", "library/small/manifests/1"), headers={"Accept": ACCEPT_HEADER})
    assert r.status == 200 and sha256_bytes(r.body) == small2.digest, \
        f"tag_check_seconds=0: the moved tag should be seen at once; got {r!r}"
    r = request("GET", br.v2("cached-tags", "library/small/manifests/1"), headers={"Accept": ACCEPT_HEADER})
    assert r.status == 200 and sha256_bytes(r.body) == small.digest, \
        f"inside the tag window the cached tag is served; got {r!r}"


def test_head_and_blob_metadata(upstream, br, images):
    small = images["small"]
    br.create_remote(REPO, upstream.url)
    r = request("HEAD", br.v2(REPO, "library/small/manifests/1"), headers={"Accept": ACCEPT_HEADER})
    assert r.status == 200 and r.header("Docker-Content-Digest") == small.digest, r.headers
    assert int(r.header("Content-Length")) == len(small.manifest)
    assert r.header("Content-Type") == small.media_type
    cfg = json.loads(small.manifest)["config"]
    r = request("GET", br.v2(REPO, f"library/small/blobs/{cfg['digest']}"))
    assert r.status == 200 and sha256_bytes(r.body) == cfg["digest"], r
    r = request("HEAD", br.v2(REPO, f"library/small/blobs/{cfg['digest']}"))
    assert r.status == 200 and int(r.header("Content-Length")) == cfg["size"], r.headers
    r = request("GET", br.v2(REPO, "library/small/manifests/nosuchtag"), headers={"Accept": ACCEPT_HEADER})
    assert r.status == 404 and r.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN", r


def test_tag_window_expires(upstream, br, images):
    small = images["small"]
    br.create_remote(REPO, upstream.url, tag_check_seconds=2)
    url = br.v2(REPO, "library/small/manifests/1")
    assert request("GET", url, headers={"Accept": ACCEPT_HEADER}).status == 200
    m1 = upstream.mark()
    assert request("GET", url, headers={"Accept": ACCEPT_HEADER}).body == small.manifest
    assert upstream.stats(m1).count(kind_="manifest") == 0, upstream.stats(m1).listing()
    time.sleep(2.5)
    m2 = upstream.mark()
    assert request("GET", url, headers={"Accept": ACCEPT_HEADER}).body == small.manifest
    assert request("GET", url, headers={"Accept": ACCEPT_HEADER}).body == small.manifest
    st = upstream.stats(m2)
    assert st.count("HEAD", "manifest") == 1 and st.count("GET", "manifest") == 0, \
        f"after the tag window: one HEAD, then a fresh window\n{st.listing()}"


def test_range_request_on_cached_blob(upstream, br, images):
    small = images["small"]
    layer, size = small.largest_layer()
    data = (Path(small.layout) / "blobs" / "sha256" / layer.split(":")[1]).read_bytes()
    br.create_remote(REPO, upstream.url)
    url = br.v2(REPO, f"library/small/blobs/{layer}")
    assert stream_get(url).digest == layer  # cached now
    r = request("GET", url, headers={"Range": "bytes=1000-1999"})
    assert r.status == 206 and r.body == data[1000:2000], r
    assert r.header("Content-Range") == f"bytes 1000-1999/{size}", r.headers
    r = request("GET", url, headers={"Range": f"bytes={size - 10}-"})
    assert r.status == 206 and r.body == data[-10:], r


def test_unknown_and_bad_requests_get_oci_errors(upstream, br, images):
    small = images["small"]
    br.create_remote(REPO, upstream.url)
    zero = "sha256:" + "0" * 64
    r = request("GET", br.v2(REPO, f"library/small/blobs/{zero}"))
    assert r.status == 404 and r.json()["errors"][0]["code"] == "BLOB_UNKNOWN", r
    assert request("HEAD", br.v2(REPO, f"library/small/blobs/{zero}")).status == 404
    r = request("GET", br.v2(REPO, "library/nosuchimage/manifests/1"), headers={"Accept": ACCEPT_HEADER})
    assert r.status == 404 and r.json()["errors"][0]["code"] in ("MANIFEST_UNKNOWN", "NAME_UNKNOWN"), r
    bad = [
        ("GET", "library/small/blobs/sha256:xyz"),
        ("GET", "library/small/blobs/md5:0123456789abcdef0123456789abcdef"),
        ("GET", "library/small/manifests/sha256:" + "z" * 64),
        ("GET", "Library/Small/manifests/1"),
        ("GET", "library/small/manifests/bad:tag:x"),
        ("GET", "%2e%2e/%2e%2e/etc/passwd/manifests/1"),
        ("GET", "library/small/manifests/" + "t" * 300),
        ("PUT", "library/small/manifests/1"),
        ("DELETE", f"library/small/manifests/{small.digest}"),
        ("POST", "library/small/blobs/uploads/"),
    ]
    for method, path in bad:
        r = request(method, br.v2(REPO, path), body=b"{}" if method in ("PUT", "POST") else None,
                    headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"} if method == "PUT" else None)
        assert 400 <= r.status < 500, f"{method} {path}: expected a client error, got {r!r}"
        assert r.json().get("errors"), f"{method} {path}: not an OCI error body: {r!r}"
    r = request("GET", f"{br.url}/v2/{REPO}/" + "a/" * 5000 + "manifests/1")
    assert 400 <= r.status < 500, f"a 10 KB path: {r!r}"
    # the image is still served after all that
    r = request("GET", br.v2(REPO, "library/small/manifests/1"), headers={"Accept": ACCEPT_HEADER})
    assert r.status == 200 and r.body == small.manifest
