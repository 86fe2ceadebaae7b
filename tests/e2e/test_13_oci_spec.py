"""The OCI Distribution Specification v1.1 on a local repository, request by request over plain HTTP (what the
OCI conformance suite checks): blob uploads (single POST, POST+PUT, chunks, status, cancel, mounts, sha512),
manifests (by tag and digest, missing blobs, invalid ones, artifacts), tags and pagination, the catalog,
referrers, deletes, and the error shapes. docker-local is reached through the path method:
/v2/docker-local/<image>/..."""
import json
import re
import socket
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness.images import DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST
from harness.oci import (EMPTY_JSON, OCI_EMPTY, Oci, build_image, build_index, errors_of, rand_bytes, sha256,
                         sha512)
from harness.util import request
from harness.binaryrepo import ADMIN, basic

LOCAL = "docker-local"


def expect_error(r, status, code=None, what=""):
    assert r.status == status, f"{what}: expected {status} {code or ''}, got {r!r} (headers {r.headers})"
    if r.body or code:
        codes = errors_of(r)
        if code:
            assert code in codes, f"{what}: expected error code {code}, got {codes}: {r!r}"


def range_end(r) -> int:
    """the last byte offset of an upload's Range header ("0-<end>", also accepted as "bytes=0-<end>")"""
    v = r.header("Range")
    assert v, f"no Range header: {r.headers}"
    v = v.removeprefix("bytes=")
    start, _, end = v.partition("-")
    assert start == "0" and end.isdigit(), f"Range header {v!r}"
    return int(end)


def put_blob_at(oci, loc, data, digest, headers=None):
    h = {"Content-Type": "application/octet-stream"}
    h.update(headers or {})
    return oci.req("PUT", oci.with_query(loc, digest=digest), body=data, headers=h)


# --- blob uploads ---------------------------------------------------------------------------------


def test_single_post_monolithic_upload(oci):
    data = rand_bytes(70000, "single-post")
    d = sha256(data)
    r = oci.start_upload("e2e/mono", query="digest=" + urllib.parse.quote(d), body=data,
                         headers={"Content-Type": "application/octet-stream"})
    assert r.status == 201, f"POST ?digest= with the blob: {r!r}"
    assert r.header("Docker-Content-Digest") == d, r.headers
    got = oci.req("GET", oci.abs(r.header("Location")))
    assert got.status == 200 and got.body == data, f"GET Location {r.header('Location')}: {got!r}"
    head = oci.head_blob("e2e/mono", d)
    assert head.status == 200 and int(head.header("Content-Length")) == len(data), head.headers
    assert head.header("Docker-Content-Digest") == d and head.body == b"", head.headers


def test_post_then_put(oci):
    data = rand_bytes(123457, "post-put")
    d = sha256(data)
    r = oci.start_upload("e2e/postput")
    assert r.status == 202 and r.header("Location"), f"POST blobs/uploads/: {r!r}"
    r2 = put_blob_at(oci, oci.abs(r.header("Location")), data, d)
    assert r2.status == 201, f"PUT ?digest=: {r2!r}"
    assert r2.header("Docker-Content-Digest") == d, r2.headers
    got = oci.req("GET", oci.abs(r2.header("Location")))
    assert got.status == 200 and got.body == data and got.header("Docker-Content-Digest") == d, got
    got = oci.get_blob("e2e/postput", d)
    assert got.status == 200 and got.body == data, got
    assert int(got.header("Content-Length")) == len(data)


def test_range_request_on_a_pushed_blob(oci):
    data = rand_bytes(100000, "range")
    d = oci.push_blob("e2e/range", data)
    url = oci.url("e2e/range", f"blobs/{d}")
    r = request("GET", url, headers={"Range": "bytes=1000-1999"})
    assert r.status == 206 and r.body == data[1000:2000], r
    assert r.header("Content-Range") == f"bytes 1000-1999/{len(data)}", r.headers
    r = request("GET", url, headers={"Range": f"bytes={len(data) - 10}-"})
    assert r.status == 206 and r.body == data[-10:], r


def test_chunked_upload_in_order_status_and_out_of_order(oci):
    data = rand_bytes(300000, "chunked")
    d = sha256(data)
    a, b, c = data[:100000], data[100000:250000], data[250000:]
    r = oci.start_upload("e2e/chunked", headers={"Content-Length": "0"})
    assert r.status == 202, r
    loc = oci.abs(r.header("Location"))

    st = oci.req("GET", loc)
    assert st.status == 204 and st.header("Location"), f"GET upload status of a new session: {st!r}"

    r = oci.req("PATCH", loc, body=a, headers={"Content-Type": "application/octet-stream",
                                                "Content-Range": f"0-{len(a) - 1}"})
    assert r.status == 202, f"first PATCH: {r!r}"
    assert range_end(r) == len(a) - 1 and r.header("Location"), r.headers
    loc = oci.abs(r.header("Location"))

    st = oci.req("GET", loc)
    assert st.status == 204 and range_end(st) == len(a) - 1, f"GET upload status: {st!r} {st.headers}"
    assert st.body == b""

    # a chunk that does not start right after the last byte received: 416, nothing appended
    skip = len(a) + 10
    r = oci.req("PATCH", loc, body=b[10:], headers={"Content-Type": "application/octet-stream",
                                                     "Content-Range": f"{skip}-{skip + len(b) - 11}"})
    assert r.status == 416, f"out-of-order PATCH (Content-Range {skip}-...): {r!r}"
    # a chunk overlapping what is there already: 416 too
    r = oci.req("PATCH", loc, body=a[-10:] + b, headers={"Content-Type": "application/octet-stream",
                                                          "Content-Range": f"{len(a) - 10}-{len(a) + len(b) - 1}"})
    assert r.status == 416, f"overlapping PATCH: {r!r}"
    st = oci.req("GET", loc)
    assert st.status == 204 and range_end(st) == len(a) - 1, f"status after the 416s: {st!r} {st.headers}"

    r = oci.req("PATCH", loc, body=b, headers={"Content-Type": "application/octet-stream",
                                                "Content-Range": f"{len(a)}-{len(a) + len(b) - 1}"})
    assert r.status == 202 and range_end(r) == len(a) + len(b) - 1, f"second PATCH: {r!r} {r.headers}"
    loc = oci.abs(r.header("Location"))

    # the last chunk in the closing PUT
    r = put_blob_at(oci, loc, c, d, headers={"Content-Range": f"{len(a) + len(b)}-{len(data) - 1}"})
    assert r.status == 201, f"closing PUT with the last chunk: {r!r}"
    assert r.header("Docker-Content-Digest") == d
    got = oci.get_blob("e2e/chunked", d)
    assert got.status == 200 and got.body == data, got
    # the session is over
    expect_error(oci.req("GET", loc), 404, "BLOB_UPLOAD_UNKNOWN", "GET status of a finished upload")


