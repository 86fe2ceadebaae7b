"""Go modules (format `go`) with the real `go` command (Debian's go 1.19) against GOPROXY upstreams and a signed
checksum database that the tests start on 127.0.0.1 (harness/goproxy.py):
- remote: go mod download / list -m -versions / get @latest / build of a program needing three modules (one with an
  upper-case letter in its path, one +incompatible), go.sum identical to the one made against the upstream directly;
  immutable files fetched once (10 concurrent cold clients too) and served while the upstream is down; list cached
  for the check window, revalidated after it, served stale when the upstream is down or hung (accepts, never
  answers: given up on after the upstream response timeout); 404/410 passed on so that
  `GOPROXY=a,b` falls back; bad paths refused with a plain-text 400 and nothing fetched;
- checksum database: GOSUMDB verification through binaryrepo as the only route, a tampered zip refused; only the
  databases a repository's `checksum_databases` setting names are proxied (another answers a plain-text 404 without
  reaching the upstream), an undeclared setting refused by the API;
- local: PUT publishing (same bytes again fine, other bytes 409, bad zips refused, nothing stored), generated list,
  a go build against it;
- virtual: list merged over a local and a remote member, a build resolving modules from both."""
import concurrent.futures
import http.client
import json
import subprocess
import time
from pathlib import Path

import pytest

from harness.binaryrepo import ADMIN, basic
from harness.goproxy import SumDB, esc, go, go_available, go_env, go_remote as remote, make_module, proxy_url
from harness.util import Mute, request

pytestmark = pytest.mark.skipif(not go_available(), reason="go and golang-golang-x-mod-dev are not installed "
                                "(tests/install-deps.sh installs them)")

ALPHA, BETA, GAMMA = "example.com/alpha", "example.com/BigCo/beta", "example.com/gamma"
INCOMPATIBLE = "v2.0.0+incompatible"




def three_modules(root):
    make_module(root, ALPHA, "v1.0.0")
    make_module(root, ALPHA, "v1.1.0")
    make_module(root, BETA, "v0.2.0", requires={ALPHA: "v1.0.0"})
    make_module(root, GAMMA, INCOMPATIBLE, go_mod=False)


MAIN = """package main

import (
\t"fmt"

\t"example.com/BigCo/beta"
\t"example.com/alpha"
\t"example.com/gamma"
)

func main() { fmt.Println(alpha.Hello()); fmt.Println(beta.Hello()); fmt.Println(gamma.Hello()) }
"""


def build_program(env, home, *gets):
    """A module needing the three modules: go get, go build, run; returns (output, go.sum)."""
    d = home / "prog"
    d.mkdir()
    go(env, "mod", "init", "example.org/prog", cwd=d)
    (d / "main.go").write_text(MAIN)
    go(env, "get", *gets, cwd=d)
    go(env, "build", "-o", "prog", ".", cwd=d)
    out = subprocess.run([str(d / "prog")], capture_output=True, check=True).stdout.decode()
    return out, (d / "go.sum").read_text()


GETS = (f"{ALPHA}@latest", f"{BETA}@v0.2.0", f"{GAMMA}@{INCOMPATIBLE}")


