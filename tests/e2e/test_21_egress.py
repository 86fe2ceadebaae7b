"""What a remote may reach: its own origin and the token realms it named, over its scheme or stronger.
Redirects are followed for blob GETs, never to loopback or private addresses other than the remote's own
origin (unless `upstream_allow_networks` allows them), never from https to http, and never with credentials
to another origin; configured credentials go to a realm only over https or on the remote's origin; a remote
URL with user:pass@ in it is refused. Every upstream here is a small server in the test process that tries
one of these (harness/fakeregistry.py, harness/tokenserver.py, TLS from harness/testca.py)."""
import base64
import os

import pytest

from harness.fakeregistry import FakeRegistry
from harness.testca import TestCA
from harness.util import request, sha256_bytes, stream_get, wait_until

PW = "egress-Pa55"
BASIC = "Basic " + base64.b64encode(f"alice:{PW}".encode()).decode()


@pytest.fixture
def blobs(tmp_path):
    """two small random blobs on disk: [(digest, bytes, path)]"""
    out = []
    for i in range(2):
        data = os.urandom(64 * 1024 + i)
        path = tmp_path / f"blob{i}"
        path.write_bytes(data)
        out.append((sha256_bytes(data), data, path))
    return out


@pytest.fixture
def fakes(blobs):
    """fakes(tls=None) -> a started FakeRegistry holding the blobs (so each can be a remote or a redirect target)"""
    started = []

    def make(tls=None):
        f = FakeRegistry(tls=tls)
        for digest, _, path in blobs:
            f.blobs[digest] = path
        started.append(f.start())
        return f
    yield make
    for f in started:
        f.stop()


@pytest.fixture
def ca(tmp_path):
    return TestCA(tmp_path / "ca")


def assert_refused(r, what):
    """a refused upstream hop reaches the client as an OCI error, the upstream's fault (502)"""
    assert r.status == 502, f"{what}: {r!r}"
    errors = r.json().get("errors", [])
    assert errors and errors[0]["code"] == "UPSTREAM_UNAVAILABLE", f"{what}: not an OCI upstream error: {r!r}"
    assert "refused" in errors[0]["message"], f"{what}: {r!r}"


def test_a_redirect_to_another_loopback_port_is_refused(make_binaryrepo, fakes, blobs):
    """Guards AddressPolicy::check_literal (IP literals, mapped or not) and GuardedResolver (a name that
    resolves to 127.0.0.1) in host/src/upstream/egress.rs, used by Upstream::send_hop for every hop off the
    remote's host: the other port gets no request at all."""
    (digest, _, _), (direct, data, _) = blobs
    remote, other = fakes(), fakes()
    br = make_binaryrepo()
    br.create_remote("r-remote", remote.url, username="alice", password=PW)
    for host in ("127.0.0.1", "localhost", "[::ffff:127.0.0.1]"):
        remote.redirect[digest] = f"http://{host}:{other.port}/storage/{digest}"
        r = request("GET", br.v2("r-remote", f"x/blobs/{digest}"))
        assert_refused(r, f"redirect to {host}")
    assert other.requests == [], f"the redirect target was reached: {other.requests}"
    assert remote.count("GET", f"/blobs/{digest}") == 3, remote.requests
    assert not br.blob_path(digest).exists()
    # a refusal is not an outage: the remote itself still answers
    got = stream_get(br.v2("r-remote", f"x/blobs/{direct}"))
    assert got.status == 200 and got.digest == direct and got.nbytes == len(data), got


def test_a_redirect_to_the_remotes_own_origin_is_followed(make_binaryrepo, fakes, blobs):
    (digest, data, _), _ = blobs
    remote = fakes()
    remote.redirect[digest] = f"{remote.url}/storage/{digest}"
    br = make_binaryrepo()
    br.create_remote("r-remote", remote.url, username="alice", password=PW)
    got = stream_get(br.v2("r-remote", f"x/blobs/{digest}"))
    assert got.status == 200 and got.complete and got.digest == digest and got.nbytes == len(data), got
    assert remote.count("GET", f"/storage/{digest}") == 1, remote.requests
    # the remote's own origin keeps the configured credentials across the hop
    assert [a for p, a in remote.authorizations if digest in p] == [BASIC, BASIC], remote.authorizations


def test_allowed_networks_open_a_redirect_but_credentials_stay_behind(make_binaryrepo, fakes, blobs, token_server):
    """`upstream_allow_networks` lets a redirect reach a private address; what authenticates the request stays
    on the remote's origin: the configured Basic credentials (guards `credentials: own` in egress::next_hop)
    and the registry's Bearer token (guards egress::strip_credentials in Upstream::send_hop)."""
    ts = token_server(anonymous=True)
    basic, bearer, other = fakes(), fakes(), fakes()
    bearer.challenge = ts.realm
    br = make_binaryrepo(config={"upstream_allow_networks": ["127.0.0.0/8"]})
    br.create_remote("basic-remote", basic.url, username="alice", password=PW)
    br.create_remote("bearer-remote", bearer.url)
    # one blob each: a blob stored through one remote is not fetched again through the other
    for (name, remote, sent), (digest, data, _) in zip((("basic-remote", basic, "Basic "), ("bearer-remote", bearer, "Bearer ")), blobs):
        remote.redirect[digest] = f"{other.url}/storage/{digest}"
        got = stream_get(br.v2(name, f"x/blobs/{digest}"))
        assert got.status == 200 and got.complete and got.digest == digest and got.nbytes == len(data), f"{name}: {got}"
        at_remote = [a for p, a in remote.authorizations if p == f"/v2/x/blobs/{digest}"]
        assert at_remote and all(a and a.startswith(sent) for a in at_remote), f"{name}: {remote.authorizations}"
    assert other.authorizations == [(f"/storage/{d}", None) for d, _, _ in blobs], other.authorizations