def test_chunked_upload_closed_by_empty_put(oci):
    data = rand_bytes(50000, "chunked-empty-put")
    d = sha256(data)
    loc = oci.upload_url("e2e/chunked2")
    for start in range(0, len(data), 20000):
        chunk = data[start:start + 20000]
        r = oci.req("PATCH", loc, body=chunk, headers={"Content-Type": "application/octet-stream",
                                                        "Content-Range": f"{start}-{start + len(chunk) - 1}"})
        assert r.status == 202, f"PATCH at {start}: {r!r}"
        loc = oci.abs(r.header("Location"))
    r = oci.req("PUT", oci.with_query(loc, digest=d), body=b"")
    assert r.status == 201, f"PUT ?digest= with no body closes the upload: {r!r}"
    assert oci.get_blob("e2e/chunked2", d).body == data


def test_patch_without_content_range_appends(oci):
    """docker and containerd stream a layer in one PATCH without Content-Range"""
    data = rand_bytes(200000, "stream-patch")
    d = sha256(data)
    loc = oci.upload_url("e2e/streamed")
    r = oci.req("PATCH", loc, body=data, headers={"Content-Type": "application/octet-stream"})
    assert r.status == 202 and range_end(r) == len(data) - 1, f"PATCH without Content-Range: {r!r} {r.headers}"
    r = oci.req("PUT", oci.with_query(oci.abs(r.header("Location")), digest=d), body=b"")
    assert r.status == 201, r
    assert oci.get_blob("e2e/streamed", d).body == data


def test_digest_mismatch_stores_nothing(oci):
    data = rand_bytes(40000, "mismatch")
    claimed = sha256(b"something else entirely")
    loc = oci.upload_url("e2e/mismatch")
    r = put_blob_at(oci, loc, data, claimed)
    expect_error(r, 400, "DIGEST_INVALID", "PUT with a digest the bytes do not hash to")
    assert oci.head_blob("e2e/mismatch", claimed).status == 404
    assert oci.head_blob("e2e/mismatch", sha256(data)).status == 404, "the mismatching bytes were stored"
    expect_error(oci.req("GET", loc), 404, "BLOB_UPLOAD_UNKNOWN", "the failed session is gone")

    # single POST with a wrong digest: same
    r = oci.start_upload("e2e/mismatch", query="digest=" + claimed, body=data,
                         headers={"Content-Type": "application/octet-stream"})
    expect_error(r, 400, "DIGEST_INVALID", "single POST with a wrong digest")
    assert oci.head_blob("e2e/mismatch", sha256(data)).status == 404
    assert oci.head_blob("e2e/mismatch", claimed).status == 404


def test_cancel_upload_removes_the_session(local_br, oci):
    br = local_br
    assert br.upload_files() == [], "upload sessions before the test"
    r = oci.start_upload("e2e/cancel")
    assert r.status == 202, r
    loc = oci.abs(r.header("Location"))
    session = urllib.parse.urlsplit(loc).path.rstrip("/").rsplit("/", 1)[1]
    r = oci.req("PATCH", loc, body=b"x" * 5000, headers={"Content-Type": "application/octet-stream",
                                                          "Content-Range": "0-4999"})
    assert r.status == 202, r
    files = br.upload_files()
    assert files, f"no session file under {br.uploads_dir()} while the upload is open"
    assert (br.uploads_dir(LOCAL) / session).exists(), \
        f"expected the open session at {br.uploads_dir(LOCAL) / session}; found {files}"

    r = oci.req("DELETE", loc)
    assert r.status == 204, f"DELETE upload: {r!r}"
    expect_error(oci.req("GET", loc), 404, "BLOB_UPLOAD_UNKNOWN", "GET status after cancel")
    expect_error(oci.req("PATCH", loc, body=b"y", headers={"Content-Range": "5000-5000"}), 404,
                 "BLOB_UPLOAD_UNKNOWN", "PATCH after cancel")
    expect_error(oci.req("PUT", oci.with_query(loc, digest=sha256(b"x" * 5000)), body=b""), 404,
                 "BLOB_UPLOAD_UNKNOWN", "PUT after cancel")
    expect_error(oci.req("DELETE", loc), 404, "BLOB_UPLOAD_UNKNOWN", "second DELETE")
    assert br.upload_files() == [], f"the cancelled session left files: {br.upload_files()}"


