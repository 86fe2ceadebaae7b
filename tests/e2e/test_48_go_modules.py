"""Go modules (format `go`) against module sets beyond test_38's, with the real `go` command (Debian's go 1.19): every
command runs twice, once with GOPROXY at the upstream directly and once through binaryrepo, and what the user sees
is compared (exit status, `go mod download -json` with the bytes of the files it names, `go list -m -versions`,
`-retracted`, `-u all`, go.sum):
- remote: major-version suffixes (/v2, /v3, gopkg.in's .v2), pseudo-versions of the three forms, a pre-release with
  upper-case letters (escaped !r!c1), a retraction, no @latest upstream, an empty list, a list of pseudo-versions
  only, a branch query (`@master`: a query answer, revalidated after the check window, never kept for good);
  the .info of every path prefix `go get` probes answered 404 once, remembered for the window, asked again after it;
  a query's .info larger than Go's 1 MiB refused and not stored; an .info naming another version refused and not
  kept (v2.0.0 answered as v2.0.0+incompatible served); `go list -m all` fetches go.mod files only; ten concurrent
  cold clients make one upstream request for an .info and a .mod; a fork's .mod naming the original module (what
  `replace orig => fork v1.0.0` needs) passed on;
- local: versions `go` refuses to unpack (a major version its path does not allow) refused at publish time; @latest
  of a module with pseudo-versions only is the published .info (its Time), as the upstream answers it; an .info
  whose Time go cannot parse refused at publish; zips go refuses to unpack (a nested go.mod, a forbidden character
  or Windows device name) refused, names go accepts (space, non-ASCII letter, directory entries) accepted;
- virtual: a member's list whose lines carry times (`v1.0.0 2020-01-01T00:00:00Z`) merged like the go command reads it;
  a member whose upstream answers 410 passes the request to the next member, like `GOPROXY=first,second`; @latest
  of a module with pseudo-versions only is the newest any member has;
- GOPROXY lists of two repositories: `,` passes a 404/410 on (not a 502), `|` passes any failure on."""
import json
import re
import time
from pathlib import Path

import pytest

from harness.binaryrepo import ADMIN, basic
from harness.goproxy import esc, go, go_available, go_env, go_remote as remote, make_module, proxy_url
from harness.util import request

pytestmark = pytest.mark.skipif(not go_available(), reason="go and golang-golang-x-mod-dev are not installed "
                                "(tests/install-deps.sh installs them)")

PSEUDO = ("v0.0.0-20190101000000-abcdef123456", "v1.2.4-0.20190101000000-abcdef123456",
          "v1.2.3-pre.0.20190101000000-abcdef123456")
MASTER_1, MASTER_2 = "v0.0.0-20200101000000-bbbbbbbbbbbb", "v0.0.0-20200202000000-cccccccccccc"




def put(br, repo, path, body):
    return request("PUT", f"{proxy_url(br, repo)}/{path}", body=body, headers={"Authorization": basic(*ADMIN)})


def module_set(root):
    make_module(root, "example.com/m", "v1.0.0")
    make_module(root, "example.com/m/v2", "v2.0.0")
    make_module(root, "example.com/m/v2", "v2.1.0")
    make_module(root, "example.com/m/v3", "v3.0.0")
    make_module(root, "gopkg.in/yaml.v2", "v2.4.0")
    make_module(root, "gopkg.in/check.v1", "v1.0.0-20200227125254-8fa46927fb4f")
    for v in PSEUDO:
        make_module(root, "example.com/pseudo", v)
    make_module(root, "example.com/rc", "v1.0.0-RC1")
    make_module(root, "example.com/rc", "v1.0.0-rc.2")
    make_module(root, "example.com/ret", "v1.0.0")
    make_module(root, "example.com/ret", "v1.1.0")
    # the latest version's go.mod retracts the one before
    (root / "example.com/ret/@v/v1.1.0.mod").write_text("module example.com/ret\n\ngo 1.19\n\nretract v1.0.0 // broken\n")
    make_module(root, "example.com/nolatest", "v0.1.0")
    make_module(root, "example.com/nolatest", "v0.2.0")
    (root / "example.com/nolatest/@latest").unlink()
    make_module(root, "example.com/empty", "v0.0.0-20200101000000-aaaaaaaaaaaa")
    (root / "example.com/empty/@v/list").write_text("")
    master = make_module(root, "example.com/q", MASTER_1)
    (root / "example.com/q/@v/master.info").write_bytes(master["info"])
    (root / "example.com/q/@v/list").write_text("")


def seen(env, h, *args, cwd=None):
    """What a user sees of one go command: exit status, stdout with the private home masked, and the bytes of the
    files `-json` names (Info, GoMod, Zip)."""
    p = go(env, *args, cwd=cwd, check=False, timeout=120)
    out = p.stdout.decode()
    files = {m.group(1): Path(m.group(2)).read_bytes() for m in re.finditer(r'"(Info|GoMod|Zip)": "([^"]+)"', out)}
    return p.returncode, out.replace(str(h), "$HOME"), files


