"""The web page at /ui/: served from the binary with security headers, fed by GET /api/stats (which shows a
caller only the repositories it may read), and driven in Debian's headless Chromium through playwright-core
(tests/e2e/web/drive.mjs): it lists what a pull cached with digests and pull commands, shows the bytes the
cache saved, keeps admin controls from anonymous users, and lets an admin create a repository."""
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.binaryrepo import ADMIN, basic
from harness.clients import dir_image, skopeo_copy
from harness.util import request

REPO = "docker-remote"
WEB = Path(__file__).parent / "web"
CHROMIUM = "/usr/bin/chromium"


def pull(br, image, dest):
    skopeo_copy(image.ref(br.prefix(REPO)), dest)
    return dir_image(dest)


def stats(br, auth=ADMIN):
    r = br.api("GET", "/api/stats", auth=auth)
    assert r.status == 200, r
    return {s["name"]: s for s in r.json()["repositories"]}


def test_page_is_served_with_security_headers_and_root_leads_to_it(br):
    r = request("GET", br.url + "/")
    assert (r.status, r.header("Location")) == (302, "/ui/"), r
    r = request("GET", br.url + "/ui/")
    assert r.status == 200 and r.header("Content-Type").startswith("text/html"), r
    csp = r.header("Content-Security-Policy")
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp, csp
    assert r.header("X-Content-Type-Options") == "nosniff", r.headers
    # no inline script for the CSP to allow: every <script> loads a file
    assert all(' src="' in tag for tag in re.findall(r"<script[^>]*>", r.text())), r.text()
    for path in ("/ui/app.js", "/ui/formats/docker.js"):
        r = request("GET", br.url + path)
        assert r.status == 200 and r.header("Content-Type").startswith("text/javascript"), (path, r)
    assert request("GET", br.url + "/ui/formats/nothing.js").status == 404
    assert request("GET", br.url + "/ui/../api/repositories").status in (302, 404)
    assert request("POST", br.url + "/ui/", body=b"x").status == 405
    # the page takes only / and /ui/: the registry API beside it is untouched
    assert request("GET", br.url + "/v2/").status in (200, 401)


def test_stats_show_a_caller_only_what_it_may_read(make_binaryrepo, upstream):
    br = make_binaryrepo(open=False)
    br.create_local("public", access=[{"who": "anonymous", "allow": ["read"]}])
    br.create_local("private", access=[{"who": "user:bob", "allow": ["read"]}])
    br.api("POST", "/api/users", json_body={"name": "alice", "password": "alice-password-1"})
    anonymous = stats(br, auth=None)
    assert list(anonymous) == ["public"], anonymous
    assert anonymous["public"]["type"] == "local" and anonymous["public"]["size_bytes"] == 0, anonymous
    assert sorted(stats(br)) == ["private", "public"]
    assert list(stats(br, auth=("alice", "alice-password-1"))) == ["public"]
    # one the caller may not read answers like one that does not exist
    assert br.api("GET", "/api/repositories/private/stats", auth=None).status == 404
    assert br.api("GET", "/api/repositories/nowhere/stats").status == 404
    assert br.api("GET", "/api/repositories/private/stats").status == 200
    r = br.api("GET", "/api/stats", headers={"Authorization": basic("alice", "wrong")})
    assert r.status == 401, r
    assert br.api("POST", "/api/stats").status == 405


def _drive(br, tmp_path, **scenario):
    if not Path(CHROMIUM).exists() or not (WEB / "node_modules" / "playwright-core").is_dir():
        pytest.fail("chromium or playwright-core missing: run tests/install-deps.sh")
    args = {"url": br.url, "admin": list(ADMIN), "screenshots": str(tmp_path), **scenario}
    p = subprocess.run([shutil.which("node") or "node", str(WEB / "drive.mjs"), json.dumps(args)], cwd=WEB,
                       capture_output=True, text=True, timeout=180, env={"CHROMIUM": CHROMIUM, "PATH": "/usr/bin:/bin"})
    assert p.returncode == 0, f"drive.mjs failed:\n{p.stdout}\n{p.stderr}"
    out = json.loads(p.stdout.strip().splitlines()[-1])
    for s in out["screenshots"]:
        print(f"screenshot: {s}")
    assert "failure" not in out, f"{out['failure']}\n{json.dumps(out, indent=1)}\n{br.log_tail(20)}"
    return out