def test_two_clients_upload_the_same_blob_at_once(oci):
    data = rand_bytes(3 << 20, "concurrent")
    d = sha256(data)
    locs = [oci.upload_url("e2e/concurrent-a"), oci.upload_url("e2e/concurrent-b")]
    half = len(data) // 2
    for i, loc in enumerate(locs):
        r = oci.req("PATCH", loc, body=data[:half], headers={"Content-Range": f"0-{half - 1}",
                                                             "Content-Type": "application/octet-stream"})
        assert r.status == 202, f"client {i}: {r!r}"
        locs[i] = oci.abs(r.header("Location"))
    results = [None, None]
    barrier = threading.Barrier(2)

    def finish(i):
        barrier.wait()
        results[i] = put_blob_at(oci, locs[i], data[half:], d,
                                 headers={"Content-Range": f"{half}-{len(data) - 1}"})
    threads = [threading.Thread(target=finish, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for i, r in enumerate(results):
        assert r is not None and r.status == 201, f"client {i}: {r!r}"
        assert r.header("Docker-Content-Digest") == d
    for image in ("e2e/concurrent-a", "e2e/concurrent-b"):
        got = oci.get_blob(image, d)
        assert got.status == 200 and got.body == data, f"{image}: {got!r}"


def test_cross_repository_mount(oci):
    data = rand_bytes(90000, "mount")
    d = oci.push_blob("e2e/mount-src", data)
    r = oci.start_upload("e2e/mount-dst", query=urllib.parse.urlencode({"mount": d, "from": oci.name("e2e/mount-src")}))
    assert r.status == 201, f"POST ?mount=&from= of a blob the registry has: {r!r}"
    assert r.header("Docker-Content-Digest") == d, r.headers
    got = oci.req("GET", oci.abs(r.header("Location")))
    assert got.status == 200 and got.body == data, got
    assert oci.get_blob("e2e/mount-dst", d).body == data

    # a blob nobody has: the mount falls back to an upload session (202), which works as usual
    other = rand_bytes(1000, "mount-unknown")
    r = oci.start_upload("e2e/mount-dst",
                         query=urllib.parse.urlencode({"mount": sha256(other), "from": oci.name("e2e/mount-src")}))
    assert r.status == 202 and r.header("Location"), f"mount of an unknown blob: {r!r}"
    r2 = put_blob_at(oci, oci.abs(r.header("Location")), other, sha256(other))
    assert r2.status == 201, f"upload in the session the failed mount opened: {r2!r}"


def test_sha512_blob(oci):
    data = rand_bytes(33333, "sha512")
    d = sha512(data)
    loc = oci.upload_url("e2e/sha512")
    r = put_blob_at(oci, loc, data, d)
    assert r.status == 201, f"PUT ?digest=sha512:...: {r!r}"
    got = oci.get_blob("e2e/sha512", d)
    assert got.status == 200 and got.body == data, f"GET blobs/{d[:20]}...: {got!r}"
    head = oci.head_blob("e2e/sha512", d)
    assert head.status == 200 and int(head.header("Content-Length")) == len(data), head.headers
    # and a wrong sha512 is refused
    loc = oci.upload_url("e2e/sha512")
    expect_error(put_blob_at(oci, loc, data + b"!", d), 400, "DIGEST_INVALID", "sha512 mismatch")


# --- manifests ------------------------------------------------------------------------------------


def test_manifest_by_tag_and_by_digest(oci):
    img = build_image("manifest-basic", annotations={"org.example.e2e": "basic"})
    for dg, b in img.blobs.items():
        oci.push_blob("e2e/basic", b, dg)
    r = oci.put_manifest("e2e/basic", "v1", img.manifest, OCI_MANIFEST)
    assert r.status == 201, f"PUT manifests/v1: {r!r}"
    assert r.header("Docker-Content-Digest") == img.digest, r.headers
    assert r.header("Location"), r.headers
    got = oci.req("GET", oci.abs(r.header("Location")), headers={"Accept": OCI_MANIFEST})
    assert got.status == 200 and got.body == img.manifest, f"GET Location: {got!r}"

    for ref in ("v1", img.digest):
        got = oci.get_manifest("e2e/basic", ref)
        assert got.status == 200 and got.body == img.manifest, f"GET manifests/{ref}: {got!r}"
        assert got.header("Content-Type") == OCI_MANIFEST, got.headers
        assert got.header("Docker-Content-Digest") == img.digest, got.headers
        head = oci.get_manifest("e2e/basic", ref, method="HEAD")
        assert head.status == 200 and head.body == b"", head
        assert head.header("Docker-Content-Digest") == img.digest
        assert int(head.header("Content-Length")) == len(img.manifest)
        assert head.header("Content-Type") == OCI_MANIFEST

    # by digest only: no tag appears
    other = build_image("manifest-by-digest")
    for dg, b in other.blobs.items():
        oci.push_blob("e2e/basic", b, dg)
    r = oci.put_manifest("e2e/basic", other.digest, other.manifest, OCI_MANIFEST)
    assert r.status == 201 and r.header("Docker-Content-Digest") == other.digest, r
    assert oci.get_manifest("e2e/basic", other.digest).body == other.manifest
    t = oci.tags("e2e/basic")
    assert t.status == 200 and t.json()["tags"] == ["v1"], t

    # a digest reference the body does not hash to
    r = oci.put_manifest("e2e/basic", sha256(b"not this"), other.manifest, OCI_MANIFEST)
    assert 400 <= r.status < 500, f"PUT manifests/<wrong digest>: {r!r}"
    errors_of(r)

    # re-pushing the same tag with the same bytes is idempotent
    r = oci.put_manifest("e2e/basic", "v1", img.manifest, OCI_MANIFEST)
    assert r.status == 201 and r.header("Docker-Content-Digest") == img.digest, r


def test_push_by_digest_with_tag_parameters(oci):
    """`PUT manifests/<digest>?tag=a&tag=b` (spec 1.1+): the tags are created and named back in OCI-Tag; a sha512
    digest reference stores the manifest under sha512."""
    img = build_image("tag-params")
    for dg, b in img.blobs.items():
        oci.push_blob("e2e/tagparam", b, dg)
    url = oci.url("e2e/tagparam", f"manifests/{img.digest}") + "?tag=a&tag=b"
    r = oci.req("PUT", url, body=img.manifest, headers={"Content-Type": OCI_MANIFEST})
    assert r.status == 201 and r.header("Docker-Content-Digest") == img.digest, r
    assert sorted(v for k, v in r.headers if k.lower() == "oci-tag") == ["a", "b"], r.headers
    for tag in ("a", "b"):
        got = oci.get_manifest("e2e/tagparam", tag)
        assert got.status == 200 and got.body == img.manifest, f"GET manifests/{tag}: {got!r}"
    d512 = sha512(img.manifest)
    r = oci.req("PUT", oci.url("e2e/tagparam", f"manifests/{d512}") + "?tag=c512", body=img.manifest,
                headers={"Content-Type": OCI_MANIFEST})
    assert r.status == 201 and r.header("Docker-Content-Digest") == d512, r.headers
    got = oci.get_manifest("e2e/tagparam", "c512")
    assert got.status == 200 and got.header("Docker-Content-Digest") == d512 and got.body == img.manifest, got.headers
    assert oci.tags("e2e/tagparam").json()["tags"] == ["a", "b", "c512"]
    # a bad tag parameter is refused and nothing is tagged
    r = oci.req("PUT", oci.url("e2e/tagparam", f"manifests/{img.digest}") + "?tag=-bad", body=img.manifest,
                headers={"Content-Type": OCI_MANIFEST})
    expect_error(r, 400, "TAG_INVALID", "PUT ?tag=-bad")
    # a read of a reference that is neither a tag nor a digest names nothing stored: 404
    expect_error(oci.get_manifest("e2e/tagparam", ".INVALID_MANIFEST_NAME"), 404, "MANIFEST_UNKNOWN", "GET bad ref")
    assert oci.get_manifest("e2e/tagparam", ".INVALID_MANIFEST_NAME", method="HEAD").status == 404


def test_content_type_is_the_pushed_media_type(oci):
    """a Docker schema 2 manifest comes back as Docker schema 2, byte for byte"""
    img = build_image("docker-v2s2")
    doc = json.loads(img.manifest)
    doc["mediaType"] = DOCKER_MANIFEST
    doc["config"]["mediaType"] = "application/vnd.docker.container.image.v1+json"
    for layer in doc["layers"]:
        layer["mediaType"] = "application/vnd.docker.image.rootfs.diff.tar.gzip"
    body = json.dumps(doc, indent=3).encode()
    for dg, b in img.blobs.items():
        oci.push_blob("e2e/v2s2", b, dg)
    r = oci.put_manifest("e2e/v2s2", "1", body, DOCKER_MANIFEST)
    assert r.status == 201 and r.header("Docker-Content-Digest") == sha256(body), r
    for ref in ("1", sha256(body)):
        got = oci.get_manifest("e2e/v2s2", ref)
        assert got.status == 200 and got.body == body, got
        assert got.header("Content-Type") == DOCKER_MANIFEST, got.headers


def test_manifest_referencing_a_missing_blob(oci):
    img = build_image("missing-layer")
    missing = img.layers[-1]
    for dg, b in img.blobs.items():
        if dg != missing:
            oci.push_blob("e2e/missing", b, dg)
    r = oci.put_manifest("e2e/missing", "1", img.manifest, OCI_MANIFEST)
    expect_error(r, 400, "MANIFEST_BLOB_UNKNOWN", "manifest with a layer never pushed")
    expect_error(oci.get_manifest("e2e/missing", "1"), 404, None, "the refused manifest's tag")
    expect_error(oci.get_manifest("e2e/missing", img.digest), 404, None, "the refused manifest's digest")

    cfg_missing = build_image("missing-config")
    for dg in cfg_missing.layers:
        oci.push_blob("e2e/missing", cfg_missing.blobs[dg], dg)
    expect_error(oci.put_manifest("e2e/missing", "2", cfg_missing.manifest, OCI_MANIFEST), 400,
                 "MANIFEST_BLOB_UNKNOWN", "manifest whose config was never pushed")


def test_index_with_a_missing_child_then_complete(oci):
    amd, arm = build_image("index-amd64", arch="amd64"), build_image("index-arm64", arch="arm64")
    idx = build_index([amd, arm], ["linux/amd64", "linux/arm64"])
    oci.push_image("e2e/index", amd)  # by digest; arm64 not yet
    r = oci.put_manifest("e2e/index", "1", idx.manifest, OCI_INDEX)
    expect_error(r, 400, None, "index naming a manifest the registry does not have")
    oci.push_image("e2e/index", arm)
    r = oci.put_manifest("e2e/index", "1", idx.manifest, OCI_INDEX)
    assert r.status == 201 and r.header("Docker-Content-Digest") == idx.digest, r
    got = oci.get_manifest("e2e/index", "1")
    assert got.status == 200 and got.body == idx.manifest and got.header("Content-Type") == OCI_INDEX, got
    got = oci.get_manifest("e2e/index", arm.digest)
    assert got.status == 200 and got.body == arm.manifest, got


def test_invalid_manifests(oci):
    for what, body in [("not JSON", b"{this is not json"), ("a JSON array", b"[]"),
                       ("empty body", b""), ("schemaVersion 1 without anything", b'{"schemaVersion": 1}')]:
        r = oci.put_manifest("e2e/invalid", "1", body, OCI_MANIFEST)
        expect_error(r, 400, "MANIFEST_INVALID", what)
    expect_error(oci.get_manifest("e2e/invalid", "1"), 404, None, "nothing stored")


@pytest.mark.parametrize("tag", ["-dash-first", ".dot-first", "has space", "t" * 129, "bang!tag"])
def test_bad_tag(oci, tag):
    img = build_image("bad-tag")
    for dg, b in img.blobs.items():
        oci.push_blob("e2e/badtag", b, dg)
    r = oci.put_manifest("e2e/badtag", urllib.parse.quote(tag, safe=""), img.manifest, OCI_MANIFEST)
    expect_error(r, 400, "TAG_INVALID", f"PUT manifests/{tag!r}")


def test_manifest_too_large(oci):
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                       "annotations": {"pad": "x" * (5 << 20)}}).encode()
    r = oci.put_manifest("e2e/toolarge", "1", body, OCI_MANIFEST)
    expect_error(r, 413, None, "a 5 MiB manifest")