COMMANDS = [
    ("mod", "download", "-json", "example.com/m/v2@v2.1.0"),
    ("mod", "download", "-json", "example.com/m/v2@latest"),
    ("mod", "download", "-json", "example.com/m/v3@latest"),
    ("list", "-m", "-versions", "example.com/m/v2"),
    ("mod", "download", "-json", "gopkg.in/yaml.v2@latest"),
    ("mod", "download", "-json", "gopkg.in/check.v1@latest"),
    ("list", "-m", "-versions", "example.com/pseudo"),
    ("mod", "download", "-json", "example.com/pseudo@latest"),
    *(("mod", "download", "-json", f"example.com/pseudo@{v}") for v in PSEUDO),
    ("mod", "download", "-json", "example.com/rc@v1.0.0-RC1"),
    ("list", "-m", "-versions", "example.com/rc"),
    ("mod", "download", "-json", "example.com/rc@latest"),
    ("list", "-m", "-retracted", "-versions", "example.com/ret"),
    ("list", "-m", "-versions", "example.com/ret"),
    ("mod", "download", "-json", "example.com/ret@latest"),
    ("list", "-m", "-json", "-retracted", "example.com/ret@v1.0.0"),
    ("mod", "download", "-json", "example.com/nolatest@latest"),
    ("list", "-m", "-versions", "example.com/nolatest"),
    ("mod", "download", "-json", "example.com/empty@latest"),
    ("list", "-m", "-versions", "example.com/empty"),
    ("mod", "download", "-json", "example.com/q@master"),
    ("mod", "download", "-json", "example.com/q@latest"),
]
GETS = ("example.com/m/v2@v2.1.0", "gopkg.in/yaml.v2@v2.4.0", "example.com/ret@v1.0.0", "example.com/rc@v1.0.0-RC1",
        f"example.com/pseudo@{PSEUDO[1]}", "example.com/q@master")


def program(env, h):
    """A module that needs one version of each shape: go get, then what `go list -m -u` reports; returns that and go.sum."""
    d = h / "prog"
    d.mkdir()
    go(env, "mod", "init", "example.org/prog", cwd=d)
    go(env, "get", *GETS, cwd=d)
    listed = [seen(env, h, "list", "-m", "-u", *flags, "all", cwd=d) for flags in ((), ("-retracted",))]
    return listed, (d / "go.sum").read_text()


def test_module_shapes_match_direct(make_binaryrepo, goproxy, gohome):
    up = goproxy()
    module_set(up.root)
    br = make_binaryrepo(repositories=[remote("go-remote", up.url, window=2)])
    proxy = proxy_url(br, "go-remote")
    for i, cmd in enumerate(COMMANDS):
        hd, hp = gohome(f"d{i}"), gohome(f"p{i}")
        direct, through = seen(go_env(hd, up.url), hd, *cmd), seen(go_env(hp, proxy), hp, *cmd)
        assert direct[0] == 0, (cmd, direct)
        assert through == direct, f"go {' '.join(cmd)} differs:\n{through}\nvs direct:\n{direct}"
    hd, hp = gohome("prog-d"), gohome("prog-p")
    direct, through = program(go_env(hd, up.url), hd), program(go_env(hp, proxy), hp)
    assert through == direct, f"{through}\nvs direct:\n{direct}"
    assert "example.com/ret v1.0.0 (retracted) [v1.1.0]" in direct[0][0][1], direct
    assert "example.com/rc v1.0.0-RC1 [v1.0.0-rc.2]" in direct[0][0][1], direct
    # the branch moves upstream: a query's answer is revalidated after the check window, not kept for good
    moved = make_module(up.root, "example.com/q", MASTER_2, time_="2020-02-02T00:00:00Z")
    (up.root / "example.com/q/@v/master.info").write_bytes(moved["info"])
    time.sleep(2.2)
    h = gohome("moved")
    out = json.loads(go(go_env(h, proxy), "mod", "download", "-json", "example.com/q@master").stdout)
    assert out["Version"] == MASTER_2, out


def test_go_get_path_prefix_probes_are_remembered(make_binaryrepo, goproxy, gohome):
    """`go get example.com/m/v2@v2.1.0` asks for the .info of v2.1.0 under every path prefix; those not found upstream
    are asked once per check window (like the probes of @v/list), not once per client."""
    up = goproxy()
    module_set(up.root)
    br = make_binaryrepo(repositories=[remote("go-remote", up.url, window=3)])
    proxy = proxy_url(br, "go-remote")
    sums = []
    for name in ("a", "b", "c"):
        h = gohome(name)
        env = go_env(h, proxy)
        d = h / "prog"
        d.mkdir()
        go(env, "mod", "init", "example.org/prog", cwd=d)
        go(env, "get", "example.com/m/v2@v2.1.0", "gopkg.in/yaml.v2@v2.4.0", cwd=d)
        sums.append((d / "go.sum").read_text())
    probes = ["/example.com/@v/v2.1.0.info", "/example.com/m/@v/v2.1.0.info", "/gopkg.in/@v/v2.4.0.info"]
    assert all(up.hit(p) == 1 for p in probes), {p: up.hit(p) for p in probes}
    assert up.hit("/example.com/m/v2/@v/v2.1.0.info") == 1 and up.hit("/example.com/m/v2/@v/v2.1.0.zip") == 1
    assert sums[0] == sums[1] == sums[2]
    # a 404 is remembered for the window only: a version published upstream later is found after it
    url = f"{proxy}/example.com/m/v2/@v/v2.2.0.info"
    r = request("GET", url)
    assert r.status == 404 and r.header("content-type").startswith("text/plain")
    make_module(up.root, "example.com/m/v2", "v2.2.0")
    assert request("GET", url).status == 404 and up.hit("/example.com/m/v2/@v/v2.2.0.info") == 1
    time.sleep(3.2)
    r = request("GET", url)
    assert r.status == 200 and json.loads(r.body)["Version"] == "v2.2.0"
    # against the upstream directly: the same go.sum
    h = gohome("direct")
    env = go_env(h, up.url)
    d = h / "prog"
    d.mkdir()
    go(env, "mod", "init", "example.org/prog", cwd=d)
    go(env, "get", "example.com/m/v2@v2.1.0", "gopkg.in/yaml.v2@v2.4.0", cwd=d)
    assert (d / "go.sum").read_text() == sums[0]


