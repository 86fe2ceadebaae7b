"""Helm chart repositories (format `helm`) with real helm 3 and helm 4 (harness/helm.py) against chart repository
upstreams served by harness/chartrepo.py on 127.0.0.1 (hit counters, ETags):
- remote: add/update/search/pull/template through binaryrepo, index.yaml revalidated after the check window with a
  conditional GET, charts cached once for concurrent cold pulls, absolute URLs on another origin, the `digest` of
  every entry kept byte-exact, upstream stopped -> cached index and charts still served, a 25 MB index with the
  server's memory bounded;
- local: the ChartMuseum API (raw, multipart with provenance, force, 409, DELETE) and plain PUT, then helm
  add/pull/template; bad uploads refused with a clear error and nothing stored;
- virtual: one index.yaml merged over the members, charts resolved through the virtual repository;
- access: helm's Basic credentials, a Basic challenge without them."""
import json
import threading
import time
import uuid

import pytest
import yaml

from harness.binaryrepo import ADMIN, basic, blob_files
from harness.chartrepo import ChartServer, big_index, entry_yaml, index_yaml, make_chart, sha256_hex
from harness.util import request, server_factory, sha256_bytes, wait_until


@pytest.fixture
def chart_server(tmp_path):
    yield from server_factory(lambda name="up", **kw: ChartServer(tmp_path / name, **kw))


def remote(name, url, window=300):
    return {"name": name, "type": "remote", "format": "helm", "url": url, "tag_check_seconds": window}


LOCAL = {"name": "helm-local", "type": "local", "format": "helm"}


def repo_url(br, name):
    return f"{br.url}/repo/{name}"


def helm_add(helm, name, url, *extra):
    helm("repo", "add", name, url, "--force-update", *extra)


def pull(helm, ref, version, dest, *extra):
    dest.mkdir(parents=True, exist_ok=True)
    helm("pull", ref, "--version", version, "-d", str(dest), *extra)
    return dest


def publish(up, charts, absolute_base=None, digest=True):
    """Put charts on `up` and an index naming them; returns {name: bytes}."""
    entries, data = {}, {}
    for name, version in charts:
        tgz = make_chart(name, version, greeting=f"hi from {name}")
        up.put(f"charts/{name}-{version}.tgz", tgz)
        url = f"{absolute_base}/charts/{name}-{version}.tgz" if absolute_base else f"charts/{name}-{version}.tgz"
        entries.setdefault(name, []).append(entry_yaml(name, version, url, sha256_hex(tgz) if digest else None))
        data[name] = tgz
    up.put("index.yaml", index_yaml(entries))
    return data


def test_remote_with_helm_3_and_4(make_binaryrepo, chart_server, helms, tmp_path):
    up = chart_server()
    data = publish(up, [("alpha", "1.0.0")])
    br = make_binaryrepo(repositories=[remote("helm-remote", up.url, window=2)])
    for major, helm in sorted(helms.items()):
        helm_add(helm, f"proxy{major}", repo_url(br, "helm-remote"))
        found = helm("search", "repo", f"proxy{major}/alpha").stdout.decode()
        assert "1.0.0" in found and f"proxy{major}/alpha" in found, found
        got = pull(helm, f"proxy{major}/alpha", "1.0.0", tmp_path / f"h{major}") / "alpha-1.0.0.tgz"
        assert got.read_bytes() == data["alpha"], f"helm {major} pulled other bytes"
        out = helm("template", "rel", f"proxy{major}/alpha", "--version", "1.0.0").stdout.decode()
        assert "greeting: \"hi from alpha\"" in out and "chart: alpha-1.0.0" in out, out
    assert up.hit("/charts/alpha-1.0.0.tgz") == 1, "the chart is cached after the first pull"
    index_hits = up.hit("/index.yaml")
    assert index_hits == 1, f"index fetched {index_hits} times within the check window"

    # after the window: revalidated with a conditional GET (304), same document
    time.sleep(2.5)
    helm = helms[4]
    helm("repo", "update", "proxy4")
    assert up.hit("/index.yaml") == 2 and up.conditional.get("/index.yaml") == 1, (up.hits, up.conditional)

    # a changed upstream index shows after the next window
    time.sleep(2.5)
    publish(up, [("alpha", "1.0.0"), ("alpha", "1.1.0")])
    helm("repo", "update", "proxy4")
    found = helm("search", "repo", "proxy4/alpha", "--versions").stdout.decode()
    assert "1.1.0" in found, found


