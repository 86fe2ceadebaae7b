"""Which repository a request is for: path prefix /repo/<name>/, virtual host, a dedicated port, the
path method and the default repository. The default repository points at an EMPTY upstream in the tests
of the other methods, so a request that falls through to it gets 404 instead of passing by accident."""
import pytest

from harness.clients import dir_image, skopeo_copy
from harness.images import ACCEPT_HEADER, skopeo
from harness.util import free_port, request, sha256_bytes, stream_get, wait_until
from harness.binaryrepo import ADMIN, basic

VHOST = "docker-vhost.example.test"


@pytest.fixture
def setup(make_upstream, br):
    up = make_upstream("full")
    empty = make_upstream("empty", empty=True)
    br.create_remote("fallback", empty.url, default=True)
    return br, up


def get_manifest(url, host=None, headers=()):
    return request("GET", url, headers=[("Accept", ACCEPT_HEADER), *headers], host=host)


def assert_small(r, small):
    assert r.status == 200, r
    assert sha256_bytes(r.body) == small.digest and r.header("Docker-Content-Digest") == small.digest, r


def test_path_prefix(setup, images):
    br, up = setup
    small = images["small"]
    br.create_remote("prefixed", up.url)
    assert request("GET", f"{br.url}/repo/prefixed/v2/", headers={"Authorization": basic(*ADMIN)}).status == 200
    assert_small(get_manifest(f"{br.url}/repo/prefixed/v2/library/small/manifests/1"), small)
    layer, size = small.largest_layer()
    got = stream_get(f"{br.url}/repo/prefixed/v2/library/small/blobs/{layer}")
    assert got.status == 200 and got.digest == layer and got.nbytes == size, got
    r = get_manifest(f"{br.url}/repo/nosuchrepo/v2/library/small/manifests/1")
    assert r.status == 404, f"unknown repository in the path prefix: {r!r}"


def test_virtual_host(setup, images):
    br, up = setup
    small = images["small"]
    br.create_remote("vhost", up.url, hostnames=[VHOST])
    url = f"{br.url}/v2/library/small/manifests/1"
    assert_small(get_manifest(url, host=VHOST), small)
    # X-Forwarded-Host counts only from a peer in trusted_proxies (none here): it selects nothing
    assert get_manifest(url, headers=[("X-Forwarded-Host", VHOST)]).status == 404
    layer, size = small.largest_layer()
    got = stream_get(f"{br.url}/v2/library/small/blobs/{layer}", host=VHOST)
    assert got.status == 200 and got.digest == layer, got
    # another host name falls through to the default repository (the empty upstream)
    assert get_manifest(url, host="other.example.test").status == 404


def test_virtual_host_by_x_forwarded_host_from_a_trusted_proxy(make_binaryrepo, make_upstream, images):
    br = make_binaryrepo(name="behind-proxy", config={"trusted_proxies": ["127.0.0.0/8"]})
    br.create_remote("vhost", make_upstream("full").url, hostnames=[VHOST])
    assert_small(get_manifest(f"{br.url}/v2/library/small/manifests/1", headers=[("X-Forwarded-Host", VHOST)]),
                 images["small"])


def test_virtual_host_with_port_in_host_header(setup, images):
    """a client talking to the host name directly sends Host: name:port"""
    br, up = setup
    br.create_remote("vhost", up.url, hostnames=[VHOST])
    assert_small(get_manifest(f"{br.url}/v2/library/small/manifests/1", host=f"{VHOST}:{br.port}"), images["small"])


def test_dedicated_port(setup, images, tmp_path):
    br, up = setup
    small = images["small"]
    port = free_port()
    br.create_remote("ported", up.url, port=port)
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: request("GET", base + "/v2/", timeout=2, headers={"Authorization": basic(*ADMIN)}).status == 200, timeout=10,
               what=f"the repository's own listener on {port}")
    assert_small(get_manifest(f"{base}/v2/library/small/manifests/1"), small)
    skopeo_copy(small.ref(f"127.0.0.1:{port}"), tmp_path / "ported")
    assert dir_image(tmp_path / "ported") == (small.digest, small.blobs)
    # the port wins over the path method: a repository name in the path is just part of the image name there
    assert get_manifest(f"{base}/v2/fallback/library/small/manifests/1").status == 404


def test_dedicated_port_survives_restart(setup, images):
    br, up = setup
    port = free_port()
    br.create_remote("ported", up.url, port=port)
    br.restart()
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: request("GET", base + "/v2/", timeout=2, headers={"Authorization": basic(*ADMIN)}).status == 200, timeout=10,
               what=f"the repository's own listener on {port} after a restart")
    assert_small(get_manifest(f"{base}/v2/library/small/manifests/1"), images["small"])


def test_default_repository(make_upstream, br, images, tmp_path):
    up = make_upstream()
    small = images["small"]
    br.create_remote("hub-cache", up.url, default=True)
    assert request("GET", f"{br.url}/v2/", headers={"Authorization": basic(*ADMIN)}).status == 200
    assert_small(get_manifest(f"{br.url}/v2/library/small/manifests/1"), small)
    skopeo_copy(small.ref(br.host), tmp_path / "default")
    assert dir_image(tmp_path / "default") == (small.digest, small.blobs)
    # the path method still reaches the repository by name
    assert_small(get_manifest(f"{br.url}/v2/hub-cache/library/small/manifests/1"), small)


def test_hub_style_names_reach_the_default_repository(make_upstream, br, images, tmp_path):
    """A mirror request for `docker/small` (a namespace that is also a repository's name) goes to the
    default repository: the path method takes only names with `-`, `_` or `.`, which registry
    namespaces never have."""
    up = make_upstream()
    small = images["small"]
    skopeo("copy", "--all", "--src-tls-verify=false", "--dest-tls-verify=false",
           f"docker://{up.url.split('://')[1]}/library/small:1", f"docker://{up.url.split('://')[1]}/docker/small:1")
    br.create_remote("hub-cache", up.url, default=True)
    for name in ("docker", "library", "team"):
        br.create_local(name)
    # root requests with registry-style namespaces: the default remote answers, not the local repositories
    assert_small(get_manifest(f"{br.url}/v2/docker/small/manifests/1"), small)
    assert_small(get_manifest(f"{br.url}/v2/library/small/manifests/1"), small)
    skopeo_copy(f"{br.host}/docker/small:1", tmp_path / "hub-style")
    assert dir_image(tmp_path / "hub-style") == (small.digest, small.blobs)
    # the local repository named like a namespace is still reachable by its prefix
    r = get_manifest(f"{br.url}/repo/docker/v2/small/manifests/1")
    assert r.status == 404 and r.json().get("errors"), r
    # names with a separator are taken by the path method
    assert_small(get_manifest(f"{br.url}/v2/hub-cache/docker/small/manifests/1"), small)


def test_no_repository_no_default(make_upstream, br):
    up = make_upstream()
    br.create_remote("named", up.url)
    r = get_manifest(f"{br.url}/v2/nosuchrepo/library/small/manifests/1")
    assert r.status == 404, r
    assert r.json().get("errors"), f"not an OCI error body: {r!r}"
    assert br.api("GET", "/api/repositories/named").status == 200  # /api/ stays the API
