"""Real clients through binaryrepo: podman, containerd (ctr), and a real Docker Engine, including dockerd's
--registry-mirror mode served by binaryrepo's default repository."""
import pytest

REPO = "docker-remote"


def test_podman_pull(upstream, br, images, podman):
    small = images["small"]
    br.create_remote(REPO, upstream.url)
    ref = small.ref(br.prefix(REPO))
    podman("pull", "-q", "--tls-verify=false", ref)
    assert podman("image", "inspect", "--format", "{{.Digest}}", ref).stdout.decode().strip() == small.digest
    assert podman("image", "inspect", "--format", "{{.Id}}", ref).stdout.decode().strip() == small.config.split(":")[1]


def test_podman_pull_by_digest_of_index(upstream, br, images, podman):
    multi = images["multi"]
    br.create_remote(REPO, upstream.url)
    ref = multi.ref(br.prefix(REPO), by_digest=True)
    podman("pull", "-q", "--tls-verify=false", "--arch", "arm64", ref)
    cfg = multi.platforms["linux/arm64"]["config"].split(":")[1]
    assert podman("image", "inspect", "--format", "{{.Id}}", ref).stdout.decode().strip() == cfg


def test_ctr_pull(upstream, br, images, containerd):
    small = images["small"]
    br.create_remote(REPO, upstream.url)
    ref = small.ref(br.prefix(REPO))
    containerd.ctr("images", "pull", "--plain-http", ref)
    try:
        assert containerd.image_digest(ref) == small.digest
        # the content store holds exactly the upstream's blobs
        for d in small.blobs:
            info = containerd.ctr("content", "get", d).stdout
            assert len(info) == small.blobs[d]
    finally:
        containerd.ctr("images", "rm", ref, check=False)


def test_ctr_pull_index_platform(upstream, br, images, containerd):
    multi = images["multi"]
    br.create_remote(REPO, upstream.url)
    ref = multi.ref(br.prefix(REPO))
    containerd.ctr("images", "pull", "--plain-http", "--platform", "linux/arm64", ref)
    try:
        assert containerd.image_digest(ref) == multi.digest
    finally:
        containerd.ctr("images", "rm", ref, check=False)


@pytest.fixture
def docker_clean(dockerd):
    dockerd.remove_all_images()
    yield dockerd
    dockerd.remove_all_images()


def test_docker_pull_and_run(upstream, br, images, docker_clean, egress_trap):
    dockerd = docker_clean
    small, bb = images["small"], images["busybox"]
    br.create_remote(REPO, upstream.url)
    trap_before = len(egress_trap.lines)
    ref = small.ref(br.prefix(REPO))
    dockerd.docker("pull", "-q", ref)
    assert dockerd.image_id(ref) == small.config
    assert f"{br.prefix(REPO)}/{small.repo}@{small.digest}" in dockerd.repo_digests(ref)
    bbref = bb.ref(br.prefix(REPO))
    dockerd.docker("pull", "-q", bbref)
    out = dockerd.docker("run", "--rm", "--network", "none", bbref, "sh", "-c", "echo hello-from-$((6*7))")
    assert out.stdout.decode().strip() == "hello-from-42"
    assert egress_trap.lines[trap_before:] == []


def test_docker_registry_mirror(upstream, make_binaryrepo, images, docker_clean, egress_trap, mirror_port):
    """dockerd --registry-mirror http://127.0.0.1:MIRROR; binaryrepo's default repository (seeded from the
    config file) is a remote for the test upstream: `docker pull small:1` is served by binaryrepo."""
    dockerd = docker_clean
    small = images["small"]
    make_binaryrepo(port=mirror_port, repositories=[
        {"name": "docker-hub", "type": "remote", "format": "docker", "url": upstream.url, "default": True}])
    trap_before = len(egress_trap.lines)
    m0 = upstream.mark()
    dockerd.docker("pull", "-q", "small:1")
    assert dockerd.image_id("small:1") == small.config
    st = upstream.stats(m0)
    assert st.blob_gets() == {d: [s] for d, s in small.blobs.items()}, \
        f"the mirror pull did not come through binaryrepo from the upstream:\n{st.listing()}"
    assert egress_trap.lines[trap_before:] == [], "dockerd tried to reach the internet"

    dockerd.docker("rmi", "small:1")
    m1 = upstream.mark()
    dockerd.docker("pull", "-q", "small:1")
    assert dockerd.image_id("small:1") == small.config
    st = upstream.stats(m1)
    assert st.count(kind_="blob") == 0 and st.count(kind_="manifest") == 0, st.listing()
    assert egress_trap.lines[trap_before:] == []