def test_a_query_info_larger_than_go_allows_is_refused_and_not_kept(make_binaryrepo, goproxy):
    up = goproxy()
    make_module(up.root, "example.com/q", MASTER_1)
    huge = json.dumps({"Version": MASTER_1, "Time": "2020-01-01T00:00:00Z", "Pad": "x" * (2 << 20)}).encode()
    up.put("example.com/q/@v/master.info", huge)
    up.put("example.com/q/@latest", huge)
    br = make_binaryrepo(repositories=[remote("go-remote", up.url)])
    for path in ("/example.com/q/@v/master.info", "/example.com/q/@latest"):
        for n in (1, 2):
            r = request("GET", proxy_url(br, "go-remote") + path)
            # the upstream's fault, not the client's: 502 (a 413 would blame a GET without a body)
            assert r.status == 502 and r.header("content-type").startswith("text/plain"), (path, r.status)
            assert b"too large" in r.body and len(r.body) < 1000, (path, r.body[:200])
            assert up.hit(path) == n, f"{path}: nothing kept, asked again"


def publish(br, repo, root, mod, version):
    d = Path(root) / esc(mod) / "@v"
    return [put(br, repo, f"{esc(mod)}/@v/{esc(version)}.{ext}", (d / f"{esc(version)}.{ext}").read_bytes())
            for ext in ("mod", "zip", "info")]


def test_local_refuses_versions_go_would_not_unpack(make_binaryrepo, gohome, tmp_path):
    scratch = tmp_path / "scratch"
    br = make_binaryrepo(repositories=[{"name": "go-local", "type": "local", "format": "go"}])
    good = [("example.com/bad", "v1.0.0"), ("example.com/m/v2", "v2.1.0"), ("gopkg.in/yaml.v2", "v2.4.0"),
            ("example.com/inc", "v2.0.0+incompatible"), ("gopkg.in/check.v1", "v0.0.0-20200227125254-8fa46927fb4f")]
    bad = {("example.com/bad", "v2.0.0"): "should be v0 or v1, not v2",
           ("example.com/m/v2", "v1.0.0"): "should be v2, not v1",
           ("example.com/m/v2", "v3.0.0"): "should be v2, not v3",
           ("gopkg.in/yaml.v2", "v3.0.0"): "should be v2, not v3",
           ("example.com/inc", "v1.0.0+incompatible"): "+incompatible suffix not allowed",
           ("example.com/m/v1", "v1.0.0"): "invalid major version suffix"}
    for mod, v in good + list(bad):
        make_module(scratch, mod, v, go_mod="+incompatible" not in v)
    for mod, v in good:
        assert [r.status for r in publish(br, "go-local", scratch, mod, v)] == [201] * 3, (mod, v)
    for (mod, v), why in bad.items():
        for r in publish(br, "go-local", scratch, mod, v):
            assert r.status == 400 and r.header("content-type").startswith("text/plain"), (mod, v, r.status)
            assert why.encode() in r.body, (mod, v, r.body)
    assert br.upload_files() == [], "a refused zip leaves no upload session"
    base = proxy_url(br, "go-local")
    assert request("GET", f"{base}/example.com/bad/@v/list").body == b"v1.0.0\n"
    assert request("GET", f"{base}/example.com/m/v2/@v/list").body == b"v2.1.0\n"
    assert request("GET", f"{base}/example.com/m/v1/@v/list").status == 404
    # so @latest stays a version go can use
    h = gohome("l")
    env = go_env(h, base)
    d = h / "prog"
    d.mkdir()
    go(env, "mod", "init", "example.org/prog", cwd=d)
    go(env, "get", "example.com/bad@latest", "example.com/m/v2@latest", "gopkg.in/yaml.v2@latest",
       "example.com/inc@latest", "gopkg.in/check.v1@latest", cwd=d)
    mods = go(env, "list", "-m", "all", cwd=d).stdout.decode().splitlines()
    assert sorted(mods[1:]) == sorted(f"{m} {v}" for m, v in good), mods


def test_local_latest_of_pseudo_versions_is_the_published_info(make_binaryrepo, goproxy, gohome):
    """A module with pseudo-versions only: `go` filters them out of the list and asks @latest; its .info (the Time
    `go list -m` shows) is the one published, the same as the upstream serves."""
    up = goproxy()
    mod, v = "example.com/untagged", "v0.0.0-20190101000000-abcdef123456"
    make_module(up.root, mod, v, time_="2019-01-01T00:00:00Z")
    br = make_binaryrepo(repositories=[{"name": "go-local", "type": "local", "format": "go"}])
    assert [r.status for r in publish(br, "go-local", up.root, mod, v)] == [201] * 3
    results = []
    for name, proxy in (("direct", up.url), ("local", proxy_url(br, "go-local"))):
        h = gohome(name)
        results.append((seen(go_env(h, proxy), h, "mod", "download", "-json", f"{mod}@latest"),
                        seen(go_env(h, proxy), h, "list", "-m", "-json", f"{mod}@latest")))
    assert results[1] == results[0], f"{results[1]}\nvs direct:\n{results[0]}"
    assert '"Time": "2019-01-01T00:00:00Z"' in results[0][1][1]


