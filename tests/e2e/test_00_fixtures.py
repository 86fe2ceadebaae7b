"""The test peers work on their own (no binaryrepo involved): if one of these fails, the machine is missing
a package or a peer changed behaviour, and the binaryrepo tests after it would fail for the wrong reason."""
import json

from harness.binaryrepo import blob_files
from harness.clients import dir_image, skopeo_copy, skopeo_raw
from harness.fakeregistry import FakeRegistry
from harness.images import ACCEPT_HEADER
from harness.tokenserver import htpasswd_file
from harness.util import request, sha256_bytes, stream_get


def test_images_are_served_by_the_upstream(upstream, images, tmp_path):
    for name in ("small", "big", "multi", "small-v2s2", "busybox", "small2"):
        im = images[name]
        raw = skopeo_raw(f"{upstream.host}/{im.repo}:{im.tag}")
        assert raw == im.manifest and sha256_bytes(raw) == im.digest, name
    small = images["small"]
    skopeo_copy(small.ref(upstream.host), tmp_path / "small")
    assert dir_image(tmp_path / "small") == (small.digest, small.blobs)
    st = upstream.stats()
    assert st.blob_gets() == {d: [s] for d, s in small.blobs.items()}, st.listing()


def test_token_auth_upstream(token_server, make_upstream, tmp_path, images):
    ts = token_server(users={"alice": "pw-alice"}, anonymous=False)
    up = make_upstream("tok", auth=ts.registry_auth())
    r = request("GET", f"{up.url}/v2/library/small/manifests/1")
    assert r.status == 401 and "Bearer realm=" in r.header("WWW-Authenticate")
    raw = skopeo_raw(images["small"].ref(up.host), creds="alice:pw-alice")
    assert raw == images["small"].manifest
    assert any(x["user"] == "alice" for x in ts.requests)
    p = skopeo_copy(images["small"].ref(up.host), tmp_path / "x", check=False)
    assert p.returncode != 0  # anonymous gets a token without access


def test_htpasswd_upstream(make_upstream, tmp_path, images):
    hp = htpasswd_file(tmp_path / "htpasswd", "bob", "pw-bob")
    up = make_upstream("ht", auth={"htpasswd": {"realm": "e2e", "path": hp}})
    assert request("GET", f"{up.url}/v2/").status == 401
    assert skopeo_raw(images["small"].ref(up.host), creds="bob:pw-bob") == images["small"].manifest


def test_fake_registry(images):
    small = images["small"]
    fake = FakeRegistry().start()
    try:
        fake.add_layout(small.layout, small.repo)
        r = request("GET", f"{fake.url}/v2/{small.repo}/manifests/1", headers={"Accept": ACCEPT_HEADER})
        assert r.status == 200 and sha256_bytes(r.body) == small.digest
        layer, size = small.largest_layer()
        assert stream_get(f"{fake.url}/v2/{small.repo}/blobs/{layer}").digest == layer
        fake.corrupt.add(layer)
        got = stream_get(f"{fake.url}/v2/{small.repo}/blobs/{layer}")
        assert got.nbytes == size and got.digest != layer
    finally:
        fake.stop()


def test_blob_files_helper(tmp_path):
    (tmp_path / "a" / "sha256").mkdir(parents=True)
    good = tmp_path / "a" / "sha256" / sha256_bytes(b"x").split(":")[1]
    good.write_bytes(b"x")
    (tmp_path / "a" / "staged-123.tmp").write_bytes(b"partial")
    assert list(blob_files(tmp_path)) == [(good, sha256_bytes(b"x"))]


def test_podman_against_upstream(upstream, podman, images):
    small = images["small"]
    ref = small.ref(upstream.host)
    podman("pull", "-q", "--tls-verify=false", ref)
    assert podman("image", "inspect", "--format", "{{.Digest}}", ref).stdout.decode().strip() == small.digest


def test_containerd_against_upstream(upstream, containerd, images):
    small = images["small"]
    ref = small.ref(upstream.host)
    containerd.ctr("images", "pull", "--plain-http", ref)
    try:
        assert containerd.image_digest(ref) == small.digest
    finally:
        containerd.ctr("images", "rm", ref, check=False)


def test_dockerd_against_upstream(upstream, dockerd, images, egress_trap):
    small, bb = images["small"], images["busybox"]
    try:
        dockerd.docker("pull", "-q", small.ref(upstream.host))
        assert dockerd.image_id(small.ref(upstream.host)) == small.config
        dockerd.docker("pull", "-q", bb.ref(upstream.host))
        out = dockerd.docker("run", "--rm", "--network", "none", bb.ref(upstream.host), "sh", "-c", "echo ok-$((40+2))")
        assert out.stdout.decode().strip() == "ok-42"
        info = json.loads(dockerd.docker("info", "--format", "{{json .RegistryConfig.Mirrors}}").stdout)
        assert info and info[0].startswith("http://127.0.0.1:")
    finally:
        dockerd.remove_all_images()
    assert egress_trap.lines == []
