"""Garbage collection: `POST /api/repositories/<name>/gc?grace_seconds=N` and the offline
`binaryrepo gc --data-dir DIR --grace-seconds N`. Blobs no manifest needs any more leave the data dir
(<data_dir>/blobs/sha256/xx/<hex>); everything still referenced (shared layers, untagged manifests, index
children, referrers, a remote repository's cache) stays and still pulls; a pull running meanwhile completes."""
import json
import subprocess
import threading
import time

from harness.clients import dir_image, skopeo_copy
from harness.images import skopeo
from harness.oci import Oci, build_image, rand_bytes, sha256, tar_gz_layer
from harness.util import request, stream_get, wait_until

LOCAL = "docker-local"


def two_images_sharing_a_layer():
    shared = tar_gz_layer(150000, "gc-shared")
    a = build_image("gc-a", layer_sizes=(60000,), shared_layers=[shared])
    b = build_image("gc-b", layer_sizes=(70000,), shared_layers=[shared])
    return a, b, sha256(shared[0])


def files_present(br, digests):
    return {d for d in digests if br.blob_path(d).is_file()}


def setup_ab(br):
    oci = Oci(br.url, LOCAL)
    a, b, shared = two_images_sharing_a_layer()
    oci.push_image("e2e/gc-a", a, tag="a")
    oci.push_image("e2e/gc-b", b, tag="b")
    a_all = set(a.blobs) | {a.digest}
    b_all = set(b.blobs) | {b.digest}
    assert files_present(br, a_all | b_all) == a_all | b_all, \
        f"pushed blobs are not at <data_dir>/blobs/sha256/xx/<hex>: {sorted(str(br.blob_path(d)) for d in a_all)}"
    return oci, a, b, shared, a_all - b_all, b_all


def assert_b_pulls(br, b, dest):
    skopeo_copy(f"{br.prefix(LOCAL)}/e2e/gc-b:b", dest)
    assert dir_image(dest) == (b.digest, {d: len(x) for d, x in b.blobs.items()})


def test_gc_removes_what_a_deleted_manifest_alone_used(local_br, tmp_path):
    br = local_br
    oci, a, b, shared, a_only, b_all = setup_ab(br)
    assert shared not in a_only and shared in b_all
    r = request("DELETE", oci.url("e2e/gc-a", f"manifests/{a.digest}"))
    assert r.status == 202, r

    garbage = files_present(br, a_only)  # the manifest's own blob may already be gone after the DELETE
    garbage_bytes = sum(br.blob_path(d).stat().st_size for d in garbage)
    res = br.gc(grace_seconds=0)
    assert set(res) >= {"removed", "removed_bytes", "kept"}, res
    assert files_present(br, a_only) == set(), f"still in the data dir after gc: {files_present(br, a_only)}"
    assert files_present(br, b_all) == b_all, f"gc removed blobs image b needs: {b_all - files_present(br, b_all)}"
    assert res["removed"] == len(garbage) and res["removed_bytes"] == garbage_bytes, \
        f"gc answered {res}; the garbage was {len(garbage)} blobs, {garbage_bytes} bytes"
    assert res["kept"] >= len(b_all), res

    assert_b_pulls(br, b, tmp_path / "b")
    assert oci.head_blob("e2e/gc-a", a.layers[-1]).status == 404, "a's own layer is still served"
    assert oci.get_blob("e2e/gc-b", shared).body == b.blobs[shared]
    again = br.gc(grace_seconds=0)
    assert again["removed"] == 0 and again["removed_bytes"] == 0, f"a second gc found more garbage: {again}"


def test_gc_keeps_untagged_manifests_index_children_and_referrers(local_br, images, tmp_path):
    br = local_br
    oci = Oci(br.url, LOCAL)
    multi = images["multi"]
    skopeo("copy", "--all", "--dest-tls-verify=false", f"oci:{multi.layout}:{multi.tag}",
           f"docker://{br.prefix(LOCAL)}/e2e/multi:1")
    untagged = build_image("gc-untagged")
    oci.push_image("e2e/untagged", untagged)  # by digest only
    subject = build_image("gc-subject")
    oci.push_image("e2e/refd", subject, tag="1")
    note = rand_bytes(200, "gc-note")
    oci.push_blob("e2e/refd", note)
    oci.push_blob("e2e/refd", b"{}")
    ref_body = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "artifactType": "application/vnd.example.e2e.note",
                           "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha256(b"{}"),
                                      "size": 2},
                           "layers": [{"mediaType": "text/plain", "digest": sha256(note), "size": len(note)}],
                           "subject": subject.descriptor()}).encode()
    assert oci.put_manifest("e2e/refd", sha256(ref_body), ref_body).status == 201

    res = br.gc(grace_seconds=0)
    assert res["removed"] == 0, f"gc removed blobs that are all still referenced: {res}"
    arm = multi.platforms["linux/arm64"]
    skopeo_copy(f"{br.prefix(LOCAL)}/e2e/multi@{arm['digest']}", tmp_path / "arm64")
    assert dir_image(tmp_path / "arm64") == (arm["digest"], arm["blobs"])
    assert oci.get_manifest("e2e/untagged", untagged.digest).body == untagged.manifest
    for d, data in untagged.blobs.items():
        assert oci.get_blob("e2e/untagged", d).body == data
    assert oci.get_manifest("e2e/refd", sha256(ref_body)).body == ref_body
    assert oci.get_blob("e2e/refd", sha256(note)).body == note
    r = request("GET", oci.url("e2e/refd", f"referrers/{subject.digest}"))
    assert [m["digest"] for m in r.json()["manifests"]] == [sha256(ref_body)], r