def test_remote_build_matches_direct_and_caches(make_binaryrepo, goproxy, gohome):
    up = goproxy()
    three_modules(up.root)
    br = make_binaryrepo(repositories=[remote("go-remote", up.url, window=2)])
    proxy = proxy_url(br, "go-remote")

    env = go_env(gohome("a"), proxy)
    dl = go(env, "mod", "download", "-json", f"{ALPHA}@v1.0.0").stdout.decode()
    assert json.loads(dl)["Version"] == "v1.0.0"
    versions = go(env, "list", "-m", "-versions", ALPHA).stdout.decode().split()
    assert versions == [ALPHA, "v1.0.0", "v1.1.0"], versions
    out, gosum = build_program(env, env_home(env), *GETS)
    assert out.splitlines() == [f"hello from {ALPHA} v1.1.0", f"hello from {BETA} v0.2.0",
                                f"hello from {GAMMA} {INCOMPATIBLE}"], out
    # a second client with an empty module cache: everything from binaryrepo's store
    env2 = go_env(gohome("c"), proxy)
    out2, gosum2 = build_program(env2, env_home(env2), *GETS)
    assert gosum2 == gosum and out2 == out
    for mod, v in ((ALPHA, "v1.1.0"), (BETA, "v0.2.0"), (GAMMA, INCOMPATIBLE)):
        for ext in ("mod", "zip"):
            path = f"/{esc(mod)}/@v/{esc(v)}.{ext}"
            assert up.hit(path) == 1, f"{path} fetched {up.hit(path)} times"
    assert up.hit(f"/{esc(BETA)}/@v/v0.2.0.zip") == 1 and "!big!co" in esc(BETA)

    # against the upstream directly: the same go.sum
    direct = go_env(gohome("d"), up.url)
    direct_out, direct_sum = build_program(direct, env_home(direct), *GETS)
    assert direct_sum == gosum, f"go.sum differs:\n{gosum}\nvs direct:\n{direct_sum}"
    assert direct_out == out

    # upstream down: immutable files and the (stale) list still served
    up.stop()
    time.sleep(2.2)
    env = go_env(gohome("e"), proxy)
    go(env, "mod", "download", f"{ALPHA}@v1.1.0", f"{BETA}@v0.2.0", f"{GAMMA}@{INCOMPATIBLE}")
    assert go(env, "list", "-m", "-versions", ALPHA).stdout.decode().split() == [ALPHA, "v1.0.0", "v1.1.0"]


def env_home(env):
    return Path(env["HOME"])


def test_list_window_revalidation_and_not_found_passthrough(make_binaryrepo, goproxy, gohome):
    up = goproxy()
    make_module(up.root, ALPHA, "v1.0.0")
    other = goproxy("other")
    make_module(other.root, "example.net/elsewhere", "v0.1.0")
    br = make_binaryrepo(repositories=[remote("go-remote", up.url, window=2)])
    base = proxy_url(br, "go-remote")
    lst = f"/{ALPHA}/@v/list"
    for _ in range(3):
        r = request("GET", base + lst)
        assert r.status == 200 and r.body == b"v1.0.0\n"
    assert up.hit(lst) == 1, "list cached within the check window"
    make_module(up.root, ALPHA, "v1.2.0")
    time.sleep(2.2)
    assert request("GET", base + lst).body == b"v1.0.0\nv1.2.0\n" and up.hit(lst) == 2
    assert request("GET", f"{br.url}/repo/go-remote{lst}").body == b"v1.0.0\nv1.2.0\n", "the /repo/ prefix works too"

    # 404 and 410 passed on (and the probe of a path prefix answered without asking again)
    up.overrides["/example.com/gone/@v/list"] = (410, b"gone\n")
    assert request("GET", base + "/example.com/gone/@v/list").status == 410
    assert request("GET", base + "/example.com/@v/list").status == 404
    assert request("GET", base + "/example.com/@v/list").status == 404
    assert up.hit("/example.com/@v/list") == 1
    assert request("GET", base + "/example.com/nothing/@v/v1.0.0.zip").status == 404

    # so that GOPROXY=binaryrepo,other falls back to the next proxy
    env = go_env(gohome("f"), f"{base},{other.url}")
    go(env, "mod", "download", "example.net/elsewhere@v0.1.0", f"{ALPHA}@v1.0.0")
    assert up.hit("/example.net/elsewhere/@v/v0.1.0.info") == 1


def test_a_hung_upstream_is_given_up_on_and_the_cached_list_served(make_binaryrepo, goproxy, gohome):
    """Guards the response timeout in Upstream::send_hop for Go's mutable documents: with the default (10 s),
    revalidating a cached @v/list against an upstream that accepts and never answers gives up and serves the
    cached list to the real `go` (it used to wait for the 120 s idle timeout); a list never cached fails
    promptly."""
    up = goproxy()
    # one request per connection: once stopped, no kept-alive connection answers for it
    up.httpd.RequestHandlerClass.protocol_version = "HTTP/1.0"
    make_module(up.root, ALPHA, "v1.0.0")
    make_module(up.root, ALPHA, "v1.1.0")
    br = make_binaryrepo(repositories=[remote("go-remote", up.url, window=0)])   # every list revalidates
    proxy = proxy_url(br, "go-remote")
    want = [ALPHA, "v1.0.0", "v1.1.0"]
    assert go(go_env(gohome("warm"), proxy), "list", "-m", "-versions", ALPHA).stdout.decode().split() == want
    port = up.port
    up.stop()
    mute = Mute(port)
    try:
        start = time.monotonic()
        out = go(go_env(gohome("hung"), proxy), "list", "-m", "-versions", ALPHA, timeout=120)
        took = time.monotonic() - start
        assert out.stdout.decode().split() == want, out
        assert took < 15, f"the cached list took {took:.1f}s with a hung upstream"
        assert mute.accepted >= 1, "the revalidation never reached the hung upstream"
        # nothing cached for this module: a prompt failure, not a hang
        start = time.monotonic()
        cold = go(go_env(gohome("cold"), proxy), "list", "-m", "-versions", BETA, check=False, timeout=120)
        took = time.monotonic() - start
        assert cold.returncode != 0, cold
        assert took < 30, f"an uncached list took {took:.1f}s with a hung upstream"
    finally:
        mute.close()