def test_digests_byte_exact_and_other_origins(make_binaryrepo, chart_server, helms, tmp_path):
    up, cdn = chart_server("up"), chart_server("cdn")
    a = make_chart("onup", "1.0.0")
    b = make_chart("oncdn", "2.0.0")
    c = make_chart("nodigest", "3.0.0")
    up.put("charts/onup-1.0.0.tgz", a)
    cdn.put("pkg/oncdn-2.0.0.tgz", b)
    cdn.put("pkg/nodigest-3.0.0.tgz", c)
    index = index_yaml({
        "onup": [entry_yaml("onup", "1.0.0", f"{up.url}/charts/onup-1.0.0.tgz", sha256_hex(a), quote_url='"')],
        "oncdn": [entry_yaml("oncdn", "2.0.0", f"{cdn.url}/pkg/oncdn-2.0.0.tgz", sha256_hex(b), indent_lists=True)],
        "nodigest": [entry_yaml("nodigest", "3.0.0", f"{cdn.url}/pkg/nodigest-3.0.0.tgz", None)],
    })
    up.put("index.yaml", index)
    br = make_binaryrepo(repositories=[remote("helm-remote", up.url)])

    r = request("GET", repo_url(br, "helm-remote") + "/index.yaml")
    assert r.status == 200, r
    served = r.body.decode()
    # only URL lines differ, and every digest is the upstream's, byte for byte
    up_lines, our_lines = index.splitlines(), served.splitlines()
    assert len(up_lines) == len(our_lines)
    changed = [(u, o) for u, o in zip(up_lines, our_lines) if u != o]
    assert len(changed) == 3 and all("://" in u and "://" not in o for u, o in changed), changed
    ours, theirs = yaml.safe_load(served), yaml.safe_load(index)
    for name in theirs["entries"]:
        assert [e.get("digest") for e in ours["entries"][name]] == [e.get("digest") for e in theirs["entries"][name]]

    helm = helms[4]
    helm_add(helm, "mixed", repo_url(br, "helm-remote"))
    for name, version, body in (("onup", "1.0.0", a), ("oncdn", "2.0.0", b), ("nodigest", "3.0.0", c)):
        got = pull(helm, f"mixed/{name}", version, tmp_path / name) / f"{name}-{version}.tgz"
        assert got.read_bytes() == body, name
    assert cdn.hit("/pkg/oncdn-2.0.0.tgz") == 1 and cdn.hit("/pkg/nodigest-3.0.0.tgz") == 1
    # helm 3 gets them from the cache
    helm_add(helms[3], "mixed", repo_url(br, "helm-remote"))
    pull(helms[3], "mixed/nodigest", "3.0.0", tmp_path / "h3")
    assert cdn.hit("/pkg/nodigest-3.0.0.tgz") == 1

    # a path the index does not name is not fetched from anywhere
    r = request("GET", repo_url(br, "helm-remote") + f"/abs/http/127.0.0.1:{cdn.port}/pkg/other-1.0.0.tgz")
    assert r.status == 404 and cdn.hit("/pkg/other-1.0.0.tgz") == 0, r


def test_concurrent_cold_pulls_fetch_once(make_binaryrepo, chart_server):
    up = chart_server(chart_delay=1.0)
    data = publish(up, [("slow", "1.0.0")])
    br = make_binaryrepo(repositories=[remote("helm-remote", up.url)])
    url = repo_url(br, "helm-remote")
    assert request("GET", url + "/index.yaml").status == 200
    results = []

    def get():
        results.append(request("GET", url + "/charts/slow-1.0.0.tgz", timeout=30))
    threads = [threading.Thread(target=get) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status for r in results] == [200] * 8 and all(r.body == data["slow"] for r in results)
    assert up.hit("/charts/slow-1.0.0.tgz") == 1, up.hits


def test_upstream_down_serves_the_cache(make_binaryrepo, chart_server, helms, tmp_path):
    up = chart_server()
    data = publish(up, [("kept", "1.0.0")])
    br = make_binaryrepo(repositories=[remote("helm-remote", up.url, window=1)])
    helm = helms[4]
    helm_add(helm, "cached", repo_url(br, "helm-remote"))
    pull(helm, "cached/kept", "1.0.0", tmp_path / "warm")
    up.stop()
    time.sleep(1.5)
    helm("repo", "update", "cached")
    got = pull(helm, "cached/kept", "1.0.0", tmp_path / "down") / "kept-1.0.0.tgz"
    assert got.read_bytes() == data["kept"]
    # a cold repository with the upstream down: a clear 502 in plain text
    br2 = make_binaryrepo(name="cold", repositories=[remote("helm-remote", up.url)])
    r = request("GET", repo_url(br2, "helm-remote") + "/index.yaml")
    assert r.status == 502 and r.header("Content-Type").startswith("text/plain") and b"upstream" in r.body, r