def test_virtual_merges_lists_whose_lines_carry_times(make_binaryrepo, goproxy, gohome, tmp_path):
    """The go command reads the first field of each @v/list line (a proxy may add the version's time after it)."""
    up = goproxy()
    mod = "example.com/timed"
    make_module(up.root, mod, "v1.0.0")
    make_module(up.root, mod, "v1.1.0")
    (up.root / mod / "@v/list").write_text("v1.0.0 2020-01-01T00:00:00Z\nv1.1.0 2020-02-01T00:00:00Z\n")
    br = make_binaryrepo(repositories=[
        {"name": "go-local", "type": "local", "format": "go"}, remote("go-remote", up.url),
        {"name": "go-virtual", "type": "virtual", "format": "go", "members": ["go-local", "go-remote"],
         "default_local": "go-local"}])
    local = make_module(tmp_path / "scratch", mod, "v1.2.0")
    for ext in ("mod", "zip", "info"):
        assert put(br, "go-local", f"{mod}/@v/v1.2.0.{ext}", local[ext]).status == 201
    got = {}
    for name, proxy in (("direct", up.url), ("virtual", proxy_url(br, "go-virtual"))):
        h = gohome(name)
        got[name] = go(go_env(h, proxy), "list", "-m", "-versions", mod).stdout.decode().split()
    assert got["direct"] == [mod, "v1.0.0", "v1.1.0"], got
    assert got["virtual"] == [mod, "v1.0.0", "v1.1.0", "v1.2.0"], got


def test_an_info_naming_another_version_is_not_kept(make_binaryrepo, goproxy, gohome):
    """go refuses an .info that names another version than the one it asked for; kept for good, that answer would
    break the version for every client after the upstream is fixed. An .info of v2.0.0 naming v2.0.0+incompatible
    (a v2 without go.mod, asked for under its plain path) is the upstream's right answer and is served."""
    up = goproxy()
    mod = "example.com/alpha"
    make_module(up.root, mod, "v1.0.0")
    wrong = make_module(up.root, mod, "v1.0.1")
    inc = make_module(up.root, "example.com/nomod", "v2.0.0+incompatible", go_mod=False)
    up.put("example.com/nomod/@v/v2.0.0.info", inc["info"])
    br = make_binaryrepo(repositories=[remote("go-remote", up.url)])
    proxy = proxy_url(br, "go-remote")
    up.overrides[f"/{mod}/@v/v1.0.0.info"] = (200, wrong["info"])
    for name, url, why in (("direct", up.url, b"instead of requested version"), ("broken", proxy, b"names version")):
        h = gohome(name)
        p = go(go_env(h, url), "mod", "download", f"{mod}@v1.0.0", check=False)
        assert p.returncode != 0 and why in p.stderr, (name, p.stderr)
    r = request("GET", f"{proxy}/{mod}/@v/v1.0.0.info")
    assert r.status == 502 and r.header("content-type").startswith("text/plain") and b"v1.0.1" in r.body, r
    del up.overrides[f"/{mod}/@v/v1.0.0.info"]
    h = gohome("fixed")
    out = seen(go_env(h, proxy), h, "mod", "download", "-json", f"{mod}@v1.0.0")
    assert out[0] == 0 and json.loads(out[2]["Info"])["Version"] == "v1.0.0", out
    got = []
    for name, url in (("inc-direct", up.url), ("inc-proxy", proxy)):
        h = gohome(name)
        got.append(seen(go_env(h, url), h, "mod", "download", "-json", "example.com/nomod@v2.0.0"))
    assert got[0][0] == 0 and '"Version": "v2.0.0+incompatible"' in got[0][1], got[0]
    assert got[1] == got[0]


def test_modules_needed_for_their_go_mod_only(make_binaryrepo, goproxy, gohome):
    """`go list -m all` reads the go.mod of every module in the graph and unpacks none: no .zip is fetched."""
    up = goproxy()
    make_module(up.root, "example.com/leaf", "v1.0.0")
    make_module(up.root, "example.com/mid", "v1.0.0", requires={"example.com/leaf": "v1.0.0"})
    make_module(up.root, "example.com/mid/v2", "v2.0.0", requires={"example.com/mid": "v1.0.0"})
    br = make_binaryrepo(repositories=[remote("go-remote", up.url)])
    got = []
    for name, url in (("proxy", proxy_url(br, "go-remote")), ("direct", up.url)):
        h = gohome(name)
        d = h / "prog"
        d.mkdir()
        (d / "go.mod").write_text("module example.org/prog\n\ngo 1.16\n\nrequire example.com/mid/v2 v2.0.0\n")
        got.append(go(go_env(h, url), "list", "-m", "all", cwd=d).stdout.decode())
        if name == "proxy":
            assert not [p for p in up.hits if p.endswith(".zip")], up.hits
    assert got[0] == got[1] and "example.com/leaf v1.0.0" in got[0], got


