"""Several nodes on one store: two binaryrepo processes with the same configuration, one data directory for
blobs (a shared filesystem, as NFS would be) and one PostgreSQL for metadata, repository definitions, users
and tokens (docs/scale.md). What one node is told, the other serves: repositories, users and tokens created
through A work on B, a push through A is pullable through B at once, a tag moved on A is served by B within
the check window, a chunked upload started on A finishes on B. Then nginx in front of both (round robin):
concurrent skopeo pushes and pulls of several images, one node SIGKILLed during the run, the other keeps
serving, nothing is lost and every stored blob hashes to its name."""
import concurrent.futures
import hashlib
import time

import pytest

from harness.binaryrepo import ADMIN, BinaryRepo, basic, blob_files
from harness.clients import dir_image, skopeo_copy
from harness.images import skopeo
from harness.nginx import Nginx
from harness.oci import Oci, build_image, sha256
from harness.util import request, wait_until

LOCAL = "docker-local"
# How long a node may take to follow another's change (meta::SHARED_CHECK_WINDOW is 1 s; polls are 1 s apart).
FOLLOW = 5


@pytest.fixture
def nodes(request, tmp_path, postgres, binaryrepo_bin):
    """Two nodes, A and B, on one data directory and one (fresh) PostgreSQL database."""
    url = postgres.database()
    made = []
    for name in ("node-a", "node-b"):
        n = BinaryRepo(tmp_path, name, config={"metadata": {"backend": "postgres", "url": url}, "gc_interval_hours": 0})
        n.data_dir = tmp_path / "shared-data"
        made.append(n)
    for n in made:
        n.start(timeout=180)  # the first compiles the plugins into the shared directory's cache
    yield made
    for n in made:
        n.stop()


def test_definitions_users_and_tokens_created_on_one_node_work_on_the_other(nodes):
    a, b = nodes
    a.create_local(LOCAL)
    started = time.monotonic()
    wait_until(lambda: any(r["name"] == LOCAL for r in b.repos()), timeout=FOLLOW, what="B to list A's repository")
    print(f"repository definition reached node B after {time.monotonic() - started:.2f}s")
    r = a.api("POST", "/api/users", json_body={"name": "alice", "password": "alice-password-1", "groups": ["dev"]})
    assert r.status in (200, 201), r
    alice = basic("alice", "alice-password-1")
    wait_until(lambda: b.api("GET", "/api/users/me", auth=("alice", "alice-password-1")).status == 200, timeout=FOLLOW,
               what="alice to sign in on B")
    assert b.api("GET", "/api/users/me", auth=("alice", "wrong-password-9")).status == 401
    r = a.api("POST", "/api/tokens", json_body={"name": "ci"}, auth=("alice", "alice-password-1"))
    assert r.status in (200, 201), r
    secret = r.json()["token"]
    wait_until(lambda: request("GET", b.url + "/api/users/me", headers={"Authorization": f"Bearer {secret}"}).status == 200,
               timeout=FOLLOW, what="A's API token to work on B")
    # revoked on B: A stops taking it once it follows (a credential cache holds a success at most
    # credential_cache_seconds)
    token_id = r.json()["id"]
    assert b.api("DELETE", f"/api/tokens/{token_id}", auth=("alice", "alice-password-1")).status in (200, 204)
    wait_until(lambda: request("GET", a.url + "/api/users/me", headers={"Authorization": f"Bearer {secret}"}).status == 401,
               timeout=FOLLOW, what="the token revoked on B to stop working on A")
    assert request("GET", b.url + "/api/users/me", headers={"Authorization": alice}).status == 200
    # both nodes took the same first admin: one set of users, not one per node
    assert sorted(u["name"] for u in a.api("GET", "/api/users").json()) == sorted(u["name"] for u in b.api("GET", "/api/users").json())


def test_push_on_one_node_pulls_from_the_other_and_a_moved_tag_follows(nodes):
    a, b = nodes
    a.create_local(LOCAL)
    wait_until(lambda: any(r["name"] == LOCAL for r in b.repos()), timeout=FOLLOW, what="B to list the repository")
    on_a, on_b = Oci(a.url, LOCAL), Oci(b.url, LOCAL)
    one, two = build_image("mn-1"), build_image("mn-2")
    assert on_a.push_image("e2e/app", one, tag="latest").status == 201
    r = on_b.get_manifest("e2e/app", "latest")
    assert r.status == 200 and sha256(r.body) == one.digest, "pullable through B at once"
    for d in one.blobs:
        got = on_b.get_blob("e2e/app", d)
        assert got.status == 200 and sha256(got.body) == d
    # the tag moves on A: B serves the new manifest (a plan B reused expires within the check window)
    assert on_a.push_image("e2e/app", two, tag="latest").status == 201
    moved = time.monotonic()
    wait_until(lambda: sha256(on_b.get_manifest("e2e/app", "latest").body) == two.digest, timeout=3, interval=0.05,
               what="B to serve the moved tag")
    print(f"moved tag served by node B after {time.monotonic() - moved:.2f}s")
    # deleted on B: gone on A
    assert on_b.req("DELETE", on_b.url("e2e/app", f"manifests/{one.digest}")).status == 202
    assert on_a.get_manifest("e2e/app", one.digest).status == 404


