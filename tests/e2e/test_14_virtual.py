"""Virtual repositories: one name (docker) over docker-local and docker-remote. Pulls find locally pushed and
remote images, the first member that has a name wins, pushes land in default_local, and the API refuses
definitions that cannot work."""
import pytest

from harness.clients import dir_image, skopeo_copy, skopeo_raw
from harness.images import ACCEPT_HEADER, skopeo
from harness.oci import errors_of
from harness.util import request, sha256_bytes

UNUSED = "http://127.0.0.1:9"  # never contacted


def push_layout(image, dest_ref):
    skopeo("copy", "--dest-tls-verify=false", f"oci:{image.layout}:{image.tag}", f"docker://{dest_ref}", timeout=300)


@pytest.fixture
def virt(upstream, local_br):
    br = local_br
    br.create_remote("docker-remote", upstream.url)
    v = br.create_virtual("docker-virtual", ["docker-local", "docker-remote"], default_local="docker-local")
    assert v["type"] == "virtual" and v["members"] == ["docker-local", "docker-remote"], v
    assert v.get("default_local") == "docker-local", v
    return br


def test_pull_local_and_remote_images_through_the_virtual(virt, upstream, images, tmp_path):
    br, small, small2 = virt, images["small"], images["small2"]
    push_layout(small2, f"{br.prefix('docker-local')}/e2e/pushed:1")

    skopeo_copy(f"{br.prefix('docker-virtual')}/e2e/pushed:1", tmp_path / "local")
    assert dir_image(tmp_path / "local") == (small2.digest, small2.blobs), "the locally pushed image via the virtual"

    m0 = upstream.mark()
    skopeo_copy(small.ref(br.prefix("docker-virtual")), tmp_path / "remote")
    assert dir_image(tmp_path / "remote") == (small.digest, small.blobs), "the remote image via the virtual"
    st = upstream.stats(m0)
    assert st.blob_gets() == {d: [s] for d, s in small.blobs.items()}, st.listing()
    # cached by docker-remote: the same image straight from the member, no upstream traffic
    m1 = upstream.mark()
    skopeo_copy(small.ref(br.prefix("docker-remote")), tmp_path / "member")
    assert dir_image(tmp_path / "member") == (small.digest, small.blobs)
    assert upstream.stats(m1).count(kind_="blob") == 0, upstream.stats(m1).listing()

    r = request("HEAD", br.v2("docker-virtual", "e2e/pushed/manifests/1"), headers={"Accept": ACCEPT_HEADER})
    assert r.status == 200 and r.header("Docker-Content-Digest") == small2.digest, r.headers
    r = request("GET", br.v2("docker-virtual", "e2e/nothing-anywhere/manifests/1"), headers={"Accept": ACCEPT_HEADER})
    assert r.status == 404, f"a name no member has: {r!r}"
    errors_of(r)


def test_first_member_wins(virt, images, tmp_path):
    br, small, small2 = virt, images["small"], images["small2"]
    # docker-local gets its own library/small:1 (small2's content), the upstream has the real small:1
    push_layout(small2, f"{br.prefix('docker-local')}/library/small:1")
    assert sha256_bytes(skopeo_raw(f"{br.prefix('docker-virtual')}/library/small:1")) == small2.digest, \
        "members [docker-local, docker-remote]: docker-local's tag wins"
    br.create_virtual("docker-remote-first", ["docker-remote", "docker-local"])
    assert sha256_bytes(skopeo_raw(f"{br.prefix('docker-remote-first')}/library/small:1")) == small.digest, \
        "members [docker-remote, docker-local]: docker-remote's tag wins"
    # a name only the second member has is still found
    push_layout(small2, f"{br.prefix('docker-local')}/e2e/only-local:1")
    skopeo_copy(f"{br.prefix('docker-remote-first')}/e2e/only-local:1", tmp_path / "fallthrough")
    assert dir_image(tmp_path / "fallthrough") == (small2.digest, small2.blobs)


def test_push_through_the_virtual_lands_in_default_local(virt, images, tmp_path):
    br, small = virt, images["small"]
    push_layout(small, f"{br.prefix('docker-virtual')}/e2e/via-virtual:1")
    skopeo_copy(f"{br.prefix('docker-local')}/e2e/via-virtual:1", tmp_path / "member")
    assert dir_image(tmp_path / "member") == (small.digest, small.blobs), "pushed via the virtual, read from docker-local"
    skopeo_copy(f"{br.prefix('docker-virtual')}/e2e/via-virtual:1", tmp_path / "virtual")
    assert dir_image(tmp_path / "virtual") == (small.digest, small.blobs)
    r = request("GET", br.v2("docker-local", "e2e/via-virtual/tags/list"))
    assert r.status == 200 and r.json()["tags"] == ["1"], r


