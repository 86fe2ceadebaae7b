"""Cache fills are robust: a client going away does not abort a fill, a killed server leaves no partial blob
behind, and bytes that do not match their digest are never stored, nor (with upstream_hold_last_byte) completed."""
import json
import subprocess
import threading
import time

import pytest

from harness.binaryrepo import blob_files
from harness.clients import dir_image, skopeo_copy
from harness.fakeregistry import FakeRegistry
from harness.images import ACCEPT_HEADER
from harness.util import request, sha256_file, stream_get, wait_until


def check_store(data_dir):
    """every blob file in the data dir hashes to its name; returns the digests stored"""
    stored = set()
    for path, digest in blob_files(data_dir):
        got = sha256_file(path)
        assert got == digest, f"{path} is named {digest} but hashes to {got}"
        stored.add(digest)
    return stored


def test_client_disconnect_does_not_abort_fill(upstream, br, images):
    big = images["big"]
    layer, size = big.largest_layer()  # 100 MiB
    br.create_remote("docker-remote", upstream.url)
    url = br.v2("docker-remote", f"{big.repo}/blobs/{layer}")
    m0, log0 = upstream.mark(), br.log_mark()
    got = stream_get(url, stop_after=256 * 1024)  # read 256 KiB of 100 MiB, then hang up
    assert got.status == 200 and got.nbytes == 256 * 1024, got

    # the upstream transfer runs to its end although nobody is listening any more
    wait_until(lambda: upstream.stats(m0).blob_gets(status=None).get(layer), timeout=60,
               what="the upstream GET of the blob to finish")
    assert upstream.stats(m0).blob_gets(status=None) == {layer: [size]}, upstream.stats(m0).listing()
    upstream.stop()

    def served():
        r = stream_get(url)
        return r if r.status == 200 and r.complete else None
    got = wait_until(served, timeout=20, interval=0.5, what="the blob to be served with the upstream stopped")
    assert got.digest == layer and got.nbytes == size, got
    # streamed: the client may have its bytes before the fill has verified and committed them
    assert br.wait_fill(layer, since=log0) == "committed"
    assert layer in check_store(br.data_dir)


def test_a_stop_right_after_a_cold_pull_keeps_the_blob(upstream, br, images):
    """A streamed fill is verified after its transfer, so its client is done before the blob is stored: a
    graceful stop (SIGTERM) waits for the fill instead of dropping it, and the restarted server has the blob."""
    big = images["big"]
    layer, size = big.largest_layer()  # 100 MiB: hashing it outlasts the stop signal
    br.create_remote("docker-remote", upstream.url)
    url = br.v2("docker-remote", f"{big.repo}/blobs/{layer}")
    got = stream_get(url)
    assert got.status == 200 and got.complete and got.digest == layer, got
    br.stop()
    assert layer in check_store(br.data_dir), "the fill was dropped at the stop"
    m0 = upstream.mark()
    br.start()
    got = stream_get(url)
    assert got.status == 200 and got.digest == layer and got.nbytes == size, got
    assert upstream.stats(m0).blob_gets(status=None) == {}, upstream.stats(m0).listing()


def test_sigkill_mid_fill_leaves_no_partial_blob(make_binaryrepo, images, tmp_path):
    big = images["big"]
    layer, size = big.largest_layer()
    fake = FakeRegistry()
    fake.add_layout(big.layout, big.repo)
    fake.pause[layer] = 30 << 20  # send 30 MiB of the 100 MiB layer, then stall
    fake.start()
    try:
        br = make_binaryrepo(config={"upstream_down_seconds": 1})
        br.create_remote("docker-remote", fake.url)
        url = br.v2("docker-remote", f"{big.repo}/blobs/{layer}")
        client = threading.Thread(target=stream_get, args=(url,), daemon=True)
        client.start()
        assert fake.paused.wait(30), "binaryrepo never fetched the blob"
        time.sleep(1.0)  # let the 30 MiB reach binaryrepo's staging file
        br.kill()
        fake.stop()  # also releases the stalled transfer
        client.join(30)
        assert layer not in check_store(br.data_dir), "a partial blob was stored under its digest"

        br.start()  # same data dir
        assert layer not in check_store(br.data_dir)
        # upstream still down: the blob cannot be complete, so binaryrepo must not answer 200
        got = stream_get(url)
        assert got.status != 200, f"a blob that was never completely fetched is served: {got}"

        fake.pause.clear()
        fake.start()
        time.sleep(1.5)  # past upstream_down_seconds
        log0 = br.log_mark()
        skopeo_copy(big.ref(br.prefix("docker-remote")), tmp_path / "after")
        assert dir_image(tmp_path / "after") == (big.digest, big.blobs)
        assert br.wait_fill(layer, since=log0) == "committed"
        assert layer in check_store(br.data_dir)
    finally:
        fake.stop()