def test_chunked_upload_started_on_one_node_finishes_on_the_other(nodes):
    a, b = nodes
    a.create_local(LOCAL)
    wait_until(lambda: any(r["name"] == LOCAL for r in b.repos()), timeout=FOLLOW, what="B to list the repository")
    on_a, on_b = Oci(a.url, LOCAL), Oci(b.url, LOCAL)
    data = hashlib.sha256(b"seed").digest() * 40000  # 1.28 MB
    digest = sha256(data)
    r = on_a.start_upload("e2e/chunks")
    assert r.status == 202, r
    loc = on_a.abs(r.header("location"))
    half = len(data) // 2
    r = request("PATCH", loc.replace(a.url, b.url), body=data[:half],
                headers={"Content-Type": "application/octet-stream", "Content-Range": f"0-{half - 1}"})
    assert r.status == 202, r
    loc = on_b.abs(r.header("location")).replace(b.url, a.url)
    r = request("PATCH", loc, body=data[half:],
                headers={"Content-Type": "application/octet-stream", "Content-Range": f"{half}-{len(data) - 1}"})
    assert r.status == 202, r
    loc = on_a.abs(r.header("location")).replace(a.url, b.url)
    r = request("PUT", Oci.with_query(loc, digest=digest))
    assert r.status == 201, r
    for node in (on_a, on_b):
        got = node.get_blob("e2e/chunks", digest)
        assert got.status == 200 and got.body == data


def round_robin(a: BinaryRepo, b: BinaryRepo):
    def site(port):
        return f"""
upstream binaryrepo_nodes {{
    server 127.0.0.1:{a.port} max_fails=1 fail_timeout=30s;
    server 127.0.0.1:{b.port} max_fails=1 fail_timeout=30s;
}}
server {{
    listen 127.0.0.1:{port};
    client_max_body_size 0;
    location / {{
        proxy_pass http://binaryrepo_nodes;
        proxy_http_version 1.1;
        proxy_set_header Host $http_host;
        proxy_set_header Connection "";
        proxy_request_buffering off;
        proxy_buffering off;
        proxy_connect_timeout 2s;
        proxy_next_upstream error timeout http_502;
        proxy_read_timeout 120s;
    }}
}}
"""
    return site


def test_nginx_round_robin_over_two_nodes_survives_one_killed(request, nodes, images, tmp_path):
    a, b = nodes
    a.create_local(LOCAL)
    wait_until(lambda: any(r["name"] == LOCAL for r in b.repos()), timeout=FOLLOW, what="B to list the repository")
    lb = Nginx(tmp_path, None, site=round_robin(a, b))
    request.node.__dict__.setdefault("_e2e_logs", []).append(("nginx error log", lb.errlog, False))
    lb.start()
    try:
        prefix = f"127.0.0.1:{lb.port}/{LOCAL}"
        names = ["small", "small2", "multi"]

        def push(i, name):
            img = images[name]
            extra = ["--all"] if name == "multi" else []
            skopeo("copy", *extra, "--retry-times", "3", "--dest-tls-verify=false", f"oci:{img.layout}:{img.tag}",
                   f"docker://{prefix}/e2e/{name}-{i}:1", timeout=300)
            return name, i

        def pull(i, name):
            img = images[name]
            dest = tmp_path / f"pull-{name}-{i}-{time.monotonic_ns()}"
            skopeo_copy(f"{prefix}/e2e/{name}-{i}:1", dest)
            if name != "multi":
                assert dir_image(dest) == (img.digest, img.blobs), f"{name}-{i} pulled back as pushed"
            return name, i

        # round 1: both nodes up, six concurrent pushes through nginx
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            done = list(pool.map(lambda job: push(*job), [(i, n) for i in range(2) for n in names]))
        assert len(done) == 6
        # round 2: pulls and more pushes at once; node B is killed while they run
        jobs = [("pull", i, n) for i in range(2) for n in names] + [("push", i, n) for i in range(2, 4) for n in names]
        failed = []
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            futures = {pool.submit(pull if kind == "pull" else push, i, n): (kind, i, n) for kind, i, n in jobs}
            time.sleep(0.5)
            b.kill()
            for f in concurrent.futures.as_completed(futures):
                try:
                    f.result()
                except Exception as e:  # a transfer cut by the kill: a real client retries it
                    failed.append((futures[f], e))
        print(f"{len(failed)} transfers cut by the kill, retried through the surviving node")
        for (kind, i, n), _ in failed:
            (pull if kind == "pull" else push)(i, n)
        # after the kill: node A serves everything ever pushed, through nginx
        for i in range(4):
            for n in names:
                pull(i, n)
    finally:
        lb.stop()
    # nothing stored is corrupt: every blob in the shared data directory hashes to its name
    checked = 0
    for path, digest in blob_files(a.data_dir):
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        assert "sha256:" + h.hexdigest() == digest, path
        checked += 1
    assert checked >= 6
    # the survivor still answers the API with the shared definitions
    assert any(r["name"] == LOCAL for r in a.repos())
    assert a.api("GET", "/api/ready").status == 200