def test_gc_grace_period_protects_fresh_uploads(local_br):
    """a blob uploaded a moment ago and not referenced yet (a push in progress) survives a gc with the default
    grace period; grace_seconds=0 removes it"""
    br = local_br
    oci = Oci(br.url, LOCAL)
    data = rand_bytes(20000, "gc-fresh")
    d = oci.push_blob("e2e/fresh", data)
    res = br.gc(grace_seconds=None)
    assert br.blob_path(d).is_file() and oci.head_blob("e2e/fresh", d).status == 200, \
        f"gc with the default grace removed a blob uploaded just now: {res}"
    res = br.gc(grace_seconds=0)
    assert res["removed"] == 1 and res["removed_bytes"] == len(data), res
    assert not br.blob_path(d).exists() and oci.head_blob("e2e/fresh", d).status == 404


def test_gc_keeps_the_remote_cache(upstream, local_br, images, tmp_path):
    br, small = local_br, images["small"]
    br.create_remote("docker-remote", upstream.url)
    skopeo_copy(small.ref(br.prefix("docker-remote")), tmp_path / "cold")
    cached = set(small.blobs)
    # a fill's durable commit may follow the last byte the client got by a moment
    wait_until(lambda: files_present(br, cached) == cached, timeout=15,
               what="the remote's cached blobs at <data_dir>/blobs/sha256/xx/<hex>")
    oci, a, b, shared, a_only, b_all = setup_ab(br)
    assert request("DELETE", oci.url("e2e/gc-a", f"manifests/{a.digest}")).status == 202

    res = br.gc(grace_seconds=0)
    assert files_present(br, cached) == cached, f"gc removed cached remote blobs: {cached - files_present(br, cached)}"
    assert files_present(br, a_only) == set() and res["kept"] >= len(cached) + len(b_all), res
    m = upstream.mark()
    skopeo_copy(small.ref(br.prefix("docker-remote")), tmp_path / "warm")
    assert dir_image(tmp_path / "warm") == (small.digest, small.blobs)
    st = upstream.stats(m)
    assert st.count(kind_="blob") == 0 and st.count("GET", "manifest") == 0, \
        f"after gc the remote's cache was fetched again:\n{st.listing()}"


def test_offline_gc(local_br, tmp_path):
    br = local_br
    oci, a, b, shared, a_only, b_all = setup_ab(br)
    assert request("DELETE", oci.url("e2e/gc-a", f"manifests/{a.digest}")).status == 202
    # while the server runs, the offline command refuses (the metadata store is the server's) and removes nothing
    try:
        p = br.gc_offline(grace_seconds=0)
        refused = None
    except AssertionError as e:  # run() raises on a non-zero exit
        refused = str(e)
    assert refused, f"`binaryrepo gc` ran next to a running server: {p.stdout!r} {p.stderr!r}"
    assert files_present(br, a_only | b_all) == a_only | b_all, "the refused offline gc removed blobs"
    br.stop()
    p = br.gc_offline(grace_seconds=0)
    out = (p.stdout + p.stderr).decode(errors="replace")
    assert files_present(br, a_only) == set(), f"offline gc left {files_present(br, a_only)}; it said:\n{out}"
    assert files_present(br, b_all) == b_all, f"offline gc removed {b_all - files_present(br, b_all)}:\n{out}"
    br.start()
    assert_b_pulls(br, b, tmp_path / "b")


def test_pulls_running_during_gc_complete(local_br, images, tmp_path):
    """a skopeo pull of a 105 MiB image runs while gc runs; and a client streaming a blob that gc removes
    (its manifest was deleted) mid-transfer still gets every byte"""
    br, big = local_br, images["big"]
    skopeo("copy", "--dest-tls-verify=false", f"oci:{big.layout}:{big.tag}", f"docker://{br.prefix(LOCAL)}/e2e/big:1")
    oci = Oci(br.url, LOCAL)
    doomed = build_image("gc-doomed", layer_sizes=(24 << 20,))
    oci.push_image("e2e/doomed", doomed, tag="1")
    doomed_layer = doomed.layers[-1]
    assert request("DELETE", oci.url("e2e/doomed", f"manifests/{doomed.digest}")).status == 202

    pull = subprocess.Popen(["skopeo", "--insecure-policy", "copy", "--src-tls-verify=false",
                             f"docker://{br.prefix(LOCAL)}/e2e/big:1", f"dir:{tmp_path / 'big'}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    midway, gc_done, result = threading.Event(), threading.Event(), {}

    def slow_reader(n):
        if n >= (4 << 20) and not midway.is_set():
            midway.set()
            gc_done.wait(120)  # hold the connection open, mid-body, until gc has finished

    def stream():
        result["doomed"] = stream_get(oci.url("e2e/doomed", f"blobs/{doomed_layer}"), on_bytes=slow_reader,
                                      timeout=180)
    t = threading.Thread(target=stream)
    t.start()
    assert midway.wait(60), "the stream of the doomed layer did not start"
    t0 = time.monotonic()
    res = br.gc(grace_seconds=0)
    took = time.monotonic() - t0
    gc_done.set()
    t.join(180)
    out, err = pull.communicate(timeout=300)
    assert pull.returncode == 0, f"skopeo pull during gc failed: {err.decode(errors='replace')[-2000:]}"
    assert dir_image(tmp_path / "big") == (big.digest, big.blobs)
    got = result.get("doomed")
    assert got is not None and got.status == 200 and got.complete, f"stream during gc: {got}"
    assert got.digest == doomed_layer and got.nbytes == len(doomed.blobs[doomed_layer]), got
    assert not br.blob_path(doomed_layer).exists(), f"gc ({res}, {took:.1f}s) left the deleted image's layer"
    assert res["removed"] >= 1, res