def test_artifact_with_artifact_type_and_custom_config(oci):
    cfg = b'{"tool":"e2e","version":1}'
    payload = rand_bytes(5000, "artifact-payload")
    art = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/vnd.example.e2e.thing.v1",
           "config": {"mediaType": "application/vnd.example.e2e.config.v1+json", "digest": sha256(cfg),
                      "size": len(cfg)},
           "layers": [{"mediaType": "application/vnd.example.e2e.payload.v1.tar", "digest": sha256(payload),
                       "size": len(payload)}],
           "annotations": {"org.opencontainers.image.title": "thing"}}
    body = json.dumps(art).encode()
    oci.push_blob("e2e/artifact", cfg)
    oci.push_blob("e2e/artifact", payload)
    r = oci.put_manifest("e2e/artifact", "thing", body, OCI_MANIFEST)
    assert r.status == 201 and r.header("Docker-Content-Digest") == sha256(body), r
    got = oci.get_manifest("e2e/artifact", "thing")
    assert got.status == 200 and got.body == body and got.header("Content-Type") == OCI_MANIFEST, got
    assert oci.get_blob("e2e/artifact", sha256(cfg)).body == cfg

    # the empty-config form (config = application/vnd.oci.empty.v1+json, "{}")
    empty = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/vnd.example.e2e.note",
             "config": {"mediaType": OCI_EMPTY, "digest": sha256(EMPTY_JSON), "size": 2},
             "layers": [{"mediaType": OCI_EMPTY, "digest": sha256(EMPTY_JSON), "size": 2}]}
    oci.push_blob("e2e/artifact", EMPTY_JSON)
    body2 = json.dumps(empty).encode()
    r = oci.put_manifest("e2e/artifact", "note", body2, OCI_MANIFEST)
    assert r.status == 201, r
    assert oci.get_manifest("e2e/artifact", "note").body == body2