def test_local_refuses_an_info_whose_time_go_cannot_parse(make_binaryrepo, gohome, tmp_path):
    """go refuses an .info whose Time is not RFC 3339 ("invalid response from proxy"), and a published version is
    immutable: such an .info would break the version for good, so it is refused at publish."""
    mod = "example.com/timed"
    files = make_module(tmp_path / "scratch", mod, "v1.0.0")
    br = make_binaryrepo(repositories=[{"name": "go-local", "type": "local", "format": "go"}])
    for ext in ("mod", "zip"):
        assert put(br, "go-local", f"{mod}/@v/v1.0.0.{ext}", files[ext]).status == 201
    for bad in ('"2020-01-01"', '"2020-01-01 00:00:00Z"', '12', '"2019-02-29T00:00:00Z"'):
        r = put(br, "go-local", f"{mod}/@v/v1.0.0.info", f'{{"Version":"v1.0.0","Time":{bad}}}'.encode())
        assert r.status == 400 and r.header("content-type").startswith("text/plain") and b"RFC 3339" in r.body, (bad, r)
    good = b'{"Version":"v1.0.0","Time":"2019-12-31T10:00:00.5+02:00"}'
    assert put(br, "go-local", f"{mod}/@v/v1.0.0.info", good).status == 201
    h = gohome("l")
    out = seen(go_env(h, proxy_url(br, "go-local")), h, "mod", "download", "-json", f"{mod}@v1.0.0")
    assert out[0] == 0 and out[2]["Info"] == good, out


def test_virtual_passes_a_gone_member_to_the_next(make_binaryrepo, goproxy, gohome):
    """A member whose upstream answers 410 for a module does not hide the next member that has it: a virtual
    repository over two remotes behaves like `GOPROXY=first,second` against the two upstreams directly."""
    first, second = goproxy("first"), goproxy("second")
    mod = "example.com/moved"
    make_module(second.root, mod, "v1.0.0")
    make_module(second.root, mod, "v1.1.0")
    for path in ("@v/list", "@latest", *(f"@v/{v}.{ext}" for v in ("v1.0.0", "v1.1.0") for ext in ("info", "mod", "zip"))):
        first.overrides[f"/{mod}/{path}"] = (410, b"gone\n")
    br = make_binaryrepo(repositories=[
        remote("go-first", first.url), remote("go-second", second.url),
        {"name": "go-virtual", "type": "virtual", "format": "go", "members": ["go-first", "go-second"]}])
    got = {}
    for name, proxy in (("direct", f"{first.url},{second.url}"), ("virtual", proxy_url(br, "go-virtual"))):
        h = gohome(name)
        env = go_env(h, proxy)
        d = h / "prog"
        d.mkdir()
        go(env, "mod", "init", "example.org/prog", cwd=d)
        go(env, "get", f"{mod}@v1.0.0", cwd=d)
        got[name] = (seen(env, h, "list", "-m", "-versions", mod), seen(env, h, "mod", "download", "-json", f"{mod}@latest"),
                     (d / "go.sum").read_text())
    assert got["virtual"] == got["direct"], got
    assert got["direct"][0][1].split() == [mod, "v1.0.0", "v1.1.0"]
    assert first.hit(f"/{mod}/@v/v1.0.0.zip") == 2, "asked by both, answered 410"


def test_virtual_passes_a_member_whose_upstream_is_down_to_the_next(make_binaryrepo, goproxy, gohome):
    """A remote member whose upstream is down does not hide the members after it (a local one here), as a group
    repository skips an unavailable member in Nexus and Artifactory; a file no member has gets the down member's
    502, not a 404 that would send `GOPROXY=virtual,next` on to the next proxy as if the module did not exist."""
    down = goproxy("down")
    down_url = down.url
    down.stop()
    br = make_binaryrepo(repositories=[
        remote("go-down", down_url), {"name": "go-hosted", "type": "local", "format": "go"},
        {"name": "go-virtual", "type": "virtual", "format": "go", "members": ["go-down", "go-hosted"]}])
    mod = "example.com/hosted"
    src = gohome("src")
    files = make_module(src, mod, "v1.0.0")
    assert [r.status for r in publish(br, "go-hosted", src, mod, "v1.0.0")] == [201, 201, 201]
    base = proxy_url(br, "go-virtual")
    for ext in ("info", "mod", "zip"):
        r = request("GET", f"{base}/{mod}/@v/v1.0.0.{ext}")
        assert r.status == 200 and r.body == files[ext], (ext, r.status, r.body[:200])
    h = gohome("client")
    env = go_env(h, base)
    d = h / "prog"
    d.mkdir()
    go(env, "mod", "init", "example.org/prog", cwd=d)
    go(env, "mod", "download", "-json", f"{mod}@v1.0.0", cwd=d)
    assert request("GET", f"{base}/{mod}/@v/list").body == b"v1.0.0\n"
    assert request("GET", f"{base}/{mod}/@latest").body == files["info"]
    r = request("GET", f"{base}/example.com/nowhere/@v/v1.0.0.info")
    assert r.status == 502 and r.header("content-type").startswith("text/plain"), (r.status, r.body[:200])
    for merged in ("@v/list", "@latest"):
        r = request("GET", f"{base}/example.com/nowhere/{merged}")
        assert r.status == 502 and r.header("content-type").startswith("text/plain"), (merged, r.status, r.body[:200])


def test_virtual_latest_is_the_newest_any_member_has(make_binaryrepo, goproxy, gohome):
    """A module with pseudo-versions only (go then asks @latest), at an older commit on the first member and a newer
    one on the second: through the virtual repository `go` gets the newer, as the merged list gives the highest tag
    whichever member has it (`GOPROXY=first,second` directly stops at the first); its files come from the second."""
    first, second = goproxy("first"), goproxy("second")
    mod = "example.com/untagged"
    make_module(first.root, mod, MASTER_1)
    newer = make_module(second.root, mod, MASTER_2)
    br = make_binaryrepo(repositories=[
        remote("go-first", first.url), remote("go-second", second.url),
        {"name": "go-virtual", "type": "virtual", "format": "go", "members": ["go-first", "go-second"]}])
    got = {}
    for name, proxy in (("first", first.url), ("second", second.url), ("virtual", proxy_url(br, "go-virtual"))):
        h = gohome(name)
        got[name] = seen(go_env(h, proxy), h, "mod", "download", "-json", f"{mod}@latest")
    assert got["first"][0] == 0 and f'"Version": "{MASTER_1}"' in got["first"][1], got["first"]
    assert got["virtual"] == got["second"], got
    assert got["virtual"][2]["Zip"] == newer["zip"]
    assert request("GET", f"{proxy_url(br, 'go-virtual')}/{mod}/@latest").body == newer["info"]


