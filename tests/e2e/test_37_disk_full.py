"""A full disk: the data directory on a small tmpfs is filled by pushing. Writes are then refused with 503 in
the OCI error shape (never a 500), /api/ready answers 503 with the reason, reads keep working, and nothing
half-written is left behind. Once the test frees space (it removes a filler file it placed on the volume),
the server comes back by itself: /api/ready 200 and pushes work again, without a restart."""
import os
import subprocess
import time

import pytest

from harness.binaryrepo import blob_files
from harness.oci import Oci, build_image, errors_of, rand_bytes, sha256
from harness.util import request, sha256_file, wait_until

LOCAL = "docker-local"
SIZE = "64m"


@pytest.fixture
def small_volume(make_binaryrepo):
    """a binaryrepo whose data directory is a 64 MiB tmpfs (skipped where mounting is not permitted)"""
    br = make_binaryrepo(start=False)
    br.data_dir.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", str(br.data_dir)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        br.start()
        br.create_local(LOCAL)
        yield br
    finally:
        br.stop()
        subprocess.run(["umount", "-l", str(br.data_dir)], capture_output=True)


def free_bytes(path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def ready(br):
    return request("GET", br.url + "/api/ready")


def test_full_disk_refuses_writes_with_503_and_recovers_when_space_is_freed(small_volume):
    br = small_volume
    oci = Oci(br.url, LOCAL)
    assert ready(br).status == 200

    # content pushed before the disk fills stays readable throughout
    before = build_image("before-full", layer_sizes=(64 << 10,))
    oci.push_image("e2e/before", before, tag="1")

    # leave about 3 MiB free with a filler file of the test's own, then push what does not fit
    filler = br.data_dir / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free_bytes(br.data_dir) - (3 << 20)))
        f.flush()
        os.fsync(f.fileno())
    big = rand_bytes(8 << 20, "too-big")
    loc = oci.upload_url("e2e/full")
    r = oci.req("PUT", oci.with_query(loc, digest=sha256(big)), body=big,
                headers={"Content-Type": "application/octet-stream"})
    assert r.status == 503, f"a push that hits a full disk: expected 503, got {r!r}\n{br.log_tail(15)}"
    errors_of(r)  # in the OCI error shape
    assert str(br.data_dir) not in r.text(), f"the answer names a server path: {r!r}"
    assert sha256(big) not in {d for _, d in blob_files(br.data_dir)}, "nothing of the failed push is stored"

    # the server reports not-ready with the reason, and refuses further writes the same way
    r = ready(br)
    assert r.status == 503, r
    reasons = " ".join(r.json()["reasons"])
    assert "out of space" in reasons, r
    assert str(br.data_dir) not in reasons, r
    r = oci.start_upload("e2e/full")
    assert r.status == 503 and errors_of(r), f"a new upload while the disk is full: {r!r}"
    small = build_image("during-full", layer_sizes=(1024,))
    r = oci.put_manifest("e2e/full", "1", small.manifest)
    assert r.status == 503 and errors_of(r), f"a manifest PUT while the disk is full: {r!r}"
    # reads go on
    got = oci.get_manifest("e2e/before", "1")
    assert got.status == 200 and got.body == before.manifest, got
    for d, b in before.blobs.items():
        got = oci.get_blob("e2e/before", d)
        assert got.status == 200 and got.body == b, (d, got)

    # still full a few recovery rounds later: still not ready
    time.sleep(5)
    assert ready(br).status == 503

    # free space: the server comes back by itself
    pid = br.pid
    filler.unlink()
    wait_until(lambda: ready(br).status == 200, timeout=20, what="/api/ready to answer 200 after space was freed")
    assert br.pid == pid and br.running(), "no restart"
    oci.push_blob("e2e/full", big)
    after = build_image("after-full", layer_sizes=(4096,))
    oci.push_image("e2e/after", after, tag="1")
    got = oci.get_manifest("e2e/after", "1")
    assert got.status == 200 and got.body == after.manifest, got
    got = oci.get_blob("e2e/full", sha256(big))
    assert got.status == 200 and sha256(got.body) == sha256(big), got
    for path, digest in blob_files(br.data_dir):
        assert sha256_file(path) == digest, f"{path} does not hash to its name"
    # nothing staged or half-written is left over
    assert not [p for p in (br.data_dir / "staging").iterdir()], "staging files left behind"


def test_full_disk_during_a_chunked_push_keeps_the_acknowledged_chunks(small_volume):
    """A PATCH that hits the full disk is refused with 503; the chunks acknowledged before it are kept, so the
    push resumes from the offset the server reports once space is freed."""
    br = small_volume
    oci = Oci(br.url, LOCAL)
    data = rand_bytes(6 << 20, "chunked-full")
    loc = oci.upload_url("e2e/chunked")
    first = data[: 1 << 20]
    r = oci.req("PATCH", loc, body=first, headers={"Content-Type": "application/octet-stream",
                                                    "Content-Range": f"0-{len(first) - 1}"})
    assert r.status == 202, r
    loc = oci.abs(r.header("Location"))
    filler = br.data_dir / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free_bytes(br.data_dir) - (2 << 20)))
    rest = data[len(first):]
    r = oci.req("PATCH", loc, body=rest, headers={"Content-Type": "application/octet-stream",
                                                   "Content-Range": f"{len(first)}-{len(data) - 1}"})
    assert r.status == 503 and errors_of(r), f"a chunk that does not fit: {r!r}"
    filler.unlink()
    wait_until(lambda: ready(br).status == 200, timeout=20, what="recovery after space was freed")
    r = oci.req("GET", loc)
    assert r.status == 204 and r.header("Range") == f"0-{len(first) - 1}", f"the acknowledged chunk is kept: {r!r}"
    r = oci.req("PATCH", loc, body=rest, headers={"Content-Type": "application/octet-stream",
                                                   "Content-Range": f"{len(first)}-{len(data) - 1}"})
    assert r.status == 202, r
    r = oci.req("PUT", oci.with_query(oci.abs(r.header("Location")), digest=sha256(data)))
    assert r.status == 201, r
    got = oci.get_blob("e2e/chunked", sha256(data))
    assert got.status == 200 and got.body == data
