"""Garbage collection never removes what is in use, runs in the background, and scales.

- pushes whose layers already exist (HEAD says 200, nothing is uploaded) and cross-repository mounts race
  repeated collections: every tag pushed resolves afterwards and every blob it needs is there, although the
  reused layers' files are old and were unreferenced before the push;
- `POST /api/gc` answers 202 at once with the run, `GET /api/gc` shows its phase and counters, a second
  start while one runs is a 409 naming the running one; a run waits for requests that began before it;
- a local repository with 20,000 tagged manifests is collected (the plugin answers `live-blobs-page` a page
  at a time, each page with its own CPU budget)."""
import http.client
import json
import os
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

from harness.binaryrepo import ADMIN, basic
from harness.oci import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, Oci, build_image, rand_bytes, sha256
from harness.util import request, wait_until

LOCAL = "docker-local"
GRACE = 600  # seconds: the reused layers below are older than this, fresh uploads are not


def age(br, digest, seconds=7200):
    """make a stored blob's file look `seconds` old"""
    p = br.blob_path(digest)
    t = time.time() - seconds
    os.utime(p, (t, t))


def gc_start(br, query=""):
    return request("POST", f"{br.url}/api/gc{query}", headers={"Authorization": basic(*ADMIN)}, timeout=60)


def gc_status(br):
    r = request("GET", f"{br.url}/api/gc", headers={"Authorization": basic(*ADMIN)}, timeout=60)
    assert r.status == 200, r
    return r.json()


def test_pushes_reusing_old_layers_and_mounts_survive_racing_collections(local_br):
    """A CI pattern: a new image reuses a layer of the one it replaces. The client finds the layer (HEAD 200,
    or a mount from the old image), the old manifest is deleted, and the new manifest follows a moment later.
    In between, the layer is referenced by nothing in the metadata and its file is old: only the reference
    the HEAD or the mount made keeps it."""
    br = local_br
    oci = Oci(br.url, LOCAL)
    n_reuse, n_mount = 24, 12
    old = {}
    for i in range(n_reuse):
        old[f"e2e/reuse-{i}"] = build_image(f"gc-race-old/{i}", layer_sizes=(3000 + i,))
    for i in range(n_mount):
        old[f"e2e/holder-{i}"] = build_image(f"gc-race-holder/{i}", layer_sizes=(2000 + i,))
    for name, img in old.items():
        oci.push_image(name, img, tag="old")
        for d in img.blobs:
            age(br, d)

    stop = threading.Event()
    runs = {"n": 0, "errors": []}

    def collect():
        while not stop.is_set():
            r = request("POST", f"{br.url}/api/gc?wait=true&grace_seconds={GRACE}",
                        headers={"Authorization": basic(*ADMIN)}, timeout=120)
            if r.status == 200:
                runs["n"] += 1
            elif r.status != 409:
                runs["errors"].append(repr(r))

    pushed, failures = [], []

    def new_image(name, layer, layer_diff, seed):
        cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Labels": {"seed": seed}},
                          "rootfs": {"type": "layers", "diff_ids": [layer_diff]}}).encode()
        man = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                          "config": {"mediaType": OCI_CONFIG, "digest": sha256(cfg), "size": len(cfg)},
                          "layers": [{"mediaType": OCI_LAYER, "digest": sha256(layer), "size": len(layer)}]}).encode()
        return SimpleNamespace(manifest=man, media_type=OCI_MANIFEST, cfg=cfg,
                               blobs={sha256(cfg): cfg, sha256(layer): layer})

    def old_layer(img):
        d = img.layers[-1]
        return d, img.blobs[d]

    def finish(name, img, old_name):
        r = request("DELETE", oci.url(old_name, f"manifests/{old[old_name].digest}"))
        assert r.status == 202, r
        oci.push_blob(name, img.cfg)
        time.sleep(0.05)  # a slower client: the collections get between the reference and the manifest
        r = oci.put_manifest(name, "1", img.manifest)
        (pushed if r.status == 201 else failures).append((name, img, r))

    def push_reusing(i):
        name = f"e2e/reuse-{i}"
        d, layer = old_layer(old[name])
        r = oci.head_blob(name, d)
        assert r.status == 200, f"{name}: HEAD of the old image's layer -> {r!r}"
        finish(name, new_image(name, layer, "sha256:" + "0" * 64, f"reuse-{i}"), name)

    def push_mounting(i):
        name, holder = f"e2e/mounted-{i}", f"e2e/holder-{i}"
        d, layer = old_layer(old[holder])
        r = oci.start_upload(name, query=urllib.parse.urlencode({"mount": d, "from": holder}))
        assert r.status == 201, f"{name}: mount of {d} from {holder} -> {r!r}"
        finish(name, new_image(name, layer, "sha256:" + "1" * 64, f"mounted-{i}"), holder)

    gc_threads = [threading.Thread(target=collect) for _ in range(2)]
    for t in gc_threads:
        t.start()
    try:
        with ThreadPoolExecutor(4) as pool:
            jobs = [pool.submit(push_reusing, i) for i in range(n_reuse)]
            jobs += [pool.submit(push_mounting, i) for i in range(n_mount)]
            for j in jobs:
                j.result()
    finally:
        stop.set()
        for t in gc_threads:
            t.join(180)
    assert not runs["errors"], runs["errors"]
    assert runs["n"] >= 3, f"only {runs['n']} collections ran during the pushes"
    assert not failures, "pushes failed while collections ran:\n" + "\n".join(f"{n}: {r!r}" for n, _, r in failures)
    # and once more after the pushes: everything pushed is referenced now
    res = br.gc(grace_seconds=0)
    for name, img, _ in pushed:
        r = oci.get_manifest(name, "1")
        assert r.status == 200 and r.body == img.manifest, f"{name}:1 -> {r!r}"
        for d, data in img.blobs.items():
            assert br.blob_path(d).is_file(), f"{name}:1 names {d}, removed by a collection ({res})"
            g = oci.get_blob(name, d)
            assert g.status == 200 and g.body == data, f"{name} blob {d} -> {g!r}"


