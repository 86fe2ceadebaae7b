"""The README's own commands, run as written against a live server, so that they cannot drift.

README.md marks the blocks a user is meant to type with `<!-- test: NAME -->` on the line before a
```sh block. This test reads them from the README, replaces the documented address (`HOST:8081`, or
`127.0.0.1:8081` in the tour) with the live server's, and runs each with `bash -e -o pipefail` in one
working directory, in README order, with BINARYREPO_ADMIN_PASSWORD set as the README asks. The server
has the embedded default repositories, except that `docker-remote` points at a CNCF distribution
upstream started here (seeded with a small image as `library/redis:7`) instead of Docker Hub. The
clients are the real ones: a Docker Engine, containerd's ctr, podman and skopeo, each with a private
store (DOCKER_HOST, CONTAINERD_ADDRESS, CONTAINERS_STORAGE_CONF) so the commands need no extra flags.

What a user would see is asserted after each block: the pulled image's digest is the upstream's, the
second round of pulls costs the upstream nothing, the pushed tags are in docker-local with the image's
config, the virtual repository resolves and takes pushes, the page at /ui/ answers 200.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from harness.binaryrepo import ADMIN, REPO_ROOT, basic, binary_path
from harness.clients import Podman
from harness.helm import helm_binary
from harness.images import ACCEPT_HEADER, fetch_manifest
from harness.util import request, run, wait_until

README = REPO_ROOT / "README.md"
MARK = re.compile(r"^<!-- test: ([a-z0-9-]+) -->\n```sh\n(.*?)^```$", re.M | re.S)
# The blocks this test knows how to prepare and check, in README order. A block marked in the README
# but missing here, or the other way round, fails test_readme_marks: every marked block must run.
EXPECTED = ["tour", "pull", "push", "virtual", "helm", "users", "cli"]
DOCUMENTED = ("HOST:8081", "127.0.0.1:8081", "localhost:8081")


def marked_blocks() -> list[tuple[str, str]]:
    return MARK.findall(README.read_text())


def test_readme_marks():
    """every `<!-- test: … -->` mark is followed by a ```sh block, and the marked blocks are the ones run below"""
    text = README.read_text()
    blocks = marked_blocks()
    assert len(re.findall(r"^<!-- test:", text, re.M)) == len(blocks), "a `<!-- test: NAME -->` mark not followed directly by a ```sh block"
    assert [name for name, _ in blocks] == EXPECTED


def substitute(body: str, host: str) -> str:
    for addr in DOCUMENTED:
        body = body.replace(addr, host)
    assert "8081" not in body, f"an address the test does not substitute is left in:\n{body}"
    return body


class Shell:
    """Runs README blocks with bash -e in one directory, with the clients' stores set through the environment."""

    def __init__(self, cwd: Path, env: dict, host: str):
        self.cwd, self.env, self.host = cwd, env, host
        self.outputs: dict[str, str] = {}

    def block(self, name: str, body: str) -> str:
        script = substitute(body, self.host)
        p = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=self.cwd, env=self.env,
                           capture_output=True, timeout=900)
        out, err = p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")
        assert p.returncode == 0, (f"README block `{name}` failed with exit {p.returncode}:\n{script}\n"
                                   f"--- stdout\n{out[-3000:]}\n--- stderr\n{err[-3000:]}")
        self.outputs[name] = out
        return out

    def run(self, *cmd) -> str:
        return run(list(cmd), env=self.env, cwd=self.cwd, timeout=300).stdout.decode()


@pytest.fixture
def readme_env(tmp_path, dockerd, containerd):
    """the environment a user's shell would have: each client's own store, BINARYREPO_ADMIN_PASSWORD"""
    try:
        helm = helm_binary(3)
    except RuntimeError as e:
        pytest.fail(f"helm 3 is needed for the README's Helm block: {e}")
    pm = Podman()  # short dirs under /tmp (podman refuses long run roots); its cleanup resets the store
    storage_conf = pm.dir / "storage.conf"
    storage_conf.write_text(f'[storage]\ndriver = "vfs"\nrunroot = "{pm.dir / "runroot"}"\n'
                            f'graphroot = "{pm.dir / "root"}"\n')
    containers_conf = pm.dir / "containers.conf"
    containers_conf.write_text(f'[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "none"\n'
                               f'tmp_dir = "{pm.dir / "tmp"}"\n')
    (tmp_path / "docker-config").mkdir()
    (tmp_path / "containers-auth.json").write_text("{}")
    env = dict(os.environ)
    for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        env.pop(k, None)
    namespace = f"readme-{uuid.uuid4().hex[:8]}"
    env.update(dockerd.env)
    # `binaryrepo` where the README's CLI section puts it, and `helm` (3, fetched and cached by the harness)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "helm").symlink_to(helm)
    env["PATH"] = f"{binary_path().parent}:{bindir}:{env.get('PATH', '')}"
    for d in ("config", "cache", "data"):
        env[f"HELM_{d.upper()}_HOME"] = str(tmp_path / f"helm-{d}")
    env.update({
        "BINARYREPO_ADMIN_PASSWORD": ADMIN[1],
        "DOCKER_CONFIG": str(tmp_path / "docker-config"),
        "CONTAINERD_ADDRESS": str(containerd.sock),
        "CONTAINERD_NAMESPACE": namespace,
        "CONTAINERS_STORAGE_CONF": str(storage_conf),
        "CONTAINERS_CONF": str(containers_conf),
        "REGISTRY_AUTH_FILE": str(tmp_path / "containers-auth.json"),
    })
    dockerd.remove_all_images()
    yield env
    dockerd.remove_all_images()
    for ref in containerd.ctr("images", "ls", "-q", ns=namespace, check=False).stdout.decode().split():
        containerd.ctr("images", "rm", ref, ns=namespace, check=False)
    pm.cleanup()


