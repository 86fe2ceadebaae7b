"""Nothing lost, nothing stuck, for Docker/OCI: a push through a virtual repository whose layers a remote member
already caches, concurrent cold pulls of one tag making one upstream manifest GET and one token request, upstream
404s remembered briefly, and range requests on an empty blob."""
import threading
import time

from harness.clients import dir_image, skopeo_copy
from harness.images import ACCEPT_HEADER, skopeo
from harness.oci import errors_of
from harness.util import request, sha256_bytes

N = 20


def concurrently(n, fn):
    """fn(i) for i in range(n), all released at once; the results in order."""
    barrier = threading.Barrier(n)
    results = [None] * n

    def run(i):
        barrier.wait()
        try:
            results[i] = fn(i)
        except Exception as e:  # noqa: BLE001
            results[i] = e
    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


# --- a push through a virtual repository, whatever its members hold -------------------------------------------


def test_push_through_virtual_reuses_layers_a_remote_member_caches(upstream, local_br, images, tmp_path):
    """team/app:1 lives upstream and is pulled through the virtual repository (cached by its remote member);
    pushing team/app:2 with the same layers through the virtual repository skips their upload (the blob HEADs
    are answered by the remote) and the default local member still takes the manifest, and serves the image"""
    br, small = local_br, images["small"]
    skopeo("copy", "--dest-tls-verify=false", f"oci:{small.layout}:{small.tag}", f"docker://{upstream.host}/team/app:1",
           timeout=300)
    br.create_remote("docker-remote", upstream.url)
    br.create_virtual("docker-virtual", ["docker-local", "docker-remote"], default_local="docker-local")
    skopeo_copy(f"{br.prefix('docker-virtual')}/team/app:1", tmp_path / "base")
    assert dir_image(tmp_path / "base") == (small.digest, small.blobs)
    for d in small.blobs:
        r = request("HEAD", br.v2("docker-virtual", f"team/app/blobs/{d}"))
        assert r.status == 200, f"the virtual repository answers the blob HEAD from its remote member: {r!r}"

    m = upstream.mark()
    skopeo("copy", "--dest-tls-verify=false", f"oci:{small.layout}:{small.tag}",
           f"docker://{br.prefix('docker-virtual')}/team/app:2", timeout=300)
    assert upstream.stats(m).count() == 0, upstream.stats(m).listing()

    skopeo_copy(f"{br.prefix('docker-local')}/team/app:2", tmp_path / "pushed")
    assert dir_image(tmp_path / "pushed") == (small.digest, small.blobs), "the pushed image, read from docker-local"
    r = request("GET", br.v2("docker-local", "team/app/tags/list"))
    assert r.status == 200 and r.json()["tags"] == ["2"], r

    # a local repository no virtual repository pushes into takes nothing from elsewhere
    br.create_local("other-local")
    r = request("PUT", br.v2("other-local", "team/app/manifests/2"), body=small.manifest,
                headers={"Content-Type": small.media_type})
    assert r.status == 400 and "MANIFEST_BLOB_UNKNOWN" in errors_of(r), r


# --- concurrent cold pulls: one manifest GET, one token request -----------------------------------------------


def test_concurrent_cold_pulls_make_one_manifest_get_and_one_token_request(token_server, make_upstream, br, images):
    ts = token_server(anonymous=True)
    up = make_upstream("tok-coalesce", auth=ts.registry_auth())
    small = images["small"]
    br.create_remote("tok-remote", up.url)
    m = up.mark()

    def pull(i):
        r = request("GET", br.v2("tok-remote", f"{small.repo}/manifests/{small.tag}"), headers={"Accept": ACCEPT_HEADER})
        return r.status, sha256_bytes(r.body)
    results = concurrently(N, pull)
    assert results == [(200, small.digest)] * N, results

    st = up.stats(m)
    assert st.count("GET", "manifest") == 1, f"one upstream manifest GET for {N} cold pulls:\n{st.listing()}"
    # (HEADs of the tag may be more on a loaded machine: a pull that reaches the server after the tag's HEAD
    # was sent revalidates the tag itself; registries do not count HEADs against pull limits)
    assert ts.count() == 1, f"one token request for {N} cold pulls: {len(ts.requests)}"

    # and the blobs the pulls go on to fetch: one GET each, with the token already held
    def blob(i):
        d = list(small.blobs)[i % len(small.blobs)]
        r = request("GET", br.v2("tok-remote", f"{small.repo}/blobs/{d}"))
        return r.status, sha256_bytes(r.body) == d
    assert concurrently(N, blob) == [(200, True)] * N
    st = up.stats(m)
    assert st.blob_gets(status=None) == {d: [s] for d, s in small.blobs.items()}, st.listing()
    assert ts.count() == 1, ts.requests


