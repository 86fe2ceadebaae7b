"""A 1 GiB layer streams through binaryrepo with flat memory."""
import hashlib
import subprocess
import threading
import time

from harness.util import request, run, stream_get

GIB = 1 << 30
RSS_LIMIT_KIB = 150 * 1024


def make_blob(path, size=GIB) -> str:
    """fast incompressible bytes: AES-128-CTR keystream of /dev/zero (deterministic)"""
    p = subprocess.Popen(["openssl", "enc", "-aes-128-ctr", "-nosalt", "-pbkdf2", "-pass", "pass:binaryrepo-e2e",
                          "-in", "/dev/zero"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    h, left = hashlib.sha256(), size
    try:
        with open(path, "wb") as f:
            while left:
                b = p.stdout.read(min(left, 4 << 20))
                if not b:
                    raise RuntimeError("openssl stopped early")
                h.update(b)
                f.write(b)
                left -= len(b)
    finally:
        p.kill()
        p.wait()
    return "sha256:" + h.hexdigest()


def push_blob(registry, repo, path, digest):
    r = request("POST", f"{registry.url}/v2/{repo}/blobs/uploads/", body=b"")
    assert r.status == 202, r
    loc = r.header("Location")
    if loc.startswith("/"):
        loc = registry.url + loc
    sep = "&" if "?" in loc else "?"
    out = run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT", "-T", str(path),
               "-H", "Content-Type: application/octet-stream", f"{loc}{sep}digest={digest}"], timeout=300)
    assert out.stdout == b"201", out


class RssWatcher:
    def __init__(self, pid):
        self.pid, self.max_rss, self.stop_ev = pid, 0, threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop_ev.wait(0.05):
            try:
                with open(f"/proc/{self.pid}/status") as f:
                    for line in f:
                        if line.startswith("VmRSS:"):
                            self.max_rss = max(self.max_rss, int(line.split()[1]))
            except OSError:
                return

    def __enter__(self):
        self.t.start()
        return self

    def __exit__(self, *a):
        self.stop_ev.set()
        self.t.join()


def test_one_gib_blob_streams_with_flat_memory(make_upstream, br, tmp_path):
    up = make_upstream("large", empty=True)
    blob = tmp_path / "blob.bin"
    t0 = time.monotonic()
    digest = make_blob(blob)
    t1 = time.monotonic()
    push_blob(up, "library/huge", blob, digest)
    t2 = time.monotonic()
    blob.unlink()
    br.create_remote("docker-remote", up.url)
    url = br.v2("docker-remote", f"library/huge/blobs/{digest}")
    before = br.memory()
    results = {}
    took = {"generate": t1 - t0, "push upstream": t2 - t1}
    for run_ in ("cold", "warm"):
        t = time.monotonic()
        with RssWatcher(br.pid) as w:
            got = stream_get(url, timeout=600)
        took[run_] = time.monotonic() - t
        assert got.status == 200 and got.complete, f"{run_}: {got}"
        assert got.nbytes == GIB and got.digest == digest, f"{run_}: {got}"
        results[run_] = w.max_rss
    after = br.memory()
    print(f"1 GiB blob: {', '.join(f'{k} {v:.1f}s' for k, v in took.items())}; binaryrepo RSS KiB before {before}, "
          f"after {after}, polled max cold {results['cold']} warm {results['warm']}")
    assert after["VmHWM"] < RSS_LIMIT_KIB, \
        (f"peak RSS {after['VmHWM'] // 1024} MiB >= {RSS_LIMIT_KIB // 1024} MiB (before the transfers: "
         f"HWM {before['VmHWM'] // 1024} MiB; polled max RSS cold {results['cold'] // 1024} MiB, "
         f"warm {results['warm'] // 1024} MiB)")
    st = up.stats()
    assert st.blob_gets() == {digest: [GIB]}, st.listing()
