"""Pushing to a local repository with real clients, through the path method (127.0.0.1:PORT/docker-local/...):
skopeo (both directions, a multi-platform index), podman, containerd's ctr, a real dockerd (including the
cross-repository mount of a layer it pushed before), and skopeo through the example nginx set-up's
docker-local.example.com virtual host. Digests and bytes are compared with what was pushed."""
import json
import re
import urllib.parse
from pathlib import Path

import pytest

from harness.clients import dir_image, skopeo_copy, skopeo_raw
from harness.images import ACCEPT_HEADER, skopeo
from harness.oci import Oci
from harness.util import request, run, sha256_bytes

LOCAL = "docker-local"


def push_layout(image, dest_ref, all_platforms=False, env=None):
    extra = ["--all"] if all_platforms else []
    skopeo("copy", *extra, "--dest-tls-verify=false", f"oci:{image.layout}:{image.tag}", f"docker://{dest_ref}",
           timeout=300, env=env)


def test_skopeo_push_then_pull_back(local_br, images, tmp_path):
    br, small = local_br, images["small"]
    ref = f"{br.prefix(LOCAL)}/e2e/small:1"
    push_layout(small, ref)
    assert skopeo_raw(ref) == small.manifest, "the manifest is served byte for byte as pushed"
    skopeo_copy(ref, tmp_path / "back")
    assert dir_image(tmp_path / "back") == (small.digest, small.blobs)
    # by digest, and the blobs' bytes equal the layout's
    skopeo_copy(f"{br.prefix(LOCAL)}/e2e/small@{small.digest}", tmp_path / "bydigest")
    assert dir_image(tmp_path / "bydigest") == (small.digest, small.blobs)
    for d in small.blobs:
        hexd = d.split(":")[1]
        assert (tmp_path / "back" / hexd).read_bytes() == (Path(small.layout) / "blobs" / "sha256" / hexd).read_bytes()
    r = request("GET", br.v2(LOCAL, "e2e/small/tags/list"))
    assert r.status == 200 and r.json()["tags"] == ["1"], r


def test_skopeo_push_multi_platform_index_and_pull_one_platform(local_br, images, tmp_path):
    br, multi = local_br, images["multi"]
    ref = f"{br.prefix(LOCAL)}/e2e/multi:1"
    push_layout(multi, ref, all_platforms=True)
    assert skopeo_raw(ref) == multi.manifest, "the index is served byte for byte"
    for plat, arch in (("linux/arm64", "arm64"), ("linux/amd64", "amd64")):
        p = multi.platforms[plat]
        run(["skopeo", "--insecure-policy", "--override-arch", arch, "--override-os", "linux", "copy",
             "--src-tls-verify=false", f"docker://{ref}", f"dir:{tmp_path / arch}"], timeout=300)
        assert dir_image(tmp_path / arch) == (p["digest"], p["blobs"]), f"{plat} pulled from the pushed index"
    # every platform manifest is there by digest
    for plat, p in multi.platforms.items():
        assert skopeo_raw(f"{br.prefix(LOCAL)}/e2e/multi@{p['digest']}") == p["manifest"].encode(), plat


def test_podman_push(local_br, images, podman, tmp_path):
    br, small = local_br, images["small"]
    podman("pull", "-q", small.podman_oci(tmp_path))
    ref = f"{br.prefix(LOCAL)}/e2e/podman:1"
    digestfile = tmp_path / "digest"
    podman("push", "--tls-verify=false", "--digestfile", str(digestfile), small.config.split(":")[1], f"docker://{ref}")
    pushed = digestfile.read_text().strip()
    r = request("HEAD", br.v2(LOCAL, "e2e/podman/manifests/1"), headers={"Accept": ACCEPT_HEADER})
    assert r.status == 200 and r.header("Docker-Content-Digest") == pushed, (r, r.headers, pushed)
    raw = skopeo_raw(ref)
    assert sha256_bytes(raw) == pushed
    assert json.loads(raw)["config"]["digest"] == small.config, "podman pushed the image's config"
    skopeo_copy(ref, tmp_path / "back")
    digest, blobs = dir_image(tmp_path / "back")  # every blob hashes to its name
    assert digest == pushed and small.config in blobs

    # and podman pulls it back into a clean store: the same image ID
    podman("rmi", "-a", "-f")
    podman("pull", "-q", "--tls-verify=false", ref)
    assert podman("image", "inspect", "--format", "{{.Id}}", ref).stdout.decode().strip() == small.config.split(":")[1]


def test_ctr_push(upstream, local_br, images, containerd, tmp_path):
    br, small = local_br, images["small"]
    src = f"{upstream.host}/{small.repo}:{small.tag}"
    dst = f"{br.prefix(LOCAL)}/e2e/ctr:1"
    containerd.ctr("images", "pull", "--plain-http", src)
    try:
        containerd.ctr("images", "tag", "--force", src, dst)
        containerd.ctr("images", "push", "--plain-http", dst)
        assert skopeo_raw(dst) == small.manifest, "containerd pushes the manifest bytes it has"
        skopeo_copy(dst, tmp_path / "back")
        assert dir_image(tmp_path / "back") == (small.digest, small.blobs)
    finally:
        containerd.ctr("images", "rm", src, dst, check=False)


