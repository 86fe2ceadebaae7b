"""Chunked pushes across nodes that share nothing but the object store and PostgreSQL: two binaryrepo processes
with data directories of their own, one s3s-fs bucket and one PostgreSQL database (docs/scale.md). An upload
session lives in the shared store, so a chunked push started on A takes chunks on A and B in turn and finishes
on B; a node restarted in the middle of a push resumes it; the session limits count both nodes' sessions; an
abandoned session is ended and its chunks removed by either node. skopeo pushes and pulls through nginx round
robin (its POST, PATCH and PUT land on different nodes), and every blob in the bucket hashes to its name."""
import hashlib
import time

import pytest

from harness.binaryrepo import BinaryRepo
from harness.clients import dir_image, skopeo_copy
from harness.images import skopeo
from harness.nginx import Nginx
from harness.oci import Oci, sha256
from harness.util import request, wait_until
from test_44_multinode import round_robin

LOCAL = "docker-local"
FOLLOW = 5


@pytest.fixture
def nodes(tmp_path, postgres, s3, binaryrepo_bin):
    """A and B: the same configuration, separate data directories, one bucket and one database."""
    url = postgres.database()
    made = [BinaryRepo(tmp_path, name, config={"metadata": {"backend": "postgres", "url": url}, "storage": s3.storage_config(),
                                                "gc_interval_hours": 0, "upload_sessions_per_repository": 3})
            for name in ("node-a", "node-b")]
    assert made[0].data_dir != made[1].data_dir
    for n in made:
        n.start(timeout=180)
    made[0].create_local(LOCAL)
    wait_until(lambda: any(r["name"] == LOCAL for r in made[1].repos()), timeout=FOLLOW, what="B to list the repository")
    yield made
    for n in made:
        if n.running():
            n.stop()


def chunk_objects(s3):
    return [k for k in s3.objects() if k.startswith(f"{s3.prefix}/uploads/")]


def patch(url, data, start):
    return request("PATCH", url, body=data, headers={"Content-Type": "application/octet-stream",
                                                     "Content-Range": f"{start}-{start + len(data) - 1}"})