def test_a_virtual_without_default_local_refuses_pushes(virt, images):
    br = virt
    br.create_virtual("docker-readonly", ["docker-local", "docker-remote"])
    r = request("POST", br.v2("docker-readonly", "e2e/x/blobs/uploads/"), body=b"")
    assert r.status == 405 and "UNSUPPORTED" in errors_of(r), f"push through a virtual without default_local: {r!r}"
    r = request("PUT", br.v2("docker-readonly", "e2e/x/manifests/1"), body=images["small"].manifest,
                headers={"Content-Type": images["small"].media_type})
    assert r.status == 405 and "UNSUPPORTED" in errors_of(r), f"manifest PUT through it: {r!r}"
    assert br.upload_files() == []


def api_error(r, status):
    assert r.status == status, f"expected {status}, got {r!r}"
    err = r.json().get("error")
    assert isinstance(err, dict) and err.get("code") and err.get("message"), f"not an error object: {r!r}"
    return err


def test_virtual_definitions_are_validated(local_br):
    br = local_br
    br.create_remote("docker-remote", UNUSED)
    br.create_local("docker-local2")
    bad = [
        ("unknown member", {"members": ["docker-local", "no-such-repo"]}, ("no-such-repo", "member")),
        ("virtual member", None, ("virtual", "member")),
        ("default_local is a remote", {"members": ["docker-local", "docker-remote"], "default_local": "docker-remote"},
         ("default_local", "local")),
        ("default_local is not a member", {"members": ["docker-local", "docker-remote"],
                                           "default_local": "docker-local2"}, ("default_local", "member")),
        ("default_local does not exist", {"members": ["docker-local"], "default_local": "nope"}, ("default_local", "nope")),
    ]
    br.create_virtual("inner-virtual", ["docker-local"])
    before = br.repos()
    for what, extra, words in bad:
        body = {"name": "docker-virtual", "type": "virtual", "format": "docker"}
        body.update(extra if extra is not None else {"members": ["inner-virtual", "docker-remote"]})
        err = api_error(br.api("POST", "/api/repositories", json_body=body), 400)
        msg = (err["message"] + " " + err["code"]).lower()
        assert any(w in msg for w in words), f"{what}: the error does not name the problem: {err}"
        assert br.repos() == before, f"{what}: the repository list changed"
    api_error(br.api("GET", "/api/repositories/docker-virtual"), 404)

    v = br.create_virtual("docker-virtual", ["docker-local", "docker-remote"], default_local="docker-local")
    got = br.api("GET", "/api/repositories/docker-virtual").json()
    assert got["members"] == ["docker-local", "docker-remote"] and got.get("default_local") == "docker-local", got
    assert v == got
    # a member cannot be deleted while a virtual lists it
    for member in ("docker-local", "docker-remote"):
        err = api_error(br.api("DELETE", f"/api/repositories/{member}"), 409)
        assert "docker-virtual" in err["message"], f"the 409 does not name the virtual: {err}"
        assert br.api("GET", f"/api/repositories/{member}").status == 200
    # replacing the virtual with fewer members frees the one it no longer lists
    r = br.api("PUT", "/api/repositories/docker-virtual", json_body={"type": "virtual", "format": "docker",
                                                              "members": ["docker-local"],
                                                              "default_local": "docker-local"})
    assert r.status == 200, r
    assert br.api("DELETE", "/api/repositories/docker-remote").status == 204
    assert br.api("DELETE", "/api/repositories/docker-virtual").status == 204
    api_error(br.api("DELETE", "/api/repositories/docker-local"), 409)  # still in "inner"
    assert br.api("DELETE", "/api/repositories/inner-virtual").status == 204
    assert br.api("DELETE", "/api/repositories/docker-local").status == 204


def test_virtual_definition_persists(virt):
    br = virt
    before = br.api("GET", "/api/repositories/docker-virtual").json()
    br.restart()
    assert br.api("GET", "/api/repositories/docker-virtual").json() == before
    r = request("GET", br.v2("docker-virtual", "library/small/manifests/1"), headers={"Accept": ACCEPT_HEADER})
    assert r.status == 200, r