def test_concurrent_cold_fetch_hits_upstream_once(make_binaryrepo, goproxy):
    up = goproxy(zip_delay=0.5)
    files = make_module(up.root, ALPHA, "v1.0.0")
    br = make_binaryrepo(repositories=[remote("go-remote", up.url)])
    url = f"{proxy_url(br, 'go-remote')}/{ALPHA}/@v/v1.0.0.zip"
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        got = list(pool.map(lambda _: request("GET", url), range(10)))
    assert all(r.status == 200 and r.body == files["zip"] for r in got), [r.status for r in got]
    assert up.hit(f"/{ALPHA}/@v/v1.0.0.zip") == 1


def test_bad_paths_are_refused_with_plain_text(make_binaryrepo, goproxy):
    up = goproxy()
    make_module(up.root, ALPHA, "v1.0.0")
    br = make_binaryrepo(repositories=[remote("go-remote", up.url), {"name": "go-local", "type": "local",
                                                                       "format": "go"}])
    for repo in ("go-remote", "go-local"):
        base = proxy_url(br, repo)
        for bad in ("/example.com/alpha/../alpha/@v/list", "/example.com%2Falpha/@v/list", "/example.com/Alpha/@v/list",
                    "/example.com/alpha/@v/v1.0.0!.zip", "/nodot/@v/list", "/sumdb/../x"):
            r = request("GET", base + bad)
            assert 400 <= r.status < 500 and r.header("content-type", "").startswith("text/plain"), (bad, r.status)
    r = request("PUT", proxy_url(br, "go-local") + "/example.com/x/../y/@v/v1.0.0.mod", body=b"module x\n",
                headers={"Authorization": basic(*ADMIN)})
    assert r.status == 400
    assert sum(up.hits.values()) == 0, up.hits
    assert request("GET", proxy_url(br, "go-local") + "/example.com/y/@v/list").status == 404


def put(br, repo, path, body, auth=ADMIN):
    headers = {"Authorization": basic(*auth)} if auth else {}
    return request("PUT", f"{proxy_url(br, repo)}/{path}", body=body, headers=headers)


def publish(br, repo, files, mod, version):
    for ext in ("mod", "zip", "info"):
        r = put(br, repo, f"{esc(mod)}/@v/{esc(version)}.{ext}", files[ext])
        assert r.status == 201, (ext, r.status, r.body)