def multipart(fields):
    boundary = uuid.uuid4().hex
    out = b""
    for name, filename, data in fields:
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\n"
                f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return out, f"multipart/form-data; boundary={boundary}"


def test_local_chartmuseum_api_and_put(make_binaryrepo, helms, tmp_path):
    br = make_binaryrepo(repositories=[LOCAL])
    base = repo_url(br, "helm-local")
    one = make_chart("app", "1.0.0", greeting="one")
    r = request("POST", base + "/api/charts", body=one)
    assert (r.status, r.json()) == (201, {"saved": True}), r
    r = request("POST", base + "/api/charts", body=make_chart("app", "1.0.0", greeting="other"))
    assert r.status == 409 and "error" in r.json(), r
    one_b = make_chart("app", "1.0.0", greeting="forced")
    assert request("POST", base + "/api/charts?force", body=one_b).status == 201
    two = make_chart("app", "1.1.0", greeting="two")
    body, ctype = multipart([("chart", "app-1.1.0.tgz", two), ("prov", "app-1.1.0.tgz.prov", b"-----BEGIN PGP SIGNED MESSAGE-----\n")])
    r = request("POST", base + "/api/charts", body=body, headers={"Content-Type": ctype})
    assert r.status == 201, r
    three = make_chart("tool-x", "0.2.0-rc.1", greeting="put")
    r = request("PUT", base + "/tool-x-0.2.0-rc.1.tgz", body=three)
    assert r.status == 201, r

    assert request("GET", base + "/charts/app-1.1.0.tgz.prov").body.startswith(b"-----BEGIN PGP")
    listed = request("GET", base + "/api/charts").json()
    assert sorted(listed) == ["app", "tool-x"] and [v["version"] for v in listed["app"]] == ["1.1.0", "1.0.0"], listed
    v = request("GET", base + "/api/charts/app/1.0.0").json()
    assert v["digest"] == sha256_hex(one_b) and v["urls"] == ["charts/app-1.0.0.tgz"], v
    index = yaml.safe_load(request("GET", base + "/index.yaml").body)
    assert index["entries"]["app"][0]["digest"] == sha256_hex(two)

    for major, helm in sorted(helms.items()):
        helm_add(helm, f"local{major}", base)
        got = pull(helm, f"local{major}/app", "1.1.0", tmp_path / f"h{major}") / "app-1.1.0.tgz"
        assert got.read_bytes() == two
        out = helm("template", "r", f"local{major}/tool-x", "--version", "0.2.0-rc.1").stdout.decode()
        assert 'greeting: "put"' in out, out

    r = request("DELETE", base + "/api/charts/app/1.0.0")
    assert (r.status, r.json()) == (200, {"deleted": True}), r
    assert request("GET", base + "/charts/app-1.0.0.tgz").status == 404
    assert request("GET", base + "/api/charts/app/1.0.0").status == 404
    assert [v["version"] for v in request("GET", base + "/api/charts/app").json()] == ["1.1.0"]


def test_bad_uploads_store_nothing(make_binaryrepo):
    br = make_binaryrepo(repositories=[LOCAL])
    base = repo_url(br, "helm-local")
    blobs_before = sorted(d for _, d in blob_files(br.data_dir))
    evil = make_chart("evil", "1.0.0", extra={"evil/../../escape.txt": "x"})
    no_chart_yaml = make_chart("x", "1.0.0", chart_yaml="description: none\n")
    cases = [
        ("POST", "/api/charts", b"this is not gzip", "gzip"),
        ("POST", "/api/charts", no_chart_yaml, "name"),
        ("POST", "/api/charts", evil, "unsafe path"),
        ("POST", "/api/charts", make_chart("bad", "latest"), "version"),
        ("PUT", "/other-1.0.0.tgz", make_chart("bad", "1.0.0"), "does not match"),
        ("PUT", "/../x-1.0.0.tgz", make_chart("x", "1.0.0"), None),
    ]
    for method, path, body, said in cases:
        r = request(method, base + path, body=body)
        assert 400 <= r.status < 500, (path, r)
        if said:
            assert said in r.body.decode(), (path, r)
        if path.startswith("/api/"):
            assert "error" in r.json(), r
    r = request("POST", base + "/api/charts", body=b"\0" * ((50 << 20) + 1))
    assert r.status == 413, r
    assert request("GET", base + "/api/charts").json() == {}
    assert sorted(d for _, d in blob_files(br.data_dir)) == blobs_before, "a refused upload left a blob"
    wait_until(lambda: br.upload_files() == [], timeout=5, what="no upload session left")


