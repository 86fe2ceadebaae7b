"""binaryrepo on S3-compatible object storage ([storage] backend = "s3") against a real s3s-fs on 127.0.0.1:
a docker remote filling from a registry upstream and a local repository taking pushes keep every blob in the
bucket (each object hashes to its name, nothing under the data directory's blobs/), pulled back with skopeo
and ctr; with `blob_redirect`, blob GETs are answered with a 307 to a presigned URL that skopeo, podman,
ctr and a real Docker Engine follow, so binaryrepo itself sends under 1% of a large blob, and an anonymous caller
is refused before any redirect."""
import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness.clients import dir_image, skopeo_copy
from harness.images import skopeo
from harness.util import proc_status, request, stream_get, wait_until

LOCAL, REMOTE = "docker-local", "docker-remote"


def on_s3(make_binaryrepo, s3, **storage):
    # a fresh data directory compiles the plugins first: slow on a busy machine
    return make_binaryrepo(config={"storage": s3.storage_config(**storage)}, start=False).start(timeout=120)


def push_layout(image, dest_ref):
    skopeo("copy", "--dest-tls-verify=false", f"oci:{image.layout}:{image.tag}", f"docker://{dest_ref}", timeout=300)


def local_blob_files(br):
    d = br.data_dir / "blobs"
    return [f for f in d.rglob("*") if f.is_file()] if d.exists() else []


def test_remote_fill_and_push_store_every_blob_in_the_bucket(make_binaryrepo, upstream, images, s3, containerd, tmp_path):
    br = on_s3(make_binaryrepo, s3)
    br.create_remote(REMOTE, upstream.url)
    br.create_local(LOCAL)
    big, small = images["big"], images["small"]

    # a cold pull through the remote fills the bucket; a second one is served from it, not upstream
    m0 = upstream.mark()
    skopeo_copy(big.ref(br.prefix(REMOTE)), tmp_path / "cold")
    assert dir_image(tmp_path / "cold") == (big.digest, big.blobs)
    cold = upstream.stats(m0)
    assert cold.blob_gets() == {d: [size] for d, size in big.blobs.items()}, cold.listing()
    m1 = upstream.mark()
    skopeo_copy(big.ref(br.prefix(REMOTE)), tmp_path / "warm")
    assert dir_image(tmp_path / "warm") == (big.digest, big.blobs)
    assert upstream.stats(m1).count(kind_="blob") == 0, "the warm pull went upstream"

    # a push to the local repository, pulled back with skopeo and containerd
    ref = f"{br.prefix(LOCAL)}/e2e/small:1"
    push_layout(small, ref)
    skopeo_copy(ref, tmp_path / "back")
    assert dir_image(tmp_path / "back") == (small.digest, small.blobs)
    containerd.ctr("images", "pull", "--plain-http", ref)
    try:
        for d in small.blobs:
            assert containerd.ctr("content", "get", d).stdout == (tmp_path / "back" / d.split(":")[1]).read_bytes()
    finally:
        containerd.ctr("images", "rm", ref, check=False)

    stored = s3.blobs()  # every object hashes to its name
    for d, size in {**big.blobs, **small.blobs}.items():
        assert stored.get(d) == size, (d, size, stored.get(d))
    assert local_blob_files(br) == [], "blobs live in the bucket, not under the data directory"
    assert not list((br.data_dir / "staging").iterdir()), "nothing left staged"


def test_a_failed_fill_leaves_no_object(make_binaryrepo, images, s3, tmp_path):
    """The upstream sends other bytes than the digest names: nothing reaches the bucket."""
    from harness.fakeregistry import FakeRegistry
    big = images["big"]
    layer, size = big.largest_layer()
    fake = FakeRegistry()
    fake.add_layout(big.layout, big.repo)
    fake.corrupt.add(layer)
    fake.start()
    try:
        br = on_s3(make_binaryrepo, s3)
        br.create_remote(REMOTE, fake.url)
        request("GET", br.v2(REMOTE, f"{big.repo}/blobs/{layer}"), timeout=120)
        wait_until(lambda: "fill failed" in br.logfile.read_text(), timeout=60, what="the fill to fail")
        assert fake.count("GET", f"/blobs/{layer}") >= 1
        assert layer not in s3.blobs()
        assert not any(layer.split(":")[1] in k for k in s3.objects()), s3.objects()
        wait_until(lambda: not s3.pending_uploads(), timeout=30, what="the multipart upload made while streaming to be aborted")
    finally:
        fake.stop()