def test_local_publish_and_build(make_binaryrepo, goproxy, gohome, tmp_path):
    scratch = tmp_path / "scratch"
    br = make_binaryrepo(repositories=[{"name": "go-local", "type": "local", "format": "go"}])
    mods = {}
    for mod, v, req in ((ALPHA, "v1.1.0", None), (BETA, "v0.2.0", {ALPHA: "v1.1.0"}), (GAMMA, INCOMPATIBLE, None)):
        mods[mod] = make_module(scratch, mod, v, requires=req, go_mod=mod != GAMMA)
        publish(br, "go-local", mods[mod], mod, v)
    alpha = mods[ALPHA]
    path = f"{ALPHA}/@v/v1.1.0"
    assert put(br, "go-local", path + ".zip", alpha["zip"]).status == 200, "the same bytes again are fine"
    other = make_module(scratch / "other", ALPHA, "v1.1.0", requires={GAMMA: INCOMPATIBLE})
    r = put(br, "go-local", path + ".zip", other["zip"])
    assert r.status == 409 and b"immutable" in r.body
    # zips that go would refuse: a file outside module@version/, a path with .., not a zip
    for body in (make_module(scratch / "x", ALPHA, "v1.2.0")["zip"], b"PK\x03\x04 not really"):
        r = put(br, "go-local", f"{ALPHA}/@v/v1.3.0.zip", body)
        assert r.status == 400 and r.header("content-type").startswith("text/plain"), r
    assert put(br, "go-local", f"{ALPHA}/@v/v1.3.0.mod", b"module example.com/other\n").status == 400
    assert br.upload_files() == [], "a refused zip leaves no upload session"
    assert request("GET", f"{proxy_url(br, 'go-local')}/{ALPHA}/@v/list").body == b"v1.1.0\n"
    assert request("GET", f"{proxy_url(br, 'go-local')}/{ALPHA}/@v/v1.1.0.zip").body == alpha["zip"]
    latest = json.loads(request("GET", f"{proxy_url(br, 'go-local')}/{ALPHA}/@latest").body)
    assert latest["Version"] == "v1.1.0"
    # the catalog the web page browses (module paths unescaped, each once)
    catalog = json.loads(request("GET", f"{br.url}/repo/go-local/@modules").body)
    assert catalog == {"modules": sorted([ALPHA, BETA, GAMMA]), "truncated": False}, catalog

    env = go_env(gohome("l"), proxy_url(br, "go-local"))
    out, gosum = build_program(env, env_home(env), *GETS)
    assert f"hello from {ALPHA} v1.1.0" in out and f"hello from {GAMMA} {INCOMPATIBLE}" in out


def test_local_zip_over_500_mib_is_refused_before_its_body(make_binaryrepo):
    br = make_binaryrepo(repositories=[{"name": "go-local", "type": "local", "format": "go"}])
    conn = http.client.HTTPConnection(br.host, timeout=30)
    conn.putrequest("PUT", f"/go/go-local/{ALPHA}/@v/v1.0.0.zip")
    conn.putheader("Authorization", basic(*ADMIN))
    conn.putheader("Content-Length", str(501 << 20))
    conn.endheaders()
    conn.send(b"PK" * 1024)
    r = conn.getresponse()
    assert r.status == 413 and b"500 MiB" in r.read()
    conn.close()
    assert request("GET", f"{proxy_url(br, 'go-local')}/{ALPHA}/@v/list").status == 404
    assert br.upload_files() == []


def test_local_publishing_needs_an_identity(make_binaryrepo, tmp_path):
    br = make_binaryrepo(open=False, repositories=[{"name": "go-local", "type": "local", "format": "go"}])
    files = make_module(tmp_path / "t", ALPHA, "v1.0.0")
    r = put(br, "go-local", f"{ALPHA}/@v/v1.0.0.mod", files["mod"], auth=None)
    assert r.status == 401 and r.header("www-authenticate", "").startswith("Basic")
    assert put(br, "go-local", f"{ALPHA}/@v/v1.0.0.mod", files["mod"]).status == 201


def test_virtual_merges_lists(make_binaryrepo, goproxy, gohome, tmp_path):
    up = goproxy()
    make_module(up.root, ALPHA, "v1.0.0")
    make_module(up.root, GAMMA, INCOMPATIBLE, go_mod=False)
    br = make_binaryrepo(repositories=[
        {"name": "go-local", "type": "local", "format": "go"}, remote("go-remote", up.url),
        {"name": "go-virtual", "type": "virtual", "format": "go", "members": ["go-local", "go-remote"],
         "default_local": "go-local"}])
    scratch = tmp_path / "scratch"
    publish(br, "go-local", make_module(scratch, ALPHA, "v1.1.0"), ALPHA, "v1.1.0")
    publish(br, "go-local", make_module(scratch, BETA, "v0.2.0", requires={ALPHA: "v1.0.0"}), BETA, "v0.2.0")
    lst = request("GET", f"{proxy_url(br, 'go-virtual')}/{ALPHA}/@v/list")
    assert lst.status == 200 and lst.body == b"v1.0.0\nv1.1.0\n", lst.body
    assert request("GET", f"{proxy_url(br, 'go-virtual')}/example.com/none/@v/list").status == 404
    env = go_env(gohome("v"), proxy_url(br, "go-virtual"))
    out, _ = build_program(env, env_home(env), *GETS)
    assert f"hello from {ALPHA} v1.1.0" in out and f"hello from {GAMMA} {INCOMPATIBLE}" in out, out