# --- upstream misses remembered briefly ----------------------------------------------------------------------


def test_upstream_misses_are_remembered_briefly(upstream, br, images):
    """a storm of pulls of a tag the upstream lacks makes one upstream request; a tag pushed upstream afterwards
    is seen once the remote's miss_cache_seconds have passed"""
    small = images["small"]
    assert br.create_remote("plain-remote", upstream.url)["miss_cache_seconds"] == 5, "the default"
    r = br.create_remote("misses-remote", upstream.url, miss_cache_seconds=3)
    assert r["miss_cache_seconds"] == 3, r
    bad = br.api("POST", "/api/repositories", json_body={"name": "too-long", "type": "remote", "format": "docker",
                                                         "url": upstream.url, "miss_cache_seconds": 10 ** 9})
    assert bad.status == 400, bad

    url = br.v2("misses-remote", f"{small.repo}/manifests/later")
    m = upstream.mark()

    def get(i):
        r = request("GET", url, headers={"Accept": ACCEPT_HEADER})
        return r.status, errors_of(r)
    first = time.monotonic()
    assert concurrently(N, get) == [(404, ["MANIFEST_UNKNOWN"])] * N
    for _ in range(N):
        assert get(0) == (404, ["MANIFEST_UNKNOWN"])
    st = upstream.stats(m)
    assert st.count(kind_="manifest") == 1, f"one upstream request for {2 * N} misses:\n{st.listing()}"

    # the tag appears upstream: within the window the miss still answers, after it the tag is found
    skopeo("copy", "--dest-tls-verify=false", f"oci:{small.layout}:{small.tag}",
           f"docker://{upstream.host}/{small.repo}:later", timeout=300)
    if time.monotonic() - first < 2.5:
        assert get(0)[0] == 404, "remembered for miss_cache_seconds"
    time.sleep(max(0.0, first + 3.2 - time.monotonic()))
    r = request("GET", url, headers={"Accept": ACCEPT_HEADER})
    assert r.status == 200 and sha256_bytes(r.body) == small.digest, r


# --- range requests on an empty blob ----------------------------------------------------------------------------

EMPTY = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
# suffix ranges name the whole (empty) representation: served whole; a range from a first byte has no byte to
# start at: 416 with the length, as RFC 9110 asks
RANGES = {"bytes=-1": 200, "bytes=-1024": 200, "bytes=-0": 416, "bytes=0-": 416, "bytes=0-0": 416, "bytes=5-9": 416,
          "bytes=0-1,3-4": 200, "bytes=junk": 200}


def push_empty_blob(base_v2: str, name: str):
    r = request("POST", f"{base_v2}/{name}/blobs/uploads/", body=b"")
    assert r.status == 202, r
    loc = r.header("Location")
    loc = loc if loc.startswith("http") else base_v2.rsplit("/v2", 1)[0] + loc
    sep = "&" if "?" in loc else "?"
    r = request("PUT", f"{loc}{sep}digest={EMPTY}", body=b"", headers={"Content-Length": "0"})
    assert r.status == 201, r


def check_ranges(url: str, what: str):
    for rng, status in RANGES.items():
        for method in ("GET", "HEAD"):
            r = request(method, url, headers={"Range": rng})
            assert r.status == status and r.body == b"", f"{what} {method} Range: {rng}: {r!r}"
            if status == 416:
                assert r.header("Content-Range") == "bytes */0", f"{what} {rng}: {r.headers}"
            else:
                assert r.header("Content-Length") == "0" and r.header("Docker-Content-Digest") in (None, EMPTY), \
                    f"{what} {method} {rng}: {r.headers}"


def test_ranges_on_an_empty_blob(upstream, local_br):
    br = local_br
    push_empty_blob(br.v2("docker-local", "").rstrip("/"), "e2e/empty")
    check_ranges(br.v2("docker-local", f"e2e/empty/blobs/{EMPTY}"), "local")

    push_empty_blob(upstream.url + "/v2", "e2e/empty")
    br.create_remote("docker-remote", upstream.url)
    # the first request is a cold miss through the remote: the fill path answers it
    check_ranges(br.v2("docker-remote", f"e2e/empty/blobs/{EMPTY}"), "remote")