# --- tags, catalog ----------------------------------------------------------------------------------


def test_tags_list_order_and_pagination(oci):
    img = build_image("tags")
    tags = ["latest", "1.0", "b", "a", "c1", "c2", "1.10", "zeta", "v2.0.0-rc1", "d_x"]
    oci.push_image("e2e/tags", img, tag=tags[0])
    for t in tags[1:]:
        assert oci.put_manifest("e2e/tags", t, img.manifest, OCI_MANIFEST).status == 201
    want = sorted(tags)

    r = oci.tags("e2e/tags")
    assert r.status == 200, r
    body = r.json()
    assert body["tags"] == want, f"tags/list: {body['tags']} (expected lexical order {want})"
    assert body["name"] == oci.name("e2e/tags"), body

    # n / Link pagination, followed until there is no Link
    pages, url = [], oci.url("e2e/tags", "tags/list?n=3")
    for _ in range(10):
        r = request("GET", url)
        assert r.status == 200, f"GET {url}: {r!r}"
        pages.append(r.json()["tags"])
        link = r.header("Link")
        if not link:
            break
        assert 'rel="next"' in link, link
        url = oci.abs(link.split("<", 1)[1].split(">", 1)[0])
    assert pages == [want[i:i + 3] for i in range(0, len(want), 3)], f"pages: {pages}"

    r = oci.tags("e2e/tags", "n=2&last=c1")
    assert r.status == 200 and r.json()["tags"] == want[want.index("c1") + 1:][:2], r
    r = oci.tags("e2e/tags", "last=c2")
    assert r.status == 200 and r.json()["tags"] == want[want.index("c2") + 1:], r
    r = oci.tags("e2e/tags", "n=0")
    assert r.status == 200 and r.json()["tags"] == [] and not r.header("Link"), f"n=0: {r!r} {r.headers}"
    r = oci.tags("e2e/tags", f"n={len(want)}")
    assert r.json()["tags"] == want

    expect_error(oci.tags("e2e/no-such-image"), 404, "NAME_UNKNOWN", "tags/list of an unknown name")