def test_checksum_database_through_the_proxy(make_binaryrepo, goproxy, gohome, tmp_path):
    truth = tmp_path / "truth"
    three_modules(truth)
    tampered = make_module(tmp_path / "evil", ALPHA, "v1.0.0", requires={GAMMA: INCOMPATIBLE})
    db = SumDB("sumdb.test", truth)
    try:
        up = goproxy()
        three_modules(up.root)
        up.sumdbs[db.name] = db.url
        up.sumdbs["other.test"] = db.url  # the upstream proxies it, the repository is not configured to
        # a second database next to the default one (set in the configuration file)
        br = make_binaryrepo(repositories=[remote("go-remote", up.url, checksum_databases=f"sum.golang.org,{db.name}")])
        proxy = proxy_url(br, "go-remote")
        assert request("GET", f"{proxy}/sumdb/{db.name}/supported").status == 200
        for path in ("supported", "latest", "lookup/example.com/alpha@v1.0.0"):
            r = request("GET", f"{proxy}/sumdb/other.test/{path}")
            assert r.status == 404 and (r.header("content-type") or "").startswith("text/plain"), r
            assert b"not proxied" in r.body, r.body
        assert not [p for p in up.hits if p.startswith("/sumdb/other.test/")], up.hits
        env = go_env(gohome("s"), proxy, sumdb=db.vkey)
        out, gosum = build_program(env, env_home(env), *GETS)
        assert f"hello from {BETA} v0.2.0" in out
        lookups = {p: n for p, n in up.hits.items() if "/lookup/" in p}
        assert lookups and all(n == 1 for n in lookups.values()), lookups
        # a second client: lookups and tiles from binaryrepo's store
        env2 = go_env(gohome("s2"), proxy, sumdb=db.vkey)
        go(env2, "mod", "download", f"{ALPHA}@v1.1.0", f"{BETA}@v0.2.0")
        assert {p: n for p, n in up.hits.items() if "/lookup/" in p} == lookups
        tiles = {p: n for p, n in up.hits.items() if "/tile/" in p}
        assert tiles and all(n == 1 for n in tiles.values()), tiles
        # the upstream serves other bytes for a version: go refuses them
        up.overrides[f"/{ALPHA}/@v/v1.0.0.zip"] = (200, tampered["zip"])
        env3 = go_env(gohome("s3"), proxy, sumdb=db.vkey)
        p = go(env3, "mod", "download", f"{ALPHA}@v1.0.0", check=False)
        err = p.stderr.decode()
        assert p.returncode != 0 and "SECURITY ERROR" in err, err
    finally:
        db.stop()


def test_checksum_databases_setting_through_the_api(make_binaryrepo, goproxy):
    up = goproxy()
    up.sumdbs["sum.golang.org"] = up.sumdbs["sum.example.com"] = "http://127.0.0.1:9"  # only `supported` is asked
    br = make_binaryrepo(repositories=[])
    # the default: sum.golang.org only
    assert br.api("POST", "/api/repositories", json_body=remote("go-default", up.url)).status == 201
    assert request("GET", f"{proxy_url(br, 'go-default')}/sumdb/sum.golang.org/supported").status == 200
    assert request("GET", f"{proxy_url(br, 'go-default')}/sumdb/sum.example.com/supported").status == 404
    r = br.api("POST", "/api/repositories",
               json_body=remote("go-two", up.url, checksum_databases="sum.golang.org sum.example.com"))
    assert r.status == 201 and json.loads(r.body)["settings"] == {"checksum_databases": "sum.golang.org sum.example.com"}
    assert request("GET", f"{proxy_url(br, 'go-two')}/sumdb/sum.example.com/supported").status == 200
    # a setting the format does not declare, or one on another format, is a client error that stores nothing
    for bad in (remote("go-typo", up.url, checksum_database="x"),
                {"name": "d", "type": "local", "format": "docker", "settings": {"checksum_databases": "x"}},
                remote("go-bad", up.url, **{"Bad-Name": "x"})):
        r = br.api("POST", "/api/repositories", json_body=bad)
        assert r.status == 400, r
    assert b"unknown setting" in br.api("POST", "/api/repositories",
                                        json_body=remote("go-typo", up.url, checksum_database="x")).body
    for name in ("go-typo", "d", "go-bad"):
        assert br.api("GET", f"/api/repositories/{name}").status == 404, name