def test_concurrent_cold_info_and_mod_hit_upstream_once(make_binaryrepo, goproxy):
    """The .info and .mod of a canonical version are fetched by the plugin (so that their 404s are remembered): ten
    clients asking at once still make one upstream request."""
    import concurrent.futures
    up = goproxy(zip_delay=0.5)
    files = make_module(up.root, "example.com/alpha", "v1.0.0")
    br = make_binaryrepo(repositories=[remote("go-remote", up.url)])
    for ext in ("info", "mod"):
        up.delay_suffix = f".{ext}"
        url = f"{proxy_url(br, 'go-remote')}/example.com/alpha/@v/v1.0.0.{ext}"
        with concurrent.futures.ThreadPoolExecutor(10) as pool:
            got = list(pool.map(lambda _: request("GET", url), range(10)))
        assert all(r.status == 200 and r.body == files[ext] for r in got), [r.status for r in got]
        assert up.hit(f"/example.com/alpha/@v/v1.0.0.{ext}") == 1


def test_a_fork_whose_go_mod_names_the_original_is_passed_on(make_binaryrepo, goproxy, gohome):
    """A remote passes on an upstream .mod whose module line names another module: that is how a fork used with
    `replace orig => fork v1.0.0` looks, and the go command accepts it there (it refuses it anywhere else itself)."""
    from harness.goproxy import module_zip
    up = goproxy()
    fork, orig = "example.com/fork", "example.com/orig"
    gomod = f"module {orig}\n\ngo 1.19\n"
    src = 'package orig\n\nfunc Hello() string { return "hello from the fork" }\n'
    d = up.root / fork / "@v"
    d.mkdir(parents=True)
    (d / "list").write_text("v1.0.0\n")
    (d / "v1.0.0.info").write_text('{"Version":"v1.0.0","Time":"2020-01-01T00:00:00Z"}')
    (d / "v1.0.0.mod").write_text(gomod)
    (d / "v1.0.0.zip").write_bytes(module_zip(fork, "v1.0.0", {"go.mod": gomod, "orig.go": src}))
    br = make_binaryrepo(repositories=[remote("go-remote", up.url)])
    got = {}
    for name, proxy in (("direct", up.url), ("proxy", proxy_url(br, "go-remote"))):
        h = gohome(name)
        env = go_env(h, proxy)
        p = h / "prog"
        p.mkdir()
        (p / "go.mod").write_text(f"module example.org/prog\n\ngo 1.19\n\nrequire {orig} v1.0.0\n\n"
                                  f"replace {orig} => {fork} v1.0.0\n")
        (p / "main.go").write_text(f'package main\n\nimport (\n\t"fmt"\n\n\t"{orig}"\n)\n\n'
                                   'func main() { fmt.Println(orig.Hello()) }\n')
        go(env, "build", "-o", "prog", ".", cwd=p)
        got[name] = (p / "go.sum").read_text()
    assert got["proxy"] == got["direct"] and f"{fork} v1.0.0 h1:" in got["direct"], got


def raw_zip(entries):
    import io
    import zipfile
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, body in entries.items():
            z.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), body)
    return buf.getvalue()


def test_local_refuses_zips_go_would_not_unpack(make_binaryrepo, goproxy, gohome):
    """Each refused zip is one the go command itself refuses when an upstream serves it (a nested go.mod, as a
    repository with a sub-module zipped whole has; a name with a character or a Windows device name go forbids); a
    published version is immutable, so storing it would break the version for good. Names go accepts (a space, a
    non-ASCII letter, directory entries, the bare prefix entry) are accepted."""
    mod = "example.com/z"
    pre = f"{mod}@v1.0.0/"
    gomod = f"module {mod}\n\ngo 1.19\n"
    base = {pre + "go.mod": gomod, pre + "z.go": "package z\n"}
    bad = {"sub/go.mod": {pre + "sub/go.mod": "module example.com/z/sub\n"},
           "GO.MOD": {pre + "GO.MOD": gomod},
           "a:b.go": {pre + "a:b.go": "package z\n"},
           "CON.go": {pre + "CON.go": "package z\n"},
           "x./y.go": {pre + "x./y.go": "package z\n"}}
    good = {pre: "", pre + "dir/": "", pre + "dir/a b.go": "package dir\n", pre + "dir/ü.go": "package dir\n"}
    br = make_binaryrepo(repositories=[{"name": "go-local", "type": "local", "format": "go"}])
    assert put(br, "go-local", f"{mod}/@v/v1.0.0.mod", gomod.encode()).status == 201
    for name, extra in bad.items():
        body = raw_zip({**base, **extra})
        # served by an upstream directly, go refuses it
        up = goproxy(f"up-{len(name)}-{name[:2]}")
        make_module(up.root, mod, "v1.0.0")
        (up.root / mod / "@v/v1.0.0.zip").write_bytes(body)
        h = gohome(f"d-{len(name)}-{name[:2]}")
        p = go(go_env(h, up.url), "mod", "download", f"{mod}@v1.0.0", check=False)
        assert p.returncode != 0, (name, p.stderr)
        r = put(br, "go-local", f"{mod}/@v/v1.0.0.zip", body)
        assert r.status == 400 and r.header("content-type").startswith("text/plain"), (name, r.status, r.body)
    assert br.upload_files() == [], "a refused zip leaves no upload session"
    assert request("GET", f"{proxy_url(br, 'go-local')}/{mod}/@v/list").status == 404
    assert put(br, "go-local", f"{mod}/@v/v1.0.0.zip", raw_zip({**base, **good})).status == 201
    h = gohome("l")
    out = json.loads(go(go_env(h, proxy_url(br, "go-local")), "mod", "download", "-json", f"{mod}@v1.0.0").stdout)
    assert Path(out["Dir"], "dir", "ü.go").exists() and Path(out["Dir"], "dir", "a b.go").exists(), out