def test_a_fill_cut_mid_body_leaves_no_object_and_no_upload(make_binaryrepo, images, s3, tmp_path):
    """The upstream hangs up 40 MiB into a 100 MiB layer, after several parts went up while the fill
    streamed: the multipart upload is aborted, nothing is under the layer's key; the next GET fills it
    whole, and then it is in the bucket hashing to its name."""
    from harness.fakeregistry import FakeRegistry
    big = images["big"]
    layer, size = big.largest_layer()
    fake = FakeRegistry()
    fake.add_layout(big.layout, big.repo)
    fake.cut[layer] = 40 * 1024 * 1024
    fake.start()
    try:
        br = on_s3(make_binaryrepo, s3)
        br.create_remote(REMOTE, fake.url)
        got = stream_get(br.v2(REMOTE, f"{big.repo}/blobs/{layer}"), timeout=120)
        assert not (got.complete and got.digest == layer), "a cut body is never completed to the client"
        wait_until(lambda: "fill failed" in br.logfile.read_text(), timeout=60, what="the fill to fail")
        assert layer not in s3.blobs()
        assert not any(layer.split(":")[1] in k for k in s3.objects()), s3.objects()
        wait_until(lambda: not s3.pending_uploads(), timeout=30, what="the multipart upload to be aborted")
        del fake.cut[layer]
        got = stream_get(br.v2(REMOTE, f"{big.repo}/blobs/{layer}"), timeout=300)
        assert got.status == 200 and got.complete and got.digest == layer, got
        wait_until(lambda: layer in s3.blobs(), timeout=60, what="the second fill to be stored")
        assert s3.blobs()[layer] == size
        assert not s3.pending_uploads()
    finally:
        fake.stop()


def test_blob_redirect_sends_clients_to_the_object_store(make_binaryrepo, images, s3, podman, containerd, dockerd, tmp_path):
    big = images["big"]
    layer, size = big.largest_layer()
    br = on_s3(make_binaryrepo, s3, presigned_redirect_seconds=120)
    br.create_local(LOCAL, blob_redirect=True)
    br.create(name="private", type="local", format="docker", blob_redirect=True,
              access=[{"who": "user:admin", "allow": ["read", "write"]}])
    ref = f"{br.prefix(LOCAL)}/e2e/big:1"
    push_layout(big, ref)

    r = request("GET", br.v2(LOCAL, f"e2e/big/blobs/{layer}"))
    assert r.status == 307, r
    location = r.header("Location")
    assert location.startswith(s3.endpoint + "/") and "X-Amz-Signature=" in location and "X-Amz-Expires=120" in location, location
    assert r.header("Docker-Content-Digest") == layer

    before = br.metrics()
    skopeo_copy(ref, tmp_path / "skopeo")
    assert dir_image(tmp_path / "skopeo") == (big.digest, big.blobs)
    podman("pull", "-q", "--tls-verify=false", ref)
    assert podman("image", "inspect", "--format", "{{.Digest}}", ref).stdout.decode().strip() == big.digest
    containerd.ctr("images", "pull", "--plain-http", ref)
    containerd.ctr("images", "rm", ref, check=False)
    dockerd.remove_all_images()
    before_docker = br.metrics()
    try:
        dockerd.docker("pull", "-q", ref)
        assert dockerd.image_id(ref) == big.config
    finally:
        dockerd.remove_all_images()
    after = br.metrics()
    by_docker = (after.value("binaryrepo_blob_redirects_total", repository=LOCAL)
                 - before_docker.value("binaryrepo_blob_redirects_total", repository=LOCAL))
    assert by_docker >= len(big.blobs), f"the Docker Engine was redirected {by_docker} times for {len(big.blobs)} blobs"
    redirects = after.value("binaryrepo_blob_redirects_total", repository=LOCAL) - before.value("binaryrepo_blob_redirects_total", repository=LOCAL)
    served = (after.value("binaryrepo_store_served_blob_bytes_total", repository=LOCAL)
              - before.value("binaryrepo_store_served_blob_bytes_total", repository=LOCAL))
    assert redirects >= 3 + by_docker, redirects
    assert served < 0.01 * size, f"binaryrepo itself sent {served} bytes of blobs (layer {size})"

    # permissions are checked before any redirect: an anonymous caller gets no URL (the repository is
    # hidden from callers who may not read it)
    denied = request("GET", br.v2("private", f"e2e/big/blobs/{layer}"))
    assert denied.status in (401, 404) and denied.header("Location") is None, denied