def test_two_thousand_tags_page_through_n_100_each_once_in_order(oci):
    """A tag list of ~2,000 tags walked by its Link headers with n=100: every tag exactly once, in lexical order,
    every page full but the last, each Link naming the last tag of its page."""
    img = build_image("many-tags")
    oci.push_image("e2e/many-tags", img, tag="seed")
    tags = ["seed"] + [f"v{i}" for i in range(1999)]

    def put(t):
        r = oci.put_manifest("e2e/many-tags", t, img.manifest, OCI_MANIFEST)
        assert r.status == 201, f"PUT manifests/{t}: {r!r}"

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, tags[1:]))
    want = sorted(tags)

    seen, pages, url = [], 0, oci.url("e2e/many-tags", "tags/list?n=100")
    while url:
        r = request("GET", url)
        assert r.status == 200, f"GET {url}: {r!r}"
        page = r.json()["tags"]
        pages += 1
        link = r.header("Link")
        if link:
            assert len(page) == 100, f"a page before the last holds n tags: {len(page)} at page {pages}"
            assert 'rel="next"' in link, link
            target = link.split("<", 1)[1].split(">", 1)[0]
            assert urllib.parse.parse_qs(urllib.parse.urlsplit(target).query) == {"n": ["100"], "last": [page[-1]]}, link
            url = oci.abs(target)
        else:
            url = None
        seen.extend(page)
        assert pages <= 21, "the Link headers do not end"
    assert seen == want, f"{len(seen)} tags seen, {len(set(seen))} distinct, sorted: {seen == sorted(seen)}"
    assert pages == 20


def test_catalog_at_root_and_through_the_repository(local_br, oci):
    br = local_br
    for image in ("e2e-cat/one", "e2e-cat/two", "e2e-cat/deep/three"):
        oci.push_image(image, build_image("catalog-" + image), tag="1")
    r = request("GET", f"{br.url}/v2/_catalog")
    assert r.status == 200, f"GET /v2/_catalog: {r!r}"
    names = r.json()["repositories"]
    for image in ("e2e-cat/one", "e2e-cat/two", "e2e-cat/deep/three"):
        assert f"{LOCAL}/{image}" in names, f"/v2/_catalog: {names}"
    assert names == sorted(names), names

    r = request("GET", f"{br.url}/repo/{LOCAL}/v2/_catalog")
    assert r.status == 200, f"GET /repo/{LOCAL}/v2/_catalog: {r!r}"
    names = r.json()["repositories"]
    assert {"e2e-cat/one", "e2e-cat/two", "e2e-cat/deep/three"} <= set(names), names
    assert not any(n.startswith(LOCAL + "/") for n in names), names

    r = request("GET", f"{br.url}/repo/{LOCAL}/v2/_catalog?n=1")
    assert r.status == 200 and len(r.json()["repositories"]) == 1, r


# --- referrers --------------------------------------------------------------------------------------


def referrer(seed, subject, artifact_type=None, config_type=OCI_EMPTY, annotations=None):
    payload = rand_bytes(300, seed)
    m = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
         "config": {"mediaType": config_type, "digest": sha256(EMPTY_JSON), "size": 2},
         "layers": [{"mediaType": "application/vnd.example.e2e.blob", "digest": sha256(payload),
                     "size": len(payload)}],
         "subject": subject.descriptor()}
    if artifact_type:
        m["artifactType"] = artifact_type
    if annotations:
        m["annotations"] = annotations
    return json.dumps(m).encode(), payload


def test_referrers(oci):
    subject = build_image("referrers-subject")
    sig, sig_payload = referrer("sig", subject, artifact_type="application/vnd.example.signature.v1",
                                annotations={"org.example.kind": "signature"})
    sbom, sbom_payload = referrer("sbom", subject, config_type="application/vnd.example.sbom.config.v1+json",
                                  annotations={"org.example.kind": "sbom"})
    for p in (EMPTY_JSON, sig_payload, sbom_payload):
        oci.push_blob("e2e/refs", p)

    # a referrer may be pushed before its subject
    r = oci.put_manifest("e2e/refs", sha256(sig), sig, OCI_MANIFEST)
    assert r.status == 201, f"referrer pushed before its subject: {r!r}"
    assert r.header("OCI-Subject") == subject.digest, f"OCI-Subject on the PUT answer: {r.headers}"
    oci.push_image("e2e/refs", subject, tag="1")
    r = oci.put_manifest("e2e/refs", "sbom", sbom, OCI_MANIFEST)
    assert r.status == 201 and r.header("OCI-Subject") == subject.digest, (r, r.headers)

    r = request("GET", oci.url("e2e/refs", f"referrers/{subject.digest}"))
    assert r.status == 200, r
    assert r.header("Content-Type") == OCI_INDEX, r.headers
    idx = r.json()
    assert idx.get("schemaVersion") == 2 and idx.get("mediaType") == OCI_INDEX, idx
    by_digest = {m["digest"]: m for m in idx["manifests"]}
    assert set(by_digest) == {sha256(sig), sha256(sbom)}, idx
    s = by_digest[sha256(sig)]
    assert (s["mediaType"], s["size"], s.get("artifactType")) == \
        (OCI_MANIFEST, len(sig), "application/vnd.example.signature.v1"), s
    assert s.get("annotations") == {"org.example.kind": "signature"}, s
    b = by_digest[sha256(sbom)]
    assert b.get("artifactType") == "application/vnd.example.sbom.config.v1+json", \
        f"no artifactType in the manifest: the descriptor takes the config's media type: {b}"
    assert b["size"] == len(sbom) and b.get("annotations") == {"org.example.kind": "sbom"}, b

    r = request("GET", oci.url("e2e/refs", f"referrers/{subject.digest}?artifactType=" +
                               urllib.parse.quote("application/vnd.example.signature.v1", safe="")))
    assert r.status == 200, r
    assert [m["digest"] for m in r.json()["manifests"]] == [sha256(sig)], r
    assert "artifactType" in (r.header("OCI-Filters-Applied") or ""), f"OCI-Filters-Applied: {r.headers}"

    r = request("GET", oci.url("e2e/refs", f"referrers/{sha256(b'no such subject')}"))
    assert r.status == 200 and r.json().get("manifests") == [], f"referrers of an unknown subject: {r!r}"
    assert r.header("Content-Type") == OCI_INDEX
    expect_error(request("GET", oci.url("e2e/refs", "referrers/sha256:notadigest")), 400, None,
                 "referrers of an invalid digest")

    # a deleted referrer is no longer listed
    assert oci.req("DELETE", oci.url("e2e/refs", f"manifests/{sha256(sig)}")).status == 202
    r = request("GET", oci.url("e2e/refs", f"referrers/{subject.digest}"))
    assert [m["digest"] for m in r.json()["manifests"]] == [sha256(sbom)], r