def test_checksum_database_verifies_every_shape_through_the_proxy(make_binaryrepo, goproxy, gohome, tmp_path):
    """GOSUMDB verification with GOPROXY as the only route, over the same module set: the lookups of a /v2 module,
    a gopkg.in module, pseudo-versions and an upper-case pre-release (`lookup/example.com/rc@v1.0.0-!r!c1`) all
    pass through, and go.sum is the one made against the upstream directly."""
    from harness.goproxy import SumDB
    truth = tmp_path / "truth"
    truth.mkdir()
    module_set(truth)
    db = SumDB("sumdb.test", truth)
    try:
        up = goproxy()
        module_set(up.root)
        up.sumdbs[db.name] = db.url
        br = make_binaryrepo(repositories=[
            {**remote("go-remote", up.url), "settings": {"checksum_databases": db.name}}])
        got = {}
        for name, proxy in (("direct", up.url), ("proxy", proxy_url(br, "go-remote"))):
            h = gohome(name)
            got[name] = program(go_env(h, proxy, sumdb=db.vkey), h)
        assert got["proxy"] == got["direct"], got
        assert "example.com/rc v1.0.0-RC1 h1:" in got["direct"][1]
        assert up.hit("/sumdb/sumdb.test/lookup/example.com/rc@v1.0.0-!r!c1") == 2, "asked once directly, once by the proxy"
    finally:
        db.stop()



def test_goproxy_lists_of_two_repositories(make_binaryrepo, goproxy, gohome):
    """`GOPROXY=br/a,br/b`: a 404 or 410 from the first repository passes to the second (and a 502 does not, as with
    any proxy); `GOPROXY=br/a|br/b`: any failure of the first, such as its upstream being down, passes to the second."""
    first, second = goproxy("first"), goproxy("second")
    make_module(second.root, "example.com/x", "v1.0.0")
    make_module(second.root, "example.com/y", "v1.0.0")
    for ext in ("info", "mod", "zip"):
        first.overrides[f"/example.com/y/@v/v1.0.0.{ext}"] = (410, b"gone\n")
    br = make_binaryrepo(repositories=[remote("go-first", first.url), remote("go-second", second.url),
                                       remote("go-down", "http://127.0.0.1:9")])
    a, b, down = (proxy_url(br, n) for n in ("go-first", "go-second", "go-down"))
    want = {}
    for mod in ("example.com/x", "example.com/y"):
        h = gohome(f"direct-{mod[-1]}")
        want[mod] = seen(go_env(h, f"{first.url},{second.url}"), h, "mod", "download", "-json", f"{mod}@v1.0.0")
        assert want[mod][0] == 0, want[mod]
    for tag, proxy, ok in (("comma", f"{a},{b}", True), ("pipe-down", f"{down}|{b}", True),
                           ("comma-down", f"{down},{b}", False)):
        for mod in ("example.com/x", "example.com/y"):
            h = gohome(f"{tag}-{mod[-1]}")
            got = seen(go_env(h, proxy), h, "mod", "download", "-json", f"{mod}@v1.0.0")
            if ok:
                assert got[0] == 0 and got[2] == want[mod][2], (tag, mod, got[:2])
            else:
                assert got[0] != 0 and "502 Bad Gateway" in got[1], (tag, mod, got[:2])


def test_a_warm_read_follows_access_routes_and_credentials_at_once(make_binaryrepo, goproxy):
    """Warm anonymous reads are answered from an index of the request as it arrived (server/front.rs), without
    resolving or authenticating it again. None of that may outlive what it stood for: the next request after a
    change of the repository's grants, its host names or its removal is answered as the change says, a request
    with credentials is checked however often the same request without them was answered, and another Host is
    another request."""
    up = goproxy()
    make_module(up.root, "example.com/front", "v1.0.0")
    br = make_binaryrepo(repositories=[])
    host = "goproxy.example.test"
    definition = {**remote("go-remote", up.url), "hostnames": [host]}
    assert br.api("PUT", "/api/repositories/go-remote", definition).status in (200, 201)
    path = "/example.com/front/@v/v1.0.0.info"
    url = f"{proxy_url(br, 'go-remote')}{path}"

    def warm(*urls_hosts):
        for _ in range(4):
            for u, h in urls_hosts:
                r = request("GET", u, host=h)
                assert r.status == 200 and b'"Version":"v1.0.0"' in r.body.replace(b" ", b""), r

    warm((url, None), (br.url + path, host))
    assert up.hit(path) == 1
    # credentials that do not check out are refused, however often the request without them was answered
    assert request("GET", url, headers={"Authorization": basic("admin", "not-the-password")}).status == 401
    # another Host is another request: it does not name the repository
    assert request("GET", br.url + path, host="other.example.test").status == 404
    # made private: anonymous reads are refused from the next request on, the admin's answered
    private = {**definition, "access": [{"who": "authenticated", "allow": ["read"]}]}
    assert br.api("PUT", "/api/repositories/go-remote", private).status == 200
    for u, h in ((url, None), (br.url + path, host)):
        assert request("GET", u, host=h).status == 401, u
        assert request("GET", u, host=h, headers={"Authorization": basic(*ADMIN)}).status == 200, u
    # open again, without its host name: the host no longer routes to it
    assert br.api("PUT", "/api/repositories/go-remote", remote("go-remote", up.url)).status == 200
    warm((url, None))
    assert request("GET", br.url + path, host=host).status == 404
    # removed: gone at once
    assert br.api("DELETE", "/api/repositories/go-remote").status in (200, 204)
    assert request("GET", url).status == 404
    assert up.hit(path) == 1, "the cached file was fetched once"