def test_upstream_that_hangs_up_mid_blob_leaves_nothing_stored(make_binaryrepo, images):
    """The staging file is reserved at the announced length before the first byte: a body cut
    short must still fail the fill (no zero-filled tail is served or stored), and the next GET
    fetches again."""
    big = images["big"]
    layer, size = big.largest_layer()
    fake = FakeRegistry()
    fake.add_layout(big.layout, big.repo)
    fake.cut[layer] = 30 << 20
    fake.start()
    try:
        br = make_binaryrepo()
        br.create_remote("docker-remote", fake.url)
        url = br.v2("docker-remote", f"{big.repo}/blobs/{layer}")
        log0 = br.log_mark()
        got = stream_get(url)
        assert not (got.status == 200 and got.complete), f"a body cut short was delivered as complete: {got}"
        assert got.nbytes <= 30 << 20, f"more bytes than the upstream sent: {got.nbytes}"
        assert br.wait_fill(layer, since=log0) == "failed"
        assert layer not in check_store(br.data_dir), "a short blob was stored"
        wait_until(lambda: not any((br.data_dir / "staging").iterdir()), timeout=10, interval=0.05,
                   what="the staging file of the failed fill to go")

        del fake.cut[layer]
        log0 = br.log_mark()
        got = stream_get(url)
        assert got.status == 200 and got.complete and got.digest == layer and got.nbytes == size, got
        assert br.wait_fill(layer, since=log0) == "committed"
        assert fake.count("GET", f"/blobs/{layer}") == 2
        assert layer in check_store(br.data_dir)
    finally:
        fake.stop()


def test_a_blob_larger_than_the_free_disk_fails_at_once_with_an_oci_error(make_binaryrepo, upstream, images, tmp_path):
    """The staging file is reserved at the blob's announced length: a disk without room for it
    answers the client straight away, 503 in the OCI shape and saying why, instead of after the download."""
    big = images["big"]
    layer, size = big.largest_layer()  # 100 MiB
    mnt = tmp_path / "full"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        br = make_binaryrepo(name="full/br")
        br.create_remote("docker-remote", upstream.url)
        m0 = upstream.mark()
        log0 = br.log_mark()
        got = stream_get(br.v2("docker-remote", f"{big.repo}/blobs/{layer}"))
        assert got.status == 503 and got.nbytes < 1024, got
        error = json.loads(got.body_head)["errors"][0]
        assert "no room" in error["message"] and str(size) in error["message"], error
        assert br.wait_fill(layer, since=log0) == "failed"
        assert layer not in check_store(br.data_dir)
        # asked once, and its body was not read to the end
        sent = upstream.stats(m0).blob_gets(status=None).get(layer, [])
        assert len(sent) == 1 and sent[0] < size, upstream.stats(m0).listing()
        # a blob that fits still comes through
        small = images["small"]
        slayer, ssize = small.largest_layer()
        got = stream_get(br.v2("docker-remote", f"{small.repo}/blobs/{slayer}"))
        assert got.status == 200 and got.complete and got.digest == slayer and got.nbytes == ssize, got
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.mark.parametrize("hold", [False, True], ids=["streamed", "held"])
def test_wrong_bytes_from_upstream_are_not_stored(make_binaryrepo, images, hold):
    """Streamed (the default): the client may get every byte, but they do not hash to the digest it
    asked for, so it refuses them, as from nginx; held: the last byte waits for verification, so a
    wrong blob is never completed. Either way nothing wrong is stored and the next GET refetches."""
    small = images["small"]
    layer, size = small.largest_layer()  # 2 MiB
    fake = FakeRegistry()
    fake.add_layout(small.layout, small.repo)
    fake.corrupt.add(layer)
    fake.corrupt.add(small.digest)  # the manifest, when asked by digest
    fake.start()
    try:
        br = make_binaryrepo(config={"upstream_hold_last_byte": hold})
        br.create_remote("docker-remote", fake.url)
        url = br.v2("docker-remote", f"{small.repo}/blobs/{layer}")
        for attempt in (1, 2):
            log0 = br.log_mark()
            got = stream_get(url)
            # streamed: the body may be complete before the fill has found the mismatch
            assert br.wait_fill(layer, since=log0) == "failed"
            if hold:
                assert not (got.status == 200 and got.complete), \
                    f"attempt {attempt}: a blob whose bytes fail the digest was delivered as a complete 200: {got}"
            else:
                assert got.digest != layer, f"attempt {attempt}: the corrupted bytes hash to the digest? {got}"
            assert layer not in check_store(br.data_dir), f"attempt {attempt}: mismatching bytes were stored"
            assert fake.count("GET", f"/blobs/{layer}") == attempt, \
                f"attempt {attempt}: upstream GETs {fake.count('GET', f'/blobs/{layer}')} (a failure must not be cached)"
        m = br.metrics()  # the failed fills are counted before their log line
        assert m.value("binaryrepo_upstream_fills_total", repository="docker-remote", outcome="failed") == 2, m.text
        assert m.value("binaryrepo_upstream_fills_total", outcome="stored") == 0

        murl = br.v2("docker-remote", f"{small.repo}/manifests/{small.digest}")
        r = request("GET", murl, headers={"Accept": ACCEPT_HEADER})
        assert r.status != 200, f"a manifest whose bytes fail its digest was served: {r!r}"
        assert r.status < 500 or "errors" in r.json(), r

        # once the upstream behaves, the same blob and manifest come through (no poisoned cache entry)
        fake.corrupt.clear()
        log0 = br.log_mark()
        got = stream_get(url)
        assert got.status == 200 and got.complete and got.digest == layer, got
        r = request("GET", murl, headers={"Accept": ACCEPT_HEADER})
        assert r.status == 200 and r.body == small.manifest, r
        assert br.wait_fill(layer, since=log0) == "committed"
        assert layer in check_store(br.data_dir)
    finally:
        fake.stop()