def test_page_lists_a_pulled_image_its_savings_and_an_admin_creates_a_repository(br, upstream, images, tmp_path):
    small = images["small"]
    br.create_remote(REPO, upstream.url)
    assert pull(br, small, tmp_path / "cold") == (small.digest, small.blobs)
    cold = stats(br, auth=None)[REPO]
    # a cold pull saves nothing: what clients got came from upstream (the manifest may be sent twice)
    assert cold["cache"]["fetched_upstream"] == len(small.blobs) and cold["bytes_saved"] <= 2 * len(small.manifest), cold
    assert pull(br, small, tmp_path / "warm") == (small.digest, small.blobs)
    warm = stats(br, auth=None)[REPO]
    # the warm pull got every blob from the store: at least their bytes saved, no new fill
    assert warm["cache"]["fetched_upstream"] == len(small.blobs), warm
    assert warm["cache"]["served_from_store"] - cold["cache"]["served_from_store"] >= len(small.blobs), (cold, warm)
    assert warm["bytes_saved"] - cold["bytes_saved"] >= sum(small.blobs.values()) > 0, (cold, warm)
    assert warm["size_bytes"] >= sum(small.blobs.values()) and warm["blobs"] >= len(small.blobs), warm

    m = upstream.mark()
    out = _drive(br, tmp_path, repo=REPO, image=small.repo, tag=small.tag, create="made-in-page")
    browsed = upstream.stats(m)
    # browsing a remote costs no pulls upstream: the tag list, and the cached tag's details from the store
    assert browsed.count("GET", "manifest") == 0 and browsed.count(kind_="blob") == 0, browsed.listing()
    assert out["finalUrl"] == br.url + "/ui/" and out["title"] == "binaryrepo", out
    assert out["pageErrors"] == [] and out["console"] == [], out

    anon = out["anonymous"]
    row = next(r for r in anon["repositories"] if r["name"] == REPO)
    assert row["cells"][1:3] == ["remote", "docker"], row
    assert int(row["saved"]) == warm["bytes_saved"] > 0, row
    assert anon["adminControls"] == [], f"anonymous sees admin controls: {anon['adminControls']}"
    assert anon["plugins"].startswith("Plugins unavailable: sign in as an admin"), anon["plugins"]
    assert anon["items"] == [small.repo], anon
    # the remote shows its upstream's tags; the pulled one, once asked, with its digest, size and pull command
    assert set(anon["digestsBeforeAsking"]) == {""}, anon
    shown = {v["version"]: v for v in anon["versions"]}
    assert shown[small.tag] == {
        "version": small.tag, "digest": small.digest, "size": str(sum(small.blobs.values())),
        "pull": f"docker pull {br.prefix(REPO)}/{small.repo}:{small.tag}",
    }, anon["versions"]
    # the command shown is one a client can run as is
    cmd = shown[small.tag]["pull"].removeprefix("docker pull ")
    assert skopeo_copy(cmd, tmp_path / "from-page").returncode == 0
    assert dir_image(tmp_path / "from-page") == (small.digest, small.blobs)

    admin = out["admin"]
    assert admin["whoami"].startswith("Signed in as admin (admin)") and not admin["loginVisible"], admin
    assert {"docker", "helm"} <= {p[0] for p in admin["plugins"]} and all(p[1] == "0.3.0" for p in admin["plugins"]), admin["plugins"]
    assert "made-in-page" in [r["name"] for r in admin["repositories"]], admin
    assert admin["adminControls"], "admin controls hidden from an admin"
    made = br.api("GET", "/api/repositories/made-in-page")
    assert made.status == 200 and (made.json()["type"], made.json()["format"]) == ("local", "docker"), made
    assert out["signedOut"] == {"adminControls": [], "loginVisible": True}, out["signedOut"]
    # signing out revoked the page's token
    assert [t for t in br.api("GET", "/api/tokens").json() if t["name"] == "web page"] == []
    for s in out["screenshots"]:
        assert Path(s).stat().st_size > 10_000, s
