"""Blobs of 1 MiB and more leave binaryrepo with sendfile from their file (host server/zero_copy.rs):
however a client reads one — while it is still arriving from upstream, warm, in ranges, several requests
on one kept-alive connection, over HTTP/2 — it gets exactly the blob's bytes."""
import http.client
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from harness.fakeregistry import FakeRegistry
from harness.images import ACCEPT_HEADER
from harness.util import request, run, stream_get

MIB = 1 << 20
FRAME = 4 * MIB  # body frame of a mapped blob (host server/body.rs MAPPED_CHUNK)


def test_blobs_sent_from_their_file_are_byte_exact_however_they_are_read(make_binaryrepo, images, tmp_path):
    big = images["big"]
    layer, size = big.largest_layer()
    data = (Path(big.layout) / "blobs" / "sha256" / layer.split(":")[1]).read_bytes()
    assert size > 3 * FRAME
    fake = FakeRegistry()
    fake.add_layout(big.layout, big.repo)
    # not on a page or frame boundary: readers wait there for bytes still to come
    paused_at = FRAME + 5 * 4096 + 123
    fake.pause[layer] = paused_at
    fake.start()
    try:
        br = make_binaryrepo()
        br.create_remote("docker-remote", fake.url)
        url = br.v2("docker-remote", f"{big.repo}/blobs/{layer}")
        span = (paused_at - 1000, paused_at + 2 * FRAME + 17)

        # while the fill runs: three whole GETs and a range across the point the upstream paused at
        with ThreadPoolExecutor(4) as ex:
            wholes = [ex.submit(stream_get, url) for _ in range(3)]
            assert fake.paused.wait(30), "the upstream never reached its pause"
            ranged = ex.submit(request, "GET", url, headers={"Range": f"bytes={span[0]}-{span[1] - 1}"})
            time.sleep(0.5)  # every reader has had the bytes so far and waits for more
            fake.release()
            for f in wholes:
                got = f.result()
                assert got.status == 200 and got.complete and got.nbytes == size and got.digest == layer, got
            r = ranged.result()
            assert r.status == 206 and r.body == data[span[0]:span[1]], (r.status, len(r.body))
        assert fake.count("GET", f"/blobs/{layer}") == 1

        # warm, from the stored file: whole, and ranges at the edges and across a frame boundary
        got = stream_get(url)
        assert got.status == 200 and got.nbytes == size and got.digest == layer, got
        for start, end in [(0, 1), (size - 1, size), (FRAME - 10, FRAME + 10), (3 * MIB, 5 * MIB + 1),
                           (size - FRAME - 3, size)]:
            r = request("GET", url, headers={"Range": f"bytes={start}-{end - 1}"})
            assert r.status == 206 and r.body == data[start:end], (start, end, r.status, len(r.body))
            assert r.header("Content-Range") == f"bytes {start}-{end - 1}/{size}", r.headers

        # one kept-alive connection: a blob sent from its file, then a range, then a manifest
        u = urllib.parse.urlsplit(url)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        try:
            conn.request("GET", u.path)
            r = conn.getresponse()
            assert r.status == 200 and r.read() == data
            conn.request("GET", u.path, headers={"Range": f"bytes={MIB}-{3 * MIB - 1}"})
            r = conn.getresponse()
            assert r.status == 206 and r.read() == data[MIB:3 * MIB]
            conn.request("GET", u.path.replace(f"/blobs/{layer}", f"/manifests/{big.tag}"),
                         headers={"Accept": ACCEPT_HEADER})
            r = conn.getresponse()
            assert r.status == 200 and r.read() == big.manifest
        finally:
            conn.close()

        # HTTP/2 without TLS (prior knowledge): the same bytes in DATA frames
        out = tmp_path / "h2.bin"
        p = run(["curl", "-sS", "--http2-prior-knowledge", "-o", str(out), "-w", "%{http_version} %{http_code}", url])
        assert p.stdout == b"2 200", p.stdout
        assert out.read_bytes() == data
        assert fake.count("GET", f"/blobs/{layer}") == 1
    finally:
        fake.stop()