# The figure for a node while it streams (O3 in the bench).
RSS_LIMIT_MIB = 64


def test_concurrent_cold_fills_keep_a_node_under_64_mib(make_binaryrepo, s3, tmp_path):
    """Eight clients each pull a different 48 MiB layer, cold, at once: eight fills stream to their clients
    and go up to the bucket as multipart uploads together. Upload parts come out of one budget per node, read
    back from the staging files, and received bytes waiting for their staging writers are bounded per node,
    so the node's RSS stays under 64 MiB however many fills run (with parts held per fill and a queue bounded
    in chunks it peaked at 71-76 MiB here); every layer ends up in the bucket hashing to its name, fetched
    from upstream once. (Before fills looked the store up outside the fill map's lock, eight concurrent cold
    fills on S3 hung the node: its runtime threads all blocked on that lock while the holder waited for an
    S3 HEAD.)"""
    from harness.fakeregistry import FakeRegistry
    n, size = 8, 48 << 20
    fake = FakeRegistry()
    layers = {}
    for i in range(n):
        f = tmp_path / f"layer-{i}"
        data = os.urandom(size)
        f.write_bytes(data)
        d = "sha256:" + hashlib.sha256(data).hexdigest()
        fake.blobs[d] = f
        layers[d] = size
    del data
    fake.start()
    try:
        # A node of its own compiled-plugin cache, restarted once it is filled: its RSS is then a node's
        # that loaded its plugins, not one that just compiled them (or shares the cache with other runs).
        br = make_binaryrepo(config={"storage": s3.storage_config(), "compiled_plugin_dir": str(tmp_path / "compiled")},
                             start=False).start(timeout=180)
        br.create_remote(REMOTE, fake.url)
        br.restart()
        before = proc_status(br.pid)
        peak, stop = dict(before), threading.Event()

        def watch():
            while not stop.wait(0.02):
                try:
                    now = proc_status(br.pid)
                except OSError:
                    return
                if now["VmRSS"] > peak["VmRSS"]:
                    peak.update(now)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        with ThreadPoolExecutor(n) as pool:
            got = list(pool.map(lambda d: (d, stream_get(br.v2(REMOTE, f"library/layers/blobs/{d}"), timeout=300)), layers))
        # the uploads finish behind the clients: the node is watched until every layer is in the bucket
        wait_until(lambda: set(layers) <= set(s3.blobs()), timeout=300, what="every layer to be in the bucket")
        stop.set()
        watcher.join()
        for d, r in got:
            assert r.status == 200 and r.complete and r.digest == d and r.nbytes == size, (d, r)
        assert {d: s3.blobs()[d] for d in layers} == layers
        assert not s3.pending_uploads()
        assert fake.count("GET", "/blobs/") == n, "each layer fetched from upstream once"
        mib = {k: v // 1024 for k, v in peak.items()}
        print(f"{n} concurrent cold fills of {size >> 20} MiB on S3: RSS before {before['VmRSS'] // 1024} MiB, "
              f"peak {mib['VmRSS']} MiB (anon {mib['RssAnon']}, file {mib['RssFile']}), VmHWM {proc_status(br.pid)['VmHWM'] // 1024} MiB")
        assert peak["VmRSS"] < RSS_LIMIT_MIB << 10, f"RSS peaked at {mib}"
    finally:
        fake.stop()
