"""The example nginx set-up (examples/nginx/binaryrepo.conf): a virtual host per repository that proxies to
binaryrepo with the path prefix /repo/<name>/."""

import pytest

from harness.clients import dir_image, skopeo_copy
from harness.images import ACCEPT_HEADER
from harness.util import request, sha256_bytes, stream_get
from harness.binaryrepo import ADMIN, basic

HOST = "docker-remote.example.com"


@pytest.fixture
def br(make_binaryrepo):
    """binaryrepo trusting nginx (on 127.0.0.1) for X-Forwarded-*, as examples/nginx/binaryrepo.conf says"""
    return make_binaryrepo(config={"trusted_proxies": ["127.0.0.1/32"]})


def test_pull_through_nginx_virtual_host(upstream, br, nginx, images, tmp_path):
    small = images["small"]
    br.create_remote("docker-remote", upstream.url)
    assert request("GET", f"{nginx.url}/v2/", host=HOST, headers={"Authorization": basic(*ADMIN)}).status == 200
    r = request("GET", f"{nginx.url}/v2/library/small/manifests/1", host=HOST, headers={"Accept": ACCEPT_HEADER})
    assert r.status == 200 and sha256_bytes(r.body) == small.digest, r
    assert r.header("Docker-Content-Digest") == small.digest
    layer, size = small.largest_layer()
    got = stream_get(f"{nginx.url}/v2/library/small/blobs/{layer}", host=HOST)
    assert got.status == 200 and got.complete and got.digest == layer and got.nbytes == size, got

    # skopeo cannot set a Host header; use nginx as its HTTP proxy instead: the absolute URI
    # http://docker-remote.example.com:PORT/v2/... selects the server block (no DNS lookup happens)
    env = {"HTTP_PROXY": nginx.url, "HTTPS_PROXY": nginx.url, "NO_PROXY": "", "http_proxy": nginx.url,
           "https_proxy": nginx.url, "no_proxy": ""}
    skopeo_copy(small.ref(f"{HOST}:{nginx.port}"), tmp_path / "via-nginx", env=env)
    assert dir_image(tmp_path / "via-nginx") == (small.digest, small.blobs)


def test_other_virtual_hosts_go_to_their_own_repository(upstream, br, nginx, images):
    """docker-local.example.com proxies to /repo/docker-local/, which does not exist here: 404, not the
    docker-remote repository's content"""
    br.create_remote("docker-remote", upstream.url)
    r = request("GET", f"{nginx.url}/v2/library/small/manifests/1", host="docker-local.example.com",
                headers={"Accept": ACCEPT_HEADER})
    assert r.status == 404, r