@pytest.fixture
def docker_clean(dockerd):
    dockerd.remove_all_images()
    yield dockerd
    dockerd.remove_all_images()


PUSH_LINE = re.compile(r"^(?P<id>[0-9a-f]{12}): (?P<what>.+)$", re.M)
DIGEST_LINE = re.compile(r"digest: (?P<digest>sha256:[0-9a-f]{64}) size: (?P<size>\d+)")


def test_docker_push_and_cross_repository_mount(local_br, images, docker_clean, tmp_path, egress_trap):
    br, dockerd, bb = local_br, docker_clean, images["busybox"]
    trap_before = len(egress_trap.lines)
    archive = tmp_path / "bb.tar"
    skopeo("copy", f"oci:{bb.layout}:{bb.tag}", f"docker-archive:{archive}:e2e/busybox:1")
    dockerd.docker("load", "-i", str(archive))
    first, second = f"{br.prefix(LOCAL)}/e2e/bb:1", f"{br.prefix(LOCAL)}/e2e/bb2:1"
    dockerd.docker("tag", "e2e/busybox:1", first)
    out1 = dockerd.docker("push", first).stdout.decode()
    m = DIGEST_LINE.search(out1)
    assert m, f"docker push printed no digest:\n{out1}"
    pushed = m.group("digest")
    r = request("GET", br.v2(LOCAL, "e2e/bb/manifests/1"),
                headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
    assert r.status == 200 and sha256_bytes(r.body) == pushed == r.header("Docker-Content-Digest"), r
    assert len(r.body) == int(m.group("size"))
    layers = [x["digest"] for x in json.loads(r.body)["layers"]]

    # the second name: dockerd knows the layer is in docker-local/e2e/bb of this registry and mounts it (or
    # finds it there already); its bytes are not sent again
    dockerd.docker("tag", "e2e/busybox:1", second)
    mark = br.log_mark()
    out2 = dockerd.docker("push", second).stdout.decode()
    statuses = {mm.group("id"): mm.group("what") for mm in PUSH_LINE.finditer(out2)}
    assert statuses and all(("Mounted from" in s or "already exists" in s) for s in statuses.values()), \
        f"second push of the same layers:\n{out2}"
    served = br.served(mark)
    uploads = [x for x in served if x[0] in ("PATCH", "PUT") and "/blobs/uploads/" in x[1]]
    assert len(uploads) <= 2, f"the second push uploaded blob bytes again (config at most): {uploads}"
    if any("Mounted from" in s for s in statuses.values()):
        mounts = [x for x in served if x[0] == "POST" and x[1].endswith("/e2e/bb2/blobs/uploads/") and x[2] == 201]
        assert mounts, f"docker says it mounted, binaryrepo logged no POST .../blobs/uploads/ -> 201: {served}"
    assert DIGEST_LINE.search(out2).group("digest") == pushed

    # the mount request dockerd sends, replayed: 201 with the digest
    oci = Oci(br.url, LOCAL)
    r = oci.start_upload("e2e/bb3", query=urllib.parse.urlencode({"mount": layers[0], "from": f"{LOCAL}/e2e/bb"}))
    assert r.status == 201 and r.header("Docker-Content-Digest") == layers[0], f"mount of {layers[0]}: {r!r}"

    # a clean engine pulls the second name and runs it
    dockerd.remove_all_images()
    dockerd.docker("pull", "-q", second)
    out = dockerd.docker("run", "--rm", "--network", "none", second, "sh", "-c", "echo pushed-$((6*7))")
    assert out.stdout.decode().strip() == "pushed-42"
    assert egress_trap.lines[trap_before:] == []


# --- nginx: docker-local.example.com -> /repo/docker-local/ ---------------------------------------------

HOST = "docker-local.example.com"


@pytest.fixture
def br(request, make_binaryrepo):
    """binaryrepo, trusting nginx (on 127.0.0.1) for X-Forwarded-* in the tests that put it in front"""
    behind_nginx = "nginx" in request.fixturenames
    return make_binaryrepo(config={"trusted_proxies": ["127.0.0.1/32"]} if behind_nginx else None)


def test_push_through_nginx_virtual_host(local_br, nginx, images, tmp_path):
    """skopeo cannot set Host: nginx is its HTTP proxy, so http://docker-local.example.com:PORT/v2/... selects
    the docker-local server block (no DNS lookup happens); binaryrepo sees /repo/docker-local/v2/... and must
    hand out upload Locations on the client's host name"""
    br, small = local_br, images["small"]
    env = {"HTTP_PROXY": nginx.url, "HTTPS_PROXY": nginx.url, "NO_PROXY": "", "http_proxy": nginx.url,
           "https_proxy": nginx.url, "no_proxy": ""}
    push_layout(small, f"{HOST}:{nginx.port}/e2e/nginx:1", env=env)
    ref = f"{br.prefix(LOCAL)}/e2e/nginx:1"
    assert skopeo_raw(ref) == small.manifest
    skopeo_copy(ref, tmp_path / "back")
    assert dir_image(tmp_path / "back") == (small.digest, small.blobs)
    skopeo_copy(f"{HOST}:{nginx.port}/e2e/nginx:1", tmp_path / "via-nginx", env=env)
    assert dir_image(tmp_path / "via-nginx") == (small.digest, small.blobs)
