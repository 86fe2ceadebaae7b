"""Upstreams that want authentication: distribution with `auth: token` (our token service) and with
htpasswd (Basic)."""
import base64

from harness.clients import dir_image, skopeo_copy
from harness.images import ACCEPT_HEADER
from harness.testca import TestCA
from harness.tokenserver import htpasswd_file
from harness.util import request, stream_get

PW = "upstream-Pa55-for-e2e"


def assert_auth_error(r):
    """what a client should see when binaryrepo has no (valid) credentials for an upstream that wants them"""
    assert r.status in (401, 403), f"expected 401/403, got {r!r}"
    body = r.json()
    codes = [e.get("code") for e in body.get("errors", [])]
    assert set(codes) & {"UNAUTHORIZED", "DENIED"}, f"not an OCI auth error: {r!r}"


def test_token_auth_anonymous(token_server, make_upstream, br, images, tmp_path):
    ts = token_server(anonymous=True)
    up = make_upstream("tok-anon", auth=ts.registry_auth())
    small, small2 = images["small"], images["small2"]
    br.create_remote("tok-remote", up.url)
    skopeo_copy(small.ref(br.prefix("tok-remote")), tmp_path / "small")
    assert dir_image(tmp_path / "small") == (small.digest, small.blobs)
    assert ts.count() >= 1, "the token service was never asked"
    assert all(r["user"] is None and r["authorization"] is None for r in ts.requests), ts.requests
    assert all(r["service"] == ts.service for r in ts.requests), ts.requests
    assert any("repository:library/small:pull" in s for r in ts.requests for s in r["scopes"]), ts.requests

    # a blob of another image of the same repository: fetched upstream, with the cached token
    asked = ts.count()
    m = up.mark()
    layer, size = small2.largest_layer()
    got = stream_get(br.v2("tok-remote", f"library/small/blobs/{layer}"))
    assert got.status == 200 and got.complete and got.digest == layer and got.nbytes == size, got
    assert up.stats(m).count("GET", "blob", 200, ref=layer) == 1, up.stats(m).listing()
    assert ts.count() == asked, f"the token was not reused: {ts.requests[asked:]}"


def test_token_auth_with_credentials(token_server, make_upstream, make_binaryrepo, images, tmp_path):
    # configured credentials go to a token service on another origin only over https (test_21_egress.py)
    ca = TestCA(tmp_path / "ca")
    ts = token_server(users={"alice": PW}, anonymous=False, tls=ca)
    up = make_upstream("tok-cred", auth=ts.registry_auth())
    br = make_binaryrepo(config={"upstream_ca_file": str(ca.ca_file)})
    small = images["small"]
    br.create_remote("tok-cred", up.url, username="alice", password=PW)
    skopeo_copy(small.ref(br.prefix("tok-cred")), tmp_path / "small")
    assert dir_image(tmp_path / "small") == (small.digest, small.blobs)
    basic = "Basic " + base64.b64encode(f"alice:{PW}".encode()).decode()
    assert any(r["authorization"] == basic for r in ts.requests), \
        f"the token service never saw alice's Basic credentials: {ts.requests}"
    assert all(r["user"] in (None, "alice") for r in ts.requests), ts.requests

    # the same upstream without credentials: the token has no access -> a clear auth error
    br.create_remote("tok-nocred", up.url)
    r = request("GET", br.v2("tok-nocred", "library/small/manifests/1"), headers={"Accept": ACCEPT_HEADER})
    assert_auth_error(r)


def test_htpasswd_upstream(make_upstream, br, images, tmp_path):
    hp = htpasswd_file(tmp_path / "htpasswd", "bob", PW)
    up = make_upstream("basic", auth={"htpasswd": {"realm": "e2e-basic", "path": hp}})
    small = images["small"]
    br.create_remote("basic-remote", up.url, username="bob", password=PW)
    skopeo_copy(small.ref(br.prefix("basic-remote")), tmp_path / "small")
    assert dir_image(tmp_path / "small") == (small.digest, small.blobs)

    br.create_remote("basic-nocred", up.url)
    r = request("GET", br.v2("basic-nocred", "library/small/manifests/1"), headers={"Accept": ACCEPT_HEADER})
    assert_auth_error(r)
    p = skopeo_copy(small.ref(br.prefix("basic-nocred")), tmp_path / "nocred", check=False)
    err = p.stderr.decode().lower()
    assert p.returncode != 0 and any(w in err for w in ("401", "unauthorized", "authentication", "denied")), err

    br.create_remote("basic-wrong", up.url, username="bob", password="wrong")
    r = request("GET", br.v2("basic-wrong", "library/small/manifests/1"), headers={"Accept": ACCEPT_HEADER})
    assert_auth_error(r)

    # the (write-only) password survives a restart: an image not cached yet still comes through
    br.restart()
    small2 = images["small2"]
    r = request("GET", br.v2("basic-remote", f"{small2.repo}/manifests/{small2.tag}"), headers={"Accept": ACCEPT_HEADER})
    assert r.status == 200 and r.body == small2.manifest, r