def test_an_https_remote_is_not_redirected_to_http(make_binaryrepo, fakes, blobs, ca):
    """Guards the https -> http refusal in egress::next_hop. The target's network is allowed, so that rule is
    the only one in the way."""
    (digest, _, _), (direct, data, _) = blobs
    remote, other = fakes(tls=ca), fakes()
    remote.redirect[digest] = f"{other.url}/storage/{digest}"
    br = make_binaryrepo(config={"upstream_ca_file": str(ca.ca_file), "upstream_allow_networks": ["127.0.0.0/8"]})
    br.create_remote("r-remote", remote.url)
    assert_refused(request("GET", br.v2("r-remote", f"x/blobs/{digest}")), "https -> http")
    assert other.requests == [], other.requests
    # the TLS remote itself works (upstream_ca_file): the refusal was the downgrade
    got = stream_get(br.v2("r-remote", f"x/blobs/{direct}"))
    assert got.status == 200 and got.digest == direct and got.nbytes == len(data), got


def test_an_http_realm_on_another_port_gets_no_credentials(make_binaryrepo, fakes, blobs, token_server):
    """Guards the `hop.credentials` condition in Upstream::send_hop (egress::first_hop: credentials go to a realm
    on another origin only over https): the token service is asked anonymously, and says so in the log."""
    (digest, data, _), _ = blobs
    ts = token_server(users={"alice": PW}, anonymous=True)
    remote = fakes()
    remote.challenge = ts.realm
    br = make_binaryrepo()
    br.create_remote("r-remote", remote.url, username="alice", password=PW)
    mark = br.log_mark()
    got = stream_get(br.v2("r-remote", f"x/blobs/{digest}"))
    assert got.status == 200 and got.digest == digest and got.nbytes == len(data), got
    assert ts.count() >= 1, "the realm was never asked"
    assert all(r["authorization"] is None for r in ts.requests), ts.requests
    # log lines are written by their own thread, shortly after the request is answered
    def withheld():
        log = br.logfile.read_bytes()[mark:].decode("utf-8", "replace")
        return "credentials withheld" in log and f"127.0.0.1:{ts.port}" in log
    wait_until(withheld, timeout=10, what="the withheld credentials in the log")


def test_an_https_realm_gets_the_credentials(make_binaryrepo, fakes, blobs, token_server, ca):
    (digest, _, _), _ = blobs
    ts = token_server(users={"alice": PW}, anonymous=False, tls=ca)
    remote = fakes()
    remote.challenge = ts.realm
    br = make_binaryrepo(config={"upstream_ca_file": str(ca.ca_file)})
    br.create_remote("r-remote", remote.url, username="alice", password=PW)
    got = stream_get(br.v2("r-remote", f"x/blobs/{digest}"))
    assert got.status == 200 and got.digest == digest, got
    assert ts.count() >= 1 and all(r["authorization"] == BASIC for r in ts.requests), ts.requests
    # the token, not the credentials, goes to the registry
    assert all(a is None or a.startswith("Bearer ") for _, a in remote.authorizations), remote.authorizations


def test_an_https_remote_may_not_name_an_http_realm(make_binaryrepo, fakes, blobs, token_server, ca):
    """Guards the scheme rule in egress::first_hop: a remote's requests keep its scheme or a stronger one."""
    (digest, _, _), _ = blobs
    ts = token_server(users={"alice": PW})
    remote = fakes(tls=ca)
    remote.challenge = ts.realm
    br = make_binaryrepo(config={"upstream_ca_file": str(ca.ca_file)})
    br.create_remote("r-remote", remote.url, username="alice", password=PW)
    assert_refused(request("GET", br.v2("r-remote", f"x/blobs/{digest}")), "https remote, http realm")
    assert ts.requests == [], ts.requests


def test_a_remote_url_with_credentials_is_refused(make_binaryrepo):
    """Guards the user-information check in RepositoryInput::validate (host/src/repos.rs): the API answers 400
    and keeps nothing; a seeded repository stops the server from starting."""
    br = make_binaryrepo()
    for url in ("http://alice:secret@127.0.0.1:5000", "https://token@registry.example"):
        r = br.api("POST", "/api/repositories", json_body={"name": "r-remote", "type": "remote", "format": "docker", "url": url})
        assert r.status == 400, f"{url}: {r!r}"
        message = r.json()["error"]["message"]
        assert '"username" and "password" fields' in message and "secret" not in message, message
        r = br.api("PUT", "/api/repositories/r-remote", json_body={"type": "remote", "format": "docker", "url": url})
        assert r.status == 400, f"PUT {url}: {r!r}"
    assert br.repos() == []

    seeded = make_binaryrepo("seeded", start=False, repositories=[
        {"name": "r-remote", "type": "remote", "format": "docker", "url": "http://alice:secret@127.0.0.1:5000"}])
    with pytest.raises(Exception):
        seeded.start(timeout=90)
    assert '"username" and "password" fields' in seeded.log_tail(5), seeded.log_tail(5)
