"""What binaryrepo acknowledged survives `kill -9`: the server is killed with SIGKILL at chosen points of a cold
fill (upstream paused mid-body), a chunked push (between PATCHes and in the middle of one), right after a
manifest PUT and right after a repository create were acknowledged; then it is restarted on the same data
directory, and every stored blob hashes to its name, every acknowledged tag resolves to the bytes pushed,
acknowledged repositories exist, an interrupted chunked push resumes from the offset the server reports, and
the next pull and push succeed. (Power loss cannot be tested here: the order of fsyncs is in
host/src/storage/durable.rs.)"""
import http.client
import threading
import time
import urllib.parse

import pytest

from harness.binaryrepo import blob_files
from harness.fakeregistry import FakeRegistry
from harness.oci import Oci, build_image, rand_bytes, sha256
from harness.util import request, sha256_file, stream_get

LOCAL = "docker-local"


def check_store(br) -> set:
    """every blob file in the data dir hashes to its name; returns the digests stored"""
    stored = set()
    for path, digest in blob_files(br.data_dir):
        got = sha256_file(path)
        assert got == digest, f"{path} is named {digest} but hashes to {got}"
        stored.add(digest)
    return stored


def restart_after_kill(br):
    br.kill()
    br.start()
    r = request("GET", br.url + "/api/ready")
    assert r.status == 200, f"not ready after a restart: {r!r}"
    return check_store(br)


def patch(oci, loc, data, start):
    return oci.req("PATCH", loc, body=data, headers={"Content-Type": "application/octet-stream",
                                                      "Content-Range": f"{start}-{start + len(data) - 1}"})


@pytest.fixture
def local(make_binaryrepo):
    br = make_binaryrepo()
    br.create_local(LOCAL)
    return br, Oci(br.url, LOCAL)


def test_kill_mid_cold_fill(make_binaryrepo, images):
    big = images["big"]
    layer, size = big.largest_layer()
    fake = FakeRegistry()
    fake.add_layout(big.layout, big.repo)
    fake.pause[layer] = 20 << 20
    fake.start()
    try:
        br = make_binaryrepo(config={"upstream_down_seconds": 1})
        br.create_remote("docker-remote", fake.url)
        url = br.v2("docker-remote", f"{big.repo}/blobs/{layer}")
        client = threading.Thread(target=stream_get, args=(url,), daemon=True)
        client.start()
        assert fake.paused.wait(30), "binaryrepo never fetched the blob"
        time.sleep(0.5)
        stored = restart_after_kill(br)
        assert layer not in stored, "a partial fill is stored under its digest"
        assert not list((br.data_dir / "staging").iterdir()), "staged files of the killed fill are left"
        fake.pause.clear()
        fake.release()
        client.join(30)
        log0 = br.log_mark()
        got = stream_get(url)
        assert got.status == 200 and got.digest == layer and got.nbytes == size, got
        assert br.wait_fill(layer, since=log0) == "committed"
        assert layer in check_store(br)
    finally:
        fake.stop()


def test_kill_between_patches_then_resume(local):
    br, oci = local
    data = rand_bytes(5 << 20, "between-patches")
    loc = oci.upload_url("e2e/chunked")
    r = patch(oci, loc, data[: 2 << 20], 0)
    assert r.status == 202, r
    loc = oci.abs(r.header("Location"))
    restart_after_kill(br)
    r = oci.req("GET", loc)
    assert r.status == 204 and r.header("Range") == f"0-{(2 << 20) - 1}", f"the session survived: {r!r}"
    r = oci.req("HEAD", loc)
    assert r.status == 204 and r.header("Range") == f"0-{(2 << 20) - 1}", r
    r = patch(oci, loc, data[2 << 20:], 2 << 20)
    assert r.status == 202, r
    r = oci.req("PUT", oci.with_query(oci.abs(r.header("Location")), digest=sha256(data)))
    assert r.status == 201, r
    got = oci.get_blob("e2e/chunked", sha256(data))
    assert got.status == 200 and got.body == data
    assert sha256(data) in check_store(br)


def test_kill_during_a_patch_then_resume(local):
    br, oci = local
    data = rand_bytes(6 << 20, "during-patch")
    first = 1 << 20
    loc = oci.upload_url("e2e/mid")
    r = patch(oci, loc, data[:first], 0)
    assert r.status == 202, r
    loc = oci.abs(r.header("Location"))
    # a second chunk whose body stops half-way: the server is killed while it waits for the rest
    u = urllib.parse.urlsplit(loc)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    conn.putrequest("PATCH", u.path + (f"?{u.query}" if u.query else ""))
    conn.putheader("Content-Type", "application/octet-stream")
    conn.putheader("Content-Range", f"{first}-{len(data) - 1}")
    conn.putheader("Content-Length", str(len(data) - first))
    conn.endheaders()
    conn.send(data[first:first + (3 << 20)])
    time.sleep(1.0)  # the server has appended what arrived
    restart_after_kill(br)
    conn.close()
    r = oci.req("GET", loc)
    assert r.status == 204, r
    end = int(r.header("Range").split("-")[1]) + 1
    # only acknowledged bytes count: the unacknowledged part of the cut chunk is not the session's
    assert end == first, f"the session reports {end} bytes, {first} were acknowledged: {r!r}"
    r = patch(oci, loc, data[end:], end)
    assert r.status == 202, r
    r = oci.req("PUT", oci.with_query(oci.abs(r.header("Location")), digest=sha256(data)))
    assert r.status == 201, f"the resumed push commits: {r!r}"
    got = oci.get_blob("e2e/mid", sha256(data))
    assert got.status == 200 and got.body == data
    check_store(br)


def test_kill_right_after_a_manifest_put(local):
    br, oci = local
    built = build_image("crash-manifest", layer_sizes=(300 << 10, 4096))
    oci.push_image("e2e/tagged", built, tag="v1")
    stored = restart_after_kill(br)
    assert set(built.blobs) <= stored and built.digest in stored
    for ref in ("v1", built.digest):
        got = oci.get_manifest("e2e/tagged", ref)
        assert got.status == 200 and got.body == built.manifest, (ref, got)
    assert oci.tags("e2e/tagged").json()["tags"] == ["v1"]
    for d, b in built.blobs.items():
        got = oci.get_blob("e2e/tagged", d)
        assert got.status == 200 and got.body == b
    # the next push works
    nxt = build_image("crash-manifest-next", layer_sizes=(2048,))
    oci.push_image("e2e/tagged", nxt, tag="v2")
    assert oci.get_manifest("e2e/tagged", "v2").body == nxt.manifest


def test_kill_right_after_a_repository_create(make_binaryrepo):
    br = make_binaryrepo()
    br.create_local("crash-local")
    restart_after_kill(br)
    assert "crash-local" in [r["name"] for r in br.repos()], "the acknowledged repository survived"
    oci = Oci(br.url, "crash-local")
    built = build_image("crash-repo", layer_sizes=(1024,))
    oci.push_image("e2e/x", built, tag="1")
    assert oci.get_manifest("e2e/x", "1").body == built.manifest
    # and a change (delete) acknowledged just before a kill holds too
    r = br.api("DELETE", "/api/repositories/crash-local")
    assert r.status in (200, 204), r
    restart_after_kill(br)
    assert "crash-local" not in [r["name"] for r in br.repos()]