def config_of(br, repo: str, image: str, ref: str) -> tuple[str, str]:
    """(manifest digest, config digest) of <repo>/<image>:<ref> as the admin reads it through the path method"""
    r = request("GET", f"{br.url}/v2/{repo}/{image}/manifests/{ref}",
                headers=[("Accept", ACCEPT_HEADER), ("Authorization", basic(*ADMIN))])
    assert r.status == 200, f"GET {repo}/{image}:{ref} -> {r!r}"
    return r.header("Docker-Content-Digest"), json.loads(r.body)["config"]["digest"]


def tags_of(br, repo: str, image: str) -> list:
    r = request("GET", f"{br.url}/v2/{repo}/{image}/tags/list", headers=[("Authorization", basic(*ADMIN))])
    assert r.status == 200, f"GET {repo}/{image}/tags/list -> {r!r}"
    return r.json()["tags"]


def test_readme_blocks_run(make_upstream, make_binaryrepo, images, readme_env, dockerd, containerd, tmp_path):
    small = images["small"]
    up = make_upstream()
    # the tour's image: Docker Hub's library/redis:7, here a small image under that name, byte for byte
    run(["skopeo", "copy", "--preserve-digests", "--src-tls-verify=false", "--dest-tls-verify=false",
         f"docker://{up.host}/{small.repo}:{small.tag}", f"docker://{up.host}/library/redis:7"], timeout=300)
    _, _, upstream_digest = fetch_manifest(up.url, "library/redis", "7")
    assert upstream_digest == small.digest
    # the embedded defaults (config.rs default_repositories) with docker-remote's url on the local upstream;
    # open=False: the server's own access defaults, as a user gets them
    br = make_binaryrepo(open=False, repositories=[
        {"name": "docker-remote", "type": "remote", "format": "docker", "url": up.url, "default": True},
        {"name": "docker-local", "type": "local", "format": "docker"},
        {"name": "helm-local", "type": "local", "format": "helm"},
    ])
    work = tmp_path / "work"
    work.mkdir()
    sh = Shell(work, readme_env, br.host)
    blocks = dict(marked_blocks())
    remote_ref = f"{br.host}/docker-remote/library/redis:7"

    # --- the five-minute tour ---------------------------------------------------------------------
    mark = up.mark()
    out = sh.block("tour", blocks["tour"])
    assert f"{br.host}/docker-remote/library/redis@{small.digest}" in dockerd.repo_digests(remote_ref)
    assert dockerd.image_id(remote_ref) == small.config
    fetched = up.stats(mark).blob_gets()
    assert all(len(fetched.get(d, [])) == 1 for d in small.blobs), f"each blob once from upstream: {fetched}"
    lines = out.splitlines()
    stats = json.loads(next(line for line in lines if line.startswith("{") and '"cache"' in line))
    assert stats["name"] == "docker-remote" and "bytes_saved" in stats and "fetched_upstream" in stats["cache"], stats
    assert json.loads(next(line for line in lines if '"tags"' in line))["tags"] == ["7"]
    assert lines[-1] == "200", "the page at /ui/"
    assert config_of(br, "docker-local", "team/redis", "7")[1] == small.config
    anonymous = request("GET", f"{br.url}/v2/docker-local/team/redis/tags/list")
    assert anonymous.status == 401, "docker-local is not readable anonymously by default"

    # --- pulls through the remote with each client: served from the cache -------------------------
    mark = up.mark()
    sh.block("pull", blocks["pull"])
    assert json.loads((work / "redis" / "manifest.json").read_bytes()) == json.loads(small.manifest)
    ctr_ls = sh.run("ctr", "images", "ls")
    assert any(line.split()[:1] == [remote_ref] and small.digest in line for line in ctr_ls.splitlines()), ctr_ls
    podman_digest = sh.run("podman", "image", "inspect", "--format", "{{.Digest}}", remote_ref).strip()
    assert podman_digest == small.digest
    again = up.stats(mark)
    assert again.count("GET", "blob") == 0 and again.count(kind_="manifest") == 0, \
        f"a second round of pulls within tag_check_seconds asks the upstream nothing: {again.summary()}"
    # "library/ is added only for a Docker Hub upstream": this one is not, so the one-word name is not found
    one_word = request("GET", f"{br.url}/v2/docker-remote/redis/manifests/7", headers=[("Accept", ACCEPT_HEADER)])
    assert one_word.status == 404 and b"MANIFEST_UNKNOWN" in one_word.body, one_word

    # --- pushes to docker-local: the README's `myapp:1` is an image in each client's store ---------
    sh.run("docker", "tag", remote_ref, "myapp:1")
    sh.run("podman", "tag", remote_ref, "myapp:1")
    sh.run("ctr", "images", "tag", remote_ref, "docker.io/library/myapp:1")
    shutil.copytree(small.layout, work / "layout")
    sh.block("push", blocks["push"])
    assert sorted(tags_of(br, "docker-local", "team/myapp")) == ["1", "2", "3", "4"]
    for tag in ("1", "2", "3", "4"):
        assert config_of(br, "docker-local", "team/myapp", tag)[1] == small.config, f"team/myapp:{tag}"
    assert config_of(br, "docker-local", "team/myapp", "2")[0] == small.digest, "skopeo copies the layout as is"
    assert config_of(br, "docker-local", "team/myapp", "4")[0] == small.digest, "ctr pushes what it pulled"

    # --- a virtual repository over docker-local and docker-remote ----------------------------------
    mark = up.mark()
    sh.block("virtual", blocks["virtual"])
    virtual = br.api("GET", "/api/repositories/docker-virtual").json()
    assert virtual["members"] == ["docker-local", "docker-remote"] and virtual["default_local"] == "docker-local"
    assert dockerd.image_id(f"{br.host}/docker-virtual/team/myapp:1") == small.config
    assert dockerd.image_id(f"{br.host}/docker-virtual/library/redis:7") == small.config
    assert up.stats(mark).count("GET", "blob") == 0, "the remote member serves from its cache"
    assert config_of(br, "docker-local", "team/myapp", "2")[1] == small.config, "the push landed in docker-local"
    assert sorted(tags_of(br, "docker-local", "team/myapp")) == ["1", "2", "3", "4"]

    # --- a chart uploaded to helm-local and pulled back with helm --------------------------------
    since = br.log_mark()
    out = sh.block("helm", blocks["helm"])
    assert "mine/mychart" in out, out

    def chart_gets():  # the access log is written in batches: wait for helm pull's line
        return [s for m, path, s in br.served(since) if m == "GET" and path.endswith("/mychart-0.1.0.tgz")]
    wait_until(chart_gets, timeout=10, what="helm pull's GET of the chart in the access log")
    assert chart_gets() == [200], br.served(since)
    r = request("GET", f"{br.url}/repo/helm-local/index.yaml", headers=[("Authorization", basic(*ADMIN))])
    assert r.status == 200, r
    entry = yaml.safe_load(r.body)["entries"]["mychart"][0]
    assert entry["version"] == "0.1.0", entry
    chart = request("GET", f"{br.url}/repo/helm-local/{entry['urls'][0]}", headers=[("Authorization", basic(*ADMIN))])
    pulled = (work / "mychart-0.1.0.tgz").read_bytes()  # helm package wrote it, helm pull overwrote it
    assert chart.status == 200 and chart.body == pulled
    assert entry["digest"] == hashlib.sha256(pulled).hexdigest()
    assert request("GET", f"{br.url}/repo/helm-local/index.yaml").status == 401, "helm-local is not public"

    # --- users, a grant for their group, an API token ---------------------------------------------
    out = sh.block("users", blocks["users"])
    alice = br.api("GET", "/api/users/alice").json()
    assert alice["groups"] == ["dev"] and not alice["admin"], alice
    access = br.api("GET", "/api/repositories/docker-local").json()["access"]
    assert {"who": "group:dev", "allow": ["write"]} in access, access
    token = re.search(r'"token":"(brt_[A-Za-z0-9_-]{43})"', out)
    assert token, f"the token is shown once: {out}"
    bearer = [("Authorization", f"Bearer {token.group(1)}")]
    assert request("GET", f"{br.url}/v2/docker-local/team/myapp/tags/list", headers=bearer).status == 200
    upload = request("POST", f"{br.url}/v2/docker-local/team/ci/blobs/uploads/", headers=bearer)
    assert upload.status == 202, f"alice's token may push (group dev has write): {upload!r}"
    assert request("POST", f"{br.url}/v2/docker-local/team/ci/blobs/uploads/").status == 401

    # --- the command line ----------------------------------------------------------------------------
    out = sh.block("cli", blocks["cli"])
    assert "docker-local" in out and "docker-remote" in out, out
    assert br.api("GET", "/api/repositories/quay").status == 404, "created, updated, shown and deleted"
    assert br.api("GET", "/api/users/bob").status == 404, "created, given a new password and deleted"
    assert "quay" in out and "bob" in out, out
    tokens = br.api("GET", "/api/tokens").json()
    assert any(t["name"] == "ci" for t in (tokens["tokens"] if isinstance(tokens, dict) else tokens)), tokens
    assert br.api("GET", "/api/gc").json()["state"] == "finished"