# --- deletes ----------------------------------------------------------------------------------------


def test_delete_manifest_by_digest(oci):
    img, keep = build_image("delete-manifest"), build_image("delete-keep")
    oci.push_image("e2e/del", img, tag="doomed")
    assert oci.put_manifest("e2e/del", "doomed-too", img.manifest).status == 201
    oci.push_image("e2e/del", keep, tag="kept")
    r = oci.req("DELETE", oci.url("e2e/del", f"manifests/{img.digest}"))
    assert r.status == 202, f"DELETE manifests/<digest>: {r!r}"
    expect_error(oci.get_manifest("e2e/del", img.digest), 404, "MANIFEST_UNKNOWN", "GET the deleted digest")
    expect_error(oci.get_manifest("e2e/del", "doomed"), 404, "MANIFEST_UNKNOWN", "GET a tag of the deleted digest")
    assert oci.get_manifest("e2e/del", img.digest, method="HEAD").status == 404
    t = oci.tags("e2e/del")
    assert t.status == 200 and t.json()["tags"] == ["kept"], f"tags after the delete: {t!r}"
    assert oci.get_manifest("e2e/del", "kept").body == keep.manifest
    expect_error(oci.req("DELETE", oci.url("e2e/del", f"manifests/{img.digest}")), 404, "MANIFEST_UNKNOWN",
                 "second DELETE")


def test_delete_tag(oci):
    img = build_image("delete-tag")
    oci.push_image("e2e/deltag", img, tag="one")
    assert oci.put_manifest("e2e/deltag", "two", img.manifest).status == 201
    r = oci.req("DELETE", oci.url("e2e/deltag", "manifests/one"))
    assert r.status == 202, f"DELETE manifests/<tag>: {r!r}"
    expect_error(oci.get_manifest("e2e/deltag", "one"), 404, "MANIFEST_UNKNOWN", "GET the deleted tag")
    assert oci.get_manifest("e2e/deltag", "two").body == img.manifest
    assert oci.get_manifest("e2e/deltag", img.digest).body == img.manifest, "deleting a tag deleted the manifest"
    assert oci.tags("e2e/deltag").json()["tags"] == ["two"]


def test_delete_blob(oci):
    data = rand_bytes(10000, "delete-blob")
    d = oci.push_blob("e2e/delblob", data)
    r = oci.req("DELETE", oci.url("e2e/delblob", f"blobs/{d}"))
    assert r.status == 202, f"DELETE blobs/<digest>: {r!r}"
    assert oci.head_blob("e2e/delblob", d).status == 404
    expect_error(oci.get_blob("e2e/delblob", d), 404, "BLOB_UNKNOWN", "GET a deleted blob")
    expect_error(oci.req("DELETE", oci.url("e2e/delblob", f"blobs/{d}")), 404, "BLOB_UNKNOWN", "second DELETE")


def test_deletes_refused_when_disabled(local_br):
    br = local_br
    br.create_local("docker-frozen", delete_enabled=False)
    frozen = Oci(br.url, "docker-frozen")
    img = build_image("frozen")
    frozen.push_image("e2e/frozen", img, tag="1")
    for what, url in [("manifest by digest", frozen.url("e2e/frozen", f"manifests/{img.digest}")),
                      ("tag", frozen.url("e2e/frozen", "manifests/1")),
                      ("blob", frozen.url("e2e/frozen", f"blobs/{img.layers[0]}"))]:
        expect_error(request("DELETE", url), 405, "UNSUPPORTED", f"DELETE {what} with delete_enabled false")
    assert frozen.get_manifest("e2e/frozen", "1").body == img.manifest
    assert frozen.get_blob("e2e/frozen", img.layers[0]).body == img.blobs[img.layers[0]]


# --- errors -----------------------------------------------------------------------------------------