def test_a_warm_read_with_credentials_follows_users_tokens_and_grants_at_once(make_binaryrepo, goproxy):
    """Warm reads with credentials are answered from the same index as anonymous ones (server/front.rs), keyed by the
    header's MAC: the next request after a password change, a group or grant change, a revoked or expired token or a
    deleted user is answered as the change says, however often the same request was answered before; the access
    line still names the user. Mutation checks: without `Auth::changed` in `commit_users` the old password is still
    answered, without it in `commit_tokens` the revoked token is, and without the `until` check in `Front::find`
    the expired tokens are."""
    up = goproxy()
    make_module(up.root, "example.com/creds", "v1.0.0")
    br = make_binaryrepo(repositories=[], config={"token_ttl_seconds": 2})
    grants = lambda *who: {**remote("go-remote", up.url), "access": [{"who": w, "allow": ["read"]} for w in who]}
    assert br.api("PUT", "/api/repositories/go-remote", grants("group:dev")).status in (200, 201)
    alice = ("alice", "alice-password-1")
    assert br.api("POST", "/api/users", {"name": alice[0], "password": alice[1], "groups": ["dev"]}).status == 201
    url = f"{proxy_url(br, 'go-remote')}/example.com/creds/@v/v1.0.0.info"

    def status(authorization, times=4):
        """the status of `times` GETs in a row (all must agree), the body checked when it is 200"""
        seen = set()
        for _ in range(times):
            r = request("GET", url, headers={"Authorization": authorization})
            if r.status == 200:
                assert b'"Version":"v1.0.0"' in r.body.replace(b" ", b""), r
            seen.add(r.status)
        assert len(seen) == 1, (authorization[:12], seen)
        return seen.pop()

    mark = br.log_mark()
    assert status(basic(*alice)) == 200
    assert up.hit("/example.com/creds/@v/v1.0.0.info") == 1
    served = [line for line in br._log_since(mark).splitlines() if "creds/@v/v1.0.0.info" in line and "served" in line]
    assert len(served) == 4 and all("user=alice" in line for line in served), served
    assert status(basic("alice", "alice-password-2"), times=1) == 401, "a wrong password is checked"
    assert status(basic("bob", alice[1]), times=1) == 401, "another user's name with alice's password"
    # a changed password: the old one is refused from the next request on
    assert br.api("PATCH", "/api/users/alice", {"password": "alice-password-2"}).status == 200
    assert status(basic(*alice), times=1) == 401
    alice = ("alice", "alice-password-2")
    assert status(basic(*alice)) == 200
    # out of the group the repository grants to: denied at once; back in: answered
    assert br.api("PATCH", "/api/users/alice", {"groups": []}).status == 200
    assert status(basic(*alice)) == 403
    assert br.api("PATCH", "/api/users/alice", {"groups": ["dev"]}).status == 200
    assert status(basic(*alice)) == 200
    # the grant itself changed: the same
    assert br.api("PUT", "/api/repositories/go-remote", grants("user:admin")).status == 200
    assert status(basic(*alice)) == 403
    assert br.api("PUT", "/api/repositories/go-remote", grants("user:alice")).status == 200
    assert status(basic(*alice)) == 200
    # an API token, as a password and as a bearer token, until it is revoked
    r = br.api("POST", "/api/tokens", {"name": "reader"}, auth=alice)
    assert r.status == 201, r
    token, token_id = r.json()["token"], r.json()["id"]
    assert status(f"Bearer {token}") == 200 and status(basic("alice", token)) == 200
    assert br.api("DELETE", f"/api/tokens/{token_id}", auth=alice).status == 204
    assert status(f"Bearer {token}", times=1) == 401 and status(basic("alice", token), times=1) == 401
    # tokens that expire: an API token of 2 s and a signed token of 2 s (token_ttl_seconds)
    short = br.api("POST", "/api/tokens", {"name": "short", "expires_in_seconds": 2}, auth=alice).json()["token"]
    t = request("GET", br.url + "/api/token?service=binaryrepo", headers={"Authorization": basic(*alice)})
    assert t.status == 200, t
    signed = t.json()["token"]
    assert status(f"Bearer {short}") == 200 and status(f"Bearer {signed}") == 200
    time.sleep(3.1)
    assert status(f"Bearer {short}", times=1) == 401 and status(f"Bearer {signed}", times=1) == 401
    # a deleted user: refused at once
    assert status(basic(*alice)) == 200
    assert br.api("DELETE", "/api/users/alice").status in (200, 204)
    assert status(basic(*alice), times=1) == 401
    assert up.hit("/example.com/creds/@v/v1.0.0.info") == 1, "the cached file was fetched once"