def test_a_chunked_push_moves_between_nodes_and_survives_a_restart(nodes, s3):
    a, b = nodes
    on = {a.url: Oci(a.url, LOCAL), b.url: Oci(b.url, LOCAL)}
    # 7 MiB in chunks of uneven sizes, some far below S3's 5 MiB part minimum, one above it
    data = b"".join(hashlib.sha256(str(i).encode()).digest() for i in range(7 * 1024 * 1024 // 32))
    digest = sha256(data)
    cuts = [0, 1, 100, 70_000, 6_000_000, 6_000_001, len(data)]
    r = on[a.url].start_upload("e2e/chunks")
    assert r.status == 202, r
    loc = on[a.url].abs(r.header("location"))
    path = loc[len(a.url):]
    for i, (start, end) in enumerate(zip(cuts, cuts[1:])):
        node = (b, a)[i % 2]  # B, A, B, A, ...
        if i == 3:
            # B restarts in the middle of the push: the session is in the shared store, not on B
            b.restart()
        r = patch(node.url + path, data[start:end], start)
        assert r.status == 202, (i, r)
        assert r.header("range") == f"0-{end - 1}", r.header("range")
        path = on[node.url].abs(r.header("location"))[len(node.url):]
        # the other node knows where the session is
        other = a if node is b else b
        st = request("GET", other.url + path)
        assert st.status == 204 and st.header("range") == f"0-{end - 1}", st
        if i == 1:
            # a chunk that does not start where the session ends is refused on either node
            assert patch(other.url + path, b"x", 5).status == 416
    assert len(chunk_objects(s3)) == len(cuts) - 1, chunk_objects(s3)
    r = request("PUT", Oci.with_query(b.url + path, digest=digest))
    assert r.status == 201, r
    for node in (a, b):
        got = on[node.url].get_blob("e2e/chunks", digest)
        assert got.status == 200 and got.body == data
    assert s3.blobs().get(digest) == len(data)
    assert chunk_objects(s3) == [], "the session's chunks are removed with it"
    assert request("GET", a.url + path).status == 404
    for node in (a, b):
        assert not list((node.data_dir / "uploads").rglob("*.*")), "no session on a node's own disk"
        staging = node.data_dir / "staging"
        assert not (staging.exists() and list(staging.iterdir())), "nothing left staged"
    assert s3.pending_uploads() == []


def test_a_wrong_digest_stores_nothing_and_ends_the_session(nodes, s3):
    a, b = nodes
    data = b"chunk-one" * 1000
    r = Oci(a.url, LOCAL).start_upload("e2e/bad")
    path = Oci(a.url, LOCAL).abs(r.header("location"))[len(a.url):]
    r = patch(b.url + path, data, 0)
    assert r.status == 202, r
    path = Oci(b.url, LOCAL).abs(r.header("location"))[len(b.url):]
    wrong = sha256(b"something else")
    r = request("PUT", Oci.with_query(a.url + path, digest=wrong), body=b"tail")
    assert r.status == 400 and b"DIGEST_INVALID" in r.body, r
    assert wrong not in s3.blobs() and sha256(data + b"tail") not in s3.blobs()
    assert chunk_objects(s3) == []
    assert request("GET", b.url + path).status == 404


def test_session_limits_count_both_nodes_and_abandoned_sessions_expire(nodes, s3, postgres):
    a, b = nodes
    opened = []
    for node in (a, b, a):
        r = Oci(node.url, LOCAL).start_upload("e2e/limits")
        assert r.status == 202, r
        opened.append(Oci(node.url, LOCAL).abs(r.header("location"))[len(node.url):])
    r = Oci(b.url, LOCAL).start_upload("e2e/limits")
    assert r.status == 429, "the fourth session is one too many for the repository, whichever node takes it"
    assert patch(b.url + opened[0], b"abandoned bytes", 0).status == 202
    assert chunk_objects(s3)
    # every session untouched for longer than upload_expiry (24 h by default): either node's sweep
    # (one runs at start) ends them and removes their chunks
    db = a.config["metadata"]["url"].rsplit("/", 1)[1]
    postgres.sql("UPDATE binaryrepo_uploads SET touched = touched - 2 * 86400", db=db)
    b.restart()
    wait_until(lambda: request("GET", a.url + opened[0]).status == 404, timeout=10, what="the abandoned session to end")
    # the sweep ends a session, then removes its chunks
    wait_until(lambda: chunk_objects(s3) == [], timeout=10, what="the abandoned session's chunks to be removed")
    assert Oci(a.url, LOCAL).start_upload("e2e/limits").status == 202, "the expired sessions no longer count"


def test_skopeo_pushes_through_round_robin_nginx_without_sticky_routing(nodes, images, s3, tmp_path, request):
    a, b = nodes
    upstreams = tmp_path / "upstreams.log"

    def site(port):
        # which node took each upload request
        return round_robin(a, b)(port).replace(
            "server {", f"log_format upstreams '$request_method $uri $upstream_addr $status';\nserver {{\n"
                        f"    access_log {upstreams} upstreams;", 1)
    lb = Nginx(tmp_path, None, site=site)
    request.node.__dict__.setdefault("_e2e_logs", []).append(("nginx error log", lb.errlog, False))
    lb.start()
    try:
        prefix = f"127.0.0.1:{lb.port}/{LOCAL}"
        for name in ("small", "big"):
            img = images[name]
            skopeo("copy", "--dest-tls-verify=false", f"oci:{img.layout}:{img.tag}", f"docker://{prefix}/e2e/{name}:1",
                   timeout=300)
            dest = tmp_path / f"pull-{name}"
            skopeo_copy(f"{prefix}/e2e/{name}:1", dest)
            assert dir_image(dest) == (img.digest, img.blobs), f"{name} pulled back as pushed"
            stored = s3.blobs()  # every object hashes to its name
            for d, size in img.blobs.items():
                assert stored.get(d) == size, (d, size)
        assert chunk_objects(s3) == []
    finally:
        lb.stop()
    # the sessions' requests went to both nodes: no stickiness made the pushes work
    took = {}
    for line in upstreams.read_text().splitlines():
        method, uri, addr, status = line.split(" ")[:4]
        if "/blobs/uploads/" in uri:
            took.setdefault(method, set()).add(addr.rsplit(":", 1)[-1])
    print("upload requests by node port:", took)
    assert {str(a.port), str(b.port)} <= took.get("PATCH", set()) | took.get("PUT", set()) | took.get("POST", set())
    assert len(took.get("PATCH", set()) | took.get("PUT", set())) == 2, took


def test_gc_on_one_node_keeps_what_the_other_is_writing(nodes, s3):
    """A blob pushed through B moments ago (no manifest yet) and an upload B is taking are not swept by a
    collection on A: the grace period counts from the bucket's own times, and sessions' chunks are not blobs."""
    a, b = nodes
    on_b = Oci(b.url, LOCAL)
    pushed = on_b.push_blob("e2e/gc", b"layer pushed through B, manifest still to come" * 100)
    data = b"in progress" * 50_000
    r = on_b.start_upload("e2e/gc")
    path = on_b.abs(r.header("location"))[len(b.url):]
    assert patch(b.url + path, data[:200_000], 0).status == 202
    report = a.gc(LOCAL, grace_seconds=None)  # the configured grace (one hour)
    assert report["removed"] == 0, report
    assert s3.blobs().get(pushed), "the fresh blob is still in the bucket"
    # even a collection told to keep nothing (grace 0) leaves the upload in progress alone
    report = a.gc(LOCAL, grace_seconds=0)
    assert pushed not in s3.blobs(), "an unreferenced blob past its grace is collected"
    r = patch(a.url + path, data[200_000:], 200_000)
    assert r.status == 202, r
    path = Oci(a.url, LOCAL).abs(r.header("location"))[len(a.url):]
    digest = sha256(data)
    assert request("PUT", Oci.with_query(b.url + path, digest=digest)).status == 201
    got = Oci(a.url, LOCAL).get_blob("e2e/gc", digest)
    assert got.status == 200 and got.body == data


def test_a_repository_with_its_own_port_created_on_one_node_is_served_by_the_other(tmp_path, postgres, s3, binaryrepo_bin):
    """Definitions follow through the shared store, and so do listeners: a repository with a dedicated port created
    through A is served on that port by B (its own address, 127.0.0.2) within the check window, and B stops
    listening when it is deleted through A."""
    url = postgres.database()
    config = {"metadata": {"backend": "postgres", "url": url}, "storage": s3.storage_config(), "gc_interval_hours": 0}
    a = BinaryRepo(tmp_path, "node-a", config=config).start(timeout=180)
    b = BinaryRepo(tmp_path, "node-b", config=config, ip="127.0.0.2").start(timeout=180)
    try:
        from harness.util import free_port
        port = free_port()
        r = a.api("POST", "/api/repositories", {"name": "ported", "type": "local", "format": "docker", "port": port})
        assert r.status == 201, r
        on_a, on_b = Oci(f"http://127.0.0.1:{port}"), Oci(f"http://127.0.0.2:{port}")
        started = time.monotonic()
        wait_until(lambda: request("GET", on_b.base + "/v2/", timeout=2).status in (200, 401), timeout=FOLLOW,
                   what="B to listen on the repository's port")
        print(f"node B listened on the new repository's port after {time.monotonic() - started:.2f}s")
        d = on_b.push_blob("e2e/ported", b"through B's dedicated port")
        got = on_a.get_blob("e2e/ported", d)
        assert got.status == 200 and got.body == b"through B's dedicated port"
        assert a.api("DELETE", "/api/repositories/ported").status == 204

        def refused():
            try:
                import socket
                socket.create_connection(("127.0.0.2", port), timeout=1).close()
                return False
            except OSError:
                return True
        wait_until(refused, timeout=FOLLOW, what="B to stop listening on the deleted repository's port")
    finally:
        a.stop()
        b.stop()


def test_gc_on_one_node_counts_the_grace_from_references_on_the_other(nodes, s3):
    """A push through B that finds an old layer already stored (a HEAD) references it without writing it: a
    collection on A keeps it, because B wrote the reference to the shared store; once the grace period has passed
    since, A collects it."""
    a, b = nodes
    on_b = Oci(b.url, LOCAL)
    old = on_b.push_blob("e2e/old", b"an old layer, unreferenced" * 100)
    time.sleep(6)  # older than the grace period below
    assert on_b.head_blob("e2e/old", old).status == 200  # the next push finds it
    time.sleep(2)  # B writes its references every second
    report = a.gc(LOCAL, grace_seconds=5)
    assert old in s3.blobs(), f"collected on A although B's push just found it: {report}"
    time.sleep(6)
    a.gc(LOCAL, grace_seconds=5)
    assert old not in s3.blobs(), "unreferenced for longer than the grace period: collected"


def _manifest_put_in_flight(node, image, ref, body: bytes):
    """A manifest PUT whose last byte is still to come: the request has begun on `node` and its handler waits for
    the body. Returns (socket, finish) where finish() sends the last byte and returns (status, response bytes)."""
    import socket
    host, port = node.url.split("//", 1)[1].split(":")
    s = socket.create_connection((host, int(port)), timeout=60)
    head = (f"PUT /v2/{LOCAL}/{image}/manifests/{ref} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n").encode()
    s.sendall(head + body[:-1])

    def finish():
        s.sendall(body[-1:])
        got = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        s.close()
        return int(got.split(b" ", 2)[1]), got
    return finish


def _gc_in_background(node, grace_seconds):
    import threading
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("report", node.gc(LOCAL, grace_seconds=grace_seconds)), daemon=True)
    t.start()
    return t, out


def _pullable_everywhere(nodes, image, ref, built, s3):
    for node in nodes:
        on = Oci(node.url, LOCAL)
        got = on.get_manifest(image, ref)
        assert got.status == 200 and got.body == built.manifest, (node.url, got)
        for d, data in built.blobs.items():
            blob = on.get_blob(image, d)
            assert blob.status == 200 and sha256(blob.body) == d, (node.url, d, blob.status)
    stored = s3.blobs()
    for d, data in built.blobs.items():
        assert stored.get(d) == len(data), f"{d} not in the bucket as pushed"


def test_gc_on_one_node_waits_for_a_manifest_put_the_other_began_before_it(nodes, s3, postgres):
    """A manifest PUT that began on B before A's collection, whose layers are old and unreferenced, lands after the
    collection started: A waits (phase "nodes") until B has finished its earlier requests, so the mark finds the
    manifest and the layers stay; the image is pullable through both nodes. Meanwhile B records every blob reference
    in the shared store before using the blob, and answers 503 when it cannot."""
    from harness.oci import build_image, errors_of
    a, b = nodes
    on_b = Oci(b.url, LOCAL)
    built = build_image("late-manifest", layer_sizes=(2048,))
    for d, data in built.blobs.items():
        on_b.push_blob("e2e/late", data, d)
    other = build_image("refused-manifest", layer_sizes=(512,))
    for d, data in other.blobs.items():
        on_b.push_blob("e2e/refused", data, d)
    time.sleep(4)  # every blob older than the grace period below, and nothing refers to them yet
    finish = _manifest_put_in_flight(b, "e2e/late", "1", built.manifest)
    time.sleep(0.5)  # the request has begun on B
    run, out = _gc_in_background(a, grace_seconds=3)

    def phase():
        r = a.api("GET", "/api/gc")
        assert r.status == 200, r
        return r.json()
    wait_until(lambda: phase().get("phase") == "nodes" or phase().get("state") != "running", timeout=30,
               what="A's collection to reach its wait for the other nodes")
    time.sleep(2)  # B's heartbeat went by more than once: A still waits for the request B began before
    status = phase()
    if status.get("phase") == "nodes":
        # B writes its references synchronously now; one it cannot write fails its request (503, the OCI shape)
        # instead of using a blob the collection might remove: a blob HEAD, and a manifest PUT's layer check
        db = a.config["metadata"]["url"].rsplit("/", 1)[1]
        postgres.sql("ALTER TABLE binaryrepo_collection_refs RENAME TO refs_away", db=db)
        try:
            head = on_b.head_blob("e2e/late", built.layers[0])
            assert head.status == 503 and head.header("retry-after"), head
            refused = on_b.put_manifest("e2e/refused", "1", other.manifest)
            assert refused.status == 503 and errors_of(refused) and refused.header("retry-after"), refused
        finally:
            postgres.sql("ALTER TABLE refs_away RENAME TO binaryrepo_collection_refs", db=db)
    code, response = finish()
    assert code == 201, f"the manifest PUT B began before the collection: {response[:600]!r}; A's run: {status}"
    assert status.get("state") == "running" and status.get("phase") == "nodes", \
        f"A's collection went on while B's earlier manifest PUT was in flight: {status}"
    run.join(timeout=120)
    assert "report" in out, "the collection on A did not finish"
    print("collection on A:", out["report"])
    _pullable_everywhere((a, b), "e2e/late", "1", built, s3)


def test_gc_on_one_node_keeps_a_blob_the_other_references_between_its_candidates_and_its_removal(nodes, s3, postgres):
    """B finds an old, unreferenced layer (HEAD) while A's collection has chosen it for removal but not removed it
    yet, then pushes a manifest that uses it: A keeps the layer, because B recorded the reference in the shared store
    under the blob's lock before answering, and A removes only under that lock what no node referenced during the
    run. The pause: the test holds the shared-store lock of another candidate that A removes first."""
    import subprocess
    from harness.oci import build_image
    a, b = nodes
    on_b = Oci(b.url, LOCAL)
    built = build_image("found-layer", layer_sizes=(2048,))
    layer = built.layers[0]
    # another old, unreferenced blob whose digest sorts before the layer's: A's sweep removes it first
    n = 0
    while True:
        other_data = f"an older candidate {n}".encode() * 50
        if sha256(other_data) < layer:
            break
        n += 1
    other = on_b.push_blob("e2e/other", other_data)
    on_b.push_blob("e2e/found", built.blobs[layer], layer)
    time.sleep(4)  # both older than the grace period below
    db = a.config["metadata"]["url"].rsplit("/", 1)[1]
    lock = subprocess.Popen(["psql", "-h", "127.0.0.1", "-p", str(postgres.port), "-U", "binaryrepo", "-d", db, "-qAt"],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        # the lock the sweep takes to remove that blob (host/src/storage/postgres.rs, BLOB_LOCK_SPACE)
        lock.stdin.write(f"SELECT pg_advisory_lock(1651664230, hashtext('{other}'));\n")
        lock.stdin.flush()
        held = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        wait_until(lambda: postgres.sql(held, db=db).strip() == "1", timeout=10, what="the test to hold the lock")
        run, out = _gc_in_background(a, grace_seconds=3)
        waiting = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        wait_until(lambda: postgres.sql(waiting, db=db).strip() == "1" or "report" in out, timeout=60,
                   what="A's sweep to reach the first candidate")
        # A has read the live set and chosen its candidates; B's push finds the layer and uses it
        found = on_b.head_blob("e2e/found", layer)
        assert found.status == 200, f"B's push did not find the layer: {found!r}; A's run: {out}"
        on_b.push_blob("e2e/found", built.blobs[built.config], built.config)
        r = on_b.put_manifest("e2e/found", "1", built.manifest)
        assert r.status == 201, r
    finally:
        lock.stdin.write("SELECT pg_advisory_unlock_all();\n\\q\n")
        lock.stdin.flush()
        lock.wait(timeout=30)
    run.join(timeout=120)
    assert "report" in out, "the collection on A did not finish"
    print("collection on A:", out["report"])
    assert other not in s3.blobs(), "the other candidate was collected"
    _pullable_everywhere((a, b), "e2e/found", "1", built, s3)


def test_a_node_that_stopped_cleanly_is_not_waited_for_by_a_collection(nodes, s3):
    """A node that shuts down on SIGTERM leaves the nodes a collection waits for: a collection on A
    right after B stopped finishes at once instead of waiting for B's heartbeat to lapse (15 s);
    a node killed with SIGKILL is waited for until then."""
    a, b = nodes
    b.stop()
    started = time.monotonic()
    report = a.gc(LOCAL, grace_seconds=0)
    took = time.monotonic() - started
    assert report["state"] == "finished", report
    assert took < 8, f"the collection waited {took:.1f} s for a node that had stopped cleanly"

    b.start(timeout=180)
    time.sleep(2.5)  # B heartbeats every second: it is among the live nodes now
    b.kill()
    started = time.monotonic()
    report = a.gc(LOCAL, grace_seconds=0)
    assert report["state"] == "finished" and time.monotonic() - started >= 5, \
        f"a killed node is waited for until its heartbeat lapses: {report}, {time.monotonic() - started:.1f} s"