def test_client_mistakes_get_4xx_with_oci_errors(oci):
    img = build_image("errors")
    oci.push_image("e2e/err", img, tag="1")
    loc = oci.upload_url("e2e/err")
    gone = oci.url("e2e/err", "blobs/uploads/no-such-session-0123456789")
    # (what, method, url, body, headers, acceptable statuses, error code or None)
    cases = [
        ("GET unknown upload", "GET", gone, None, {}, {404}, "BLOB_UPLOAD_UNKNOWN"),
        ("PATCH unknown upload", "PATCH", gone, b"abc", {"Content-Range": "0-2"}, {404}, "BLOB_UPLOAD_UNKNOWN"),
        ("PUT unknown upload", "PUT", gone + "?digest=" + sha256(b"abc"), b"abc", {}, {404}, "BLOB_UPLOAD_UNKNOWN"),
        ("DELETE unknown upload", "DELETE", gone, None, {}, {404}, "BLOB_UPLOAD_UNKNOWN"),
        ("PUT upload without digest", "PUT", loc, b"abc", {}, {400}, None),
        ("PUT upload with a malformed digest", "PUT", oci.with_query(loc, digest="sha256:xyz"), b"abc", {}, {400}, None),
        ("PATCH with a malformed Content-Range", "PATCH", loc, b"abc", {"Content-Range": "bytes=abc"}, {400, 416}, None),
        ("GET blob with a malformed digest", "GET", oci.url("e2e/err", "blobs/sha256:1234"), None, {}, {400, 404}, None),
        ("GET unknown blob", "GET", oci.url("e2e/err", f"blobs/{sha256(b'nope')}"), None, {}, {404}, "BLOB_UNKNOWN"),
        ("GET unknown manifest", "GET", oci.url("e2e/err", f"manifests/{sha256(b'nope')}"), None, {}, {404},
         "MANIFEST_UNKNOWN"),
        ("GET unknown tag", "GET", oci.url("e2e/err", "manifests/nope"), None, {}, {404}, "MANIFEST_UNKNOWN"),
        ("DELETE unknown manifest", "DELETE", oci.url("e2e/err", f"manifests/{sha256(b'nope')}"), None, {}, {404},
         "MANIFEST_UNKNOWN"),
        ("DELETE unknown blob", "DELETE", oci.url("e2e/err", f"blobs/{sha256(b'nope')}"), None, {}, {404},
         "BLOB_UNKNOWN"),
        ("invalid name", "GET", f"{oci.base}/v2/{LOCAL}/UPPER/case/manifests/1", None, {}, {400, 404}, None),
        ("POST uploads with a malformed digest", "POST", oci.url("e2e/err", "blobs/uploads/?digest=sha256:xyz"), b"abc",
         {}, {400}, None),
        ("PUT manifest with a malformed digest reference", "PUT", oci.url("e2e/err", "manifests/sha256:xyz"),
         img.manifest, {"Content-Type": OCI_MANIFEST}, {400}, None),
    ]
    bad = []
    for what, method, url, body, headers, statuses, code in cases:
        r = request(method, url, body=body, headers=headers)
        try:
            assert r.status in statuses, f"expected {sorted(statuses)}, got {r.status}"
            if r.body or code:
                codes = errors_of(r)
                assert code is None or code in codes, f"expected code {code}, got {codes}"
        except AssertionError as e:
            bad.append(f"{what}: {method} {url} -> {r!r}: {e}")
    assert not bad, "\n".join(bad)
    # the registry still serves the image after all that, and the open session still works
    assert oci.get_manifest("e2e/err", "1").body == img.manifest
    data = b"still works"
    assert put_blob_at(oci, loc, data, sha256(data)).status == 201


def _exchange(sock, head: bytes, body: bytes) -> tuple[bytes, bytes]:
    """sends the head, then the body a moment later (as a client streaming a chunk does), and reads one response"""
    sock.sendall(head)
    time.sleep(0.05)
    if body:
        sock.sendall(body)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response; got {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
    n = int(m.group(1)) if m else 0
    while len(rest) < n:
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside a response body"
        rest += chunk
    return head, rest


def test_early_errors_keep_the_connection_usable(local_br, oci):
    """An error given before the request body is read (out-of-order chunk, unknown session, malformed digest)
    still leaves the keep-alive connection usable: the server reads the small body it refused, as distribution
    does, so the client's next request on that connection gets an answer."""
    loc = urllib.parse.urlsplit(oci.upload_url("e2e/early"))
    session = loc.path + (f"?{loc.query}" if loc.query else "")
    path = f"/v2/{LOCAL}/e2e/early"
    body = b"B" * 20
    cases = [
        ("out-of-order PATCH", "PATCH", session, {"Content-Range": "22-41"}, 416),
        ("PATCH to an unknown session", "PATCH", f"{path}/blobs/uploads/{'0' * 32}", {}, 404),
        ("PUT with a malformed digest", "PUT", f"{path}/blobs/uploads/{'0' * 32}?digest=sha256:xyz", {}, {400, 404}),
        ("PUT manifest to a bad reference", "PUT", f"{path}/manifests/sha256:xyz", {"Content-Type": OCI_MANIFEST}, 400),
    ]
    u = urllib.parse.urlsplit(local_br.url)
    for what, method, target, headers, status in cases:
        with socket.create_connection((u.hostname, u.port), timeout=10) as sock:
            extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            head = (f"{method} {target} HTTP/1.1\r\nHost: {u.netloc}\r\nContent-Type: application/octet-stream\r\n"
                    f"{extra}Content-Length: {len(body)}\r\n\r\n").encode()
            got, _ = _exchange(sock, head, body)
            code = int(got.split(b" ", 2)[1])
            assert code in (status if isinstance(status, set) else {status}), f"{what}: {got!r}"
            assert not re.search(rb"(?i)\r\nconnection:\s*close", got), f"{what}: closes the connection: {got!r}"
            after, _ = _exchange(sock, f"GET /v2/ HTTP/1.1\r\nHost: {u.netloc}\r\nAuthorization: {basic(*ADMIN)}\r\n\r\n".encode(), b"")
            assert after.startswith(b"HTTP/1.1 200"), f"{what}: the next request on the connection got {after!r}"


def test_push_to_a_remote_repository_is_unsupported(local_br, upstream):
    br = local_br
    br.create_remote("docker-remote", upstream.url)
    remote = Oci(br.url, "docker-remote")
    img = build_image("remote-push")
    expect_error(remote.start_upload("library/small"), 405, "UNSUPPORTED", "POST blobs/uploads/ on a remote")
    expect_error(remote.put_manifest("library/small", "1", img.manifest), 405, "UNSUPPORTED",
                 "PUT manifest on a remote")
    expect_error(remote.start_upload("library/small", query="digest=" + sha256(b"x"), body=b"x"), 405, "UNSUPPORTED",
                 "single POST on a remote")
    assert upstream.stats().count("PUT") == 0 and upstream.stats().count("POST") == 0, upstream.stats().listing()
