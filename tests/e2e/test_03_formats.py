"""Manifest formats: an OCI index pulled for one platform fetches only that platform upstream; Docker
schema 2 manifests come back byte for byte."""
import json

from harness.clients import dir_image, skopeo_copy, skopeo_raw
from harness.images import DOCKER_MANIFEST
from harness.util import request, run, sha256_bytes

REPO = "docker-remote"


def test_index_pull_of_one_platform_fetches_only_that_platform(upstream, br, images, tmp_path):
    multi = images["multi"]
    arm, amd = multi.platforms["linux/arm64"], multi.platforms["linux/amd64"]
    br.create_remote(REPO, upstream.url)
    m0 = upstream.mark()
    skopeo_copy(multi.ref(br.prefix(REPO)), tmp_path / "arm64", override_arch="arm64")
    assert dir_image(tmp_path / "arm64") == (arm["digest"], arm["blobs"])
    st = upstream.stats(m0)
    refs = {e.ref for e in st.entries}
    assert st.count("GET", "manifest", ref=arm["digest"]) == 1, st.listing()
    assert amd["digest"] not in refs, f"the amd64 manifest was fetched upstream:\n{st.listing()}"
    assert not refs & set(amd["blobs"]), f"amd64 blobs were fetched upstream:\n{st.listing()}"
    assert st.blob_gets() == {d: [s] for d, s in arm["blobs"].items()}, st.listing()
    # the index itself comes back byte for byte
    assert skopeo_raw(multi.ref(br.prefix(REPO))) == multi.manifest


def test_index_pull_all_platforms(upstream, br, images, tmp_path):
    multi = images["multi"]
    br.create_remote(REPO, upstream.url)
    dest = tmp_path / "oci"
    run(["skopeo", "--insecure-policy", "copy", "--all", "--src-tls-verify=false",
         f"docker://{multi.ref(br.prefix(REPO))}", f"oci:{dest}:1"], timeout=300)
    index = json.loads((dest / "index.json").read_text())
    assert index["manifests"][0]["digest"] == multi.digest
    for d, size in multi.blobs.items():
        f = dest / "blobs" / "sha256" / d.split(":")[1]
        assert f.stat().st_size == size and sha256_bytes(f.read_bytes()) == d


def test_schema2_manifest_byte_for_byte(upstream, br, images, tmp_path):
    v2 = images["small-v2s2"]
    br.create_remote(REPO, upstream.url)
    r = request("GET", br.v2(REPO, f"{v2.repo}/manifests/{v2.tag}"), headers=[("Accept", DOCKER_MANIFEST)])
    assert r.status == 200, r
    assert r.body == v2.manifest, "schema 2 manifest bytes differ from the upstream's"
    assert r.header("Content-Type") == DOCKER_MANIFEST
    assert r.header("Docker-Content-Digest") == v2.digest
    assert skopeo_raw(v2.ref(br.prefix(REPO))) == v2.manifest
    skopeo_copy(v2.ref(br.prefix(REPO)), tmp_path / "v2s2")
    assert dir_image(tmp_path / "v2s2") == (v2.digest, v2.blobs)
    # by digest, as docker asks after its HEAD
    r = request("GET", br.v2(REPO, f"{v2.repo}/manifests/{v2.digest}"), headers=[("Accept", DOCKER_MANIFEST)])
    assert r.status == 200 and r.body == v2.manifest, r