def test_virtual_merges_members(make_binaryrepo, chart_server, helms, tmp_path):
    up = chart_server()
    data = publish(up, [("shared", "1.0.0"), ("remoteonly", "1.0.0")])
    br = make_binaryrepo(repositories=[LOCAL, remote("helm-remote", up.url),
                                       {"name": "helm", "type": "virtual", "format": "helm",
                                        "members": ["helm-local", "helm-remote"]}])
    mine = make_chart("shared", "1.0.0", greeting="local wins")
    assert request("POST", repo_url(br, "helm-local") + "/api/charts", body=mine).status == 201
    assert request("POST", repo_url(br, "helm-local") + "/api/charts", body=make_chart("localonly", "0.1.0")).status == 201
    index = yaml.safe_load(request("GET", repo_url(br, "helm") + "/index.yaml").body)
    assert sorted(index["entries"]) == ["localonly", "remoteonly", "shared"], index
    assert len(index["entries"]["shared"]) == 1 and index["entries"]["shared"][0]["digest"] == sha256_hex(mine)
    helm = helms[4]
    helm_add(helm, "virt", repo_url(br, "helm"))
    assert (pull(helm, "virt/shared", "1.0.0", tmp_path / "s") / "shared-1.0.0.tgz").read_bytes() == mine
    got = pull(helm, "virt/remoteonly", "1.0.0", tmp_path / "r") / "remoteonly-1.0.0.tgz"
    assert got.read_bytes() == data["remoteonly"]
    assert up.hit("/charts/shared-1.0.0.tgz") == 0


def test_basic_credentials(make_binaryrepo, helms, tmp_path):
    br = make_binaryrepo(open=False, repositories=[LOCAL])
    base = repo_url(br, "helm-local")
    r = request("GET", base + "/index.yaml")
    assert r.status == 401 and r.header("WWW-Authenticate") == 'Basic realm="binaryrepo"', r
    r = request("POST", base + "/api/charts", body=make_chart("sec", "1.0.0"))
    assert r.status == 401 and "error" in r.json(), r
    r = request("POST", base + "/api/charts", body=make_chart("sec", "1.0.0"), headers={"Authorization": basic(*ADMIN)})
    assert r.status == 201, r
    helm = helms[4]
    with pytest.raises(Exception):
        helm_add(helm, "sec-anon", base)
    helm_add(helm, "sec", base, "--username", ADMIN[0], "--password", ADMIN[1])
    pull(helm, "sec/sec", "1.0.0", tmp_path / "sec", "--username", ADMIN[0], "--password", ADMIN[1])


def test_large_index_bounded_memory(make_binaryrepo, chart_server):
    up = chart_server()
    text = big_index(25 << 20)
    up.put("index.yaml", text)
    # the default CPU budget: a call earns time for the bytes it rewrites (docs/helm.md: large indexes)
    br = make_binaryrepo(repositories=[remote("helm-remote", up.url)])
    url = repo_url(br, "helm-remote") + "/index.yaml"
    time.sleep(0.5)
    idle = br.memory()["VmRSS"]
    peak = [idle]
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            peak[0] = max(peak[0], br.memory()["VmRSS"])
            time.sleep(0.02)
    watcher = threading.Thread(target=watch)
    watcher.start()
    results = []

    def get():
        results.append(request("GET", url, timeout=120))
    threads = [threading.Thread(target=get) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    watcher.join()
    assert [r.status for r in results] == [200] * 10
    assert len({sha256_bytes(r.body) for r in results}) == 1
    assert len(results[0].body) == len(text.encode()), "relative URLs are kept as they are"
    assert up.hit("/index.yaml") == 1, "ten cold clients, one upstream fetch"
    grew = (peak[0] - idle) / 1024
    print(f"RSS idle {idle / 1024:.1f} MiB, peak {peak[0] / 1024:.1f} MiB (+{grew:.1f} MiB) serving a "
          f"{len(text) >> 20} MiB index to 10 cold clients")
    assert grew <= 64, f"RSS grew {grew:.1f} MiB"