def test_a_run_is_a_background_job_with_progress_and_waits_for_earlier_requests(local_br):
    br = local_br
    oci = Oci(br.url, LOCAL)
    garbage = oci.push_blob("e2e/job", rand_bytes(5000, "gc-job-garbage"))
    assert gc_status(br) == {"state": "idle"}

    # an upload in progress (its body half sent) began before the run: the run waits for it
    loc = urllib.parse.urlsplit(oci.upload_url("e2e/job"))
    data = rand_bytes(4096, "gc-job-upload")
    conn = http.client.HTTPConnection(loc.hostname, loc.port, timeout=60)
    conn.putrequest("PATCH", loc.path + ("?" + loc.query if loc.query else ""))
    conn.putheader("Content-Type", "application/octet-stream")
    conn.putheader("Content-Length", str(len(data)))
    conn.endheaders()
    conn.send(data[:100])
    time.sleep(0.2)

    r = gc_start(br, "?grace_seconds=0")
    assert r.status == 202, r
    run = r.json()
    assert run["state"] == "running" and run["id"] >= 1 and run["phase"] in ("fence", "mark", "sweep"), run
    time.sleep(0.5)
    s = gc_status(br)
    assert s["id"] == run["id"] and s["state"] == "running" and s["phase"] == "fence", \
        f"the run did not wait for the upload that began before it: {s}"
    again = gc_start(br)
    assert again.status == 409 and again.json()["run"]["id"] == run["id"], again
    assert br.blob_path(garbage).is_file()

    conn.send(data[100:])
    resp = conn.getresponse()
    assert resp.status == 202, resp.status
    conn.close()
    wait_until(lambda: gc_status(br)["state"] != "running", timeout=60, what="the run to finish")
    s = gc_status(br)
    assert s["state"] == "finished" and s["phase"] == "done" and "error" not in s, s
    assert s["repositories_done"] == s["repositories_total"] == 1, s
    assert s["removed"] >= 1 and s["bytes_freed"] >= 5000 and s["blobs_scanned"] >= 1, s
    assert s["finished"] >= s["started"], s
    assert not br.blob_path(garbage).exists()

    # a client leaving does not stop a run; anonymous callers cannot start one
    assert request("POST", f"{br.url}/api/gc", timeout=30).status == 401
    assert request("GET", f"{br.url}/api/gc", timeout=30).status == 401


def test_twenty_thousand_tagged_manifests_are_collected(local_br):
    br = local_br
    oci = Oci(br.url, LOCAL)
    cfg = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    oci.push_blob("e2e/many", cfg)
    n = 20000

    def manifest(i):
        return json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": OCI_CONFIG, "digest": sha256(cfg), "size": len(cfg)},
                           "layers": [], "annotations": {"i": str(i)}}).encode()

    def put_range(lo, hi):
        base = urllib.parse.urlsplit(br.url)
        conn = http.client.HTTPConnection(base.hostname, base.port, timeout=60)
        for i in range(lo, hi):
            body = manifest(i)
            conn.request("PUT", f"/v2/{LOCAL}/e2e/many/manifests/t{i}", body=body,
                         headers={"Content-Type": OCI_MANIFEST})
            r = conn.getresponse()
            r.read()
            assert r.status == 201, (i, r.status)
        conn.close()

    t0 = time.monotonic()
    step = n // 8
    with ThreadPoolExecutor(8) as pool:
        for j in [pool.submit(put_range, k, k + step) for k in range(0, n, step)]:
            j.result()
    pushed = time.monotonic() - t0
    garbage = oci.push_blob("e2e/many", rand_bytes(3000, "gc-many-garbage"))
    t0 = time.monotonic()
    res = br.gc(grace_seconds=0, timeout=600)
    took = time.monotonic() - t0
    print(f"\n{n} manifests pushed in {pushed:.1f}s; gc in {took:.1f}s: {res}")
    assert res["state"] == "finished" and res["removed"] == 1, res
    assert res["kept"] >= n + 1, res
    assert not br.blob_path(garbage).exists()
    assert oci.get_manifest("e2e/many", f"t{n - 1}").body == manifest(n - 1)
