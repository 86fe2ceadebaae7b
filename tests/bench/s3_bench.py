"""binaryrepo on S3-compatible object storage (`--only s3`, rows O1–O4), side by side in one run.

Everything on 127.0.0.1: s3s-fs (the tests' S3 server, tests/e2e/harness/s3.py) holding the bucket, one PostgreSQL
cluster (tests/postgres.sh) for the two-node figure, CNCF distribution as the upstream of the cold pulls.

  O1  warm GET of a 500 MiB blob through binaryrepo ([storage] backend = "s3", a local repository) against the
      same object GET straight from s3s-fs (a presigned URL of that object: one signature check, as for any
      client of the bucket); curl to /dev/null, time_total, mean ± σ of --runs after one untimed GET each
  O2  the same blob from a repository with `blob_redirect`: `curl -L` (the 307 to a presigned URL, then the
      object from s3s-fs), the client's whole time, against the same direct GET; and the bytes binaryrepo sent
      for it (its /proc/<pid>/io, over --runs GETs) as a share of the blob
  O3  RSS per node while streaming: VmHWM of the O1 node (restarted after the pushes that seed the bucket) over
      --clients concurrent warm GETs of the 500 MiB blob, and of each of the two nodes of O4 over its cold pulls
      (the peak reset with /proc/<pid>/clear_refs before each), with the highest heap (RssAnon) and mapped-file
      (RssFile: staging files of fills, the executable) parts polled every 50 ms
  O4  two nodes (separate data directories, one bucket, one PostgreSQL) with a remote repository for the
      upstream: --clients concurrent cold `skopeo copy` of an image (layers of --s3-cold-layers MiB), half
      through each node; the upstream's blob body bytes (its access log) per blob of the image
"""
from __future__ import annotations

import hashlib
import os
import shutil
import statistics
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import peers
from harness.binaryrepo import BinaryRepo  # noqa: E402  (peers put tests/e2e on sys.path)
from harness.oci import OCI_MANIFEST, Oci, build_image  # noqa: E402
from harness.postgres import Postgres  # noqa: E402
from harness.registry import Registry  # noqa: E402
from harness.s3 import S3Server  # noqa: E402
from harness.util import proc_status, request  # noqa: E402

WORKLOAD = "s3"
ROW_KEYS = ["O1", "O2", "O3", "O4"]
MIB = 1 << 20
PLAIN, REDIRECT = "s3-local", "s3-redirect"  # local repositories, without and with blob_redirect
REMOTE = "s3-remote"
IMAGE = "bench/s3"

HOW = """O. S3 (`--only s3`, tests/bench/s3_bench.py): binaryrepo with `[storage] backend = "s3"` on s3s-fs (the tests'
   S3 server) on 127.0.0.1; "upstream direct" in rows O1/O2 is the same object GET straight from s3s-fs with a
   presigned URL; O4 runs two nodes (own data directories, one bucket, one PostgreSQL) in front of CNCF
   distribution, half of the skopeo clients on each node.
"""


def add_args(ap):
    ap.add_argument("--s3-blob-mib", type=int, default=500, help="size of the blob of O1–O3 in MiB (default 500)")
    ap.add_argument("--s3-cold-layers", default="5,100",
                    help="layer sizes in MiB of O4's image, comma-separated (default 5,100)")


def rows(args) -> list[tuple[str, str, str, str]]:
    n = args.s3_blob_mib
    return [
        ("O1", f"S3: warm GET {n} MiB blob through binaryrepo (curl)", "time, mean ± σ; direct = s3s-fs",
         "≤ 1.1× direct"),
        ("O2", f"S3 + blob_redirect: warm GET {n} MiB blob (curl -L)", "client's time, mean ± σ; node bytes sent",
         "≤ 1.05× direct; node < 1%"),
        ("O3", "S3: RSS per node while streaming", f"VmHWM: {args.clients} warm GETs; two nodes' cold pulls",
         "≤ 64 MiB"),
        ("O4", f"S3: {args.clients} concurrent cold pulls through two nodes (skopeo)",
         "upstream blob bytes / image blob bytes", "state it (1.00× if coordinated)"),
    ]


def curl(url: str, follow: bool = False, timeout: float = 600) -> tuple[int, int, float, str]:
    """GET to /dev/null: (status, bytes, time_total, redirect URL)"""
    cmd = ["curl", "-s", "-o", "/dev/null", "--max-time", str(int(timeout)),
           "-w", "%{http_code} %{size_download} %{time_total} %{redirect_url}"]
    if follow:
        cmd.append("-L")
    p = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=timeout + 30)
    parts = p.stdout.split(" ", 3)
    if len(parts) < 3:
        raise RuntimeError(f"curl {url}: rc={p.returncode} {p.stdout!r} {p.stderr!r}")
    return int(parts[0]), int(parts[1]), float(parts[2]), (parts[3] if len(parts) > 3 else "").strip()


def reset_peak(pid: int):
    """VmHWM back to the current RSS (Linux `clear_refs` 5), so the peak measured is this phase's, not the pushes'"""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def sent_bytes(pid: int) -> int:
    """bytes the process wrote to sockets and files (/proc/<pid>/io wchar; sendfile counts there too)"""
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            if line.startswith("wchar:"):
                return int(line.split()[1])
    return 0


class Peak:
    """the highest VmRSS, RssAnon (heap) and RssFile (mapped files: staging files, the executable) of some
    processes, polled every 50 ms while running"""

    def __init__(self, pids):
        self.pids = list(pids)
        self.max = {pid: {"VmRSS": 0, "RssAnon": 0, "RssFile": 0} for pid in self.pids}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.poll, daemon=True)

    def poll(self):
        while not self.stop.is_set():
            for pid in self.pids:
                try:
                    st = proc_status(pid)
                except OSError:
                    continue
                for k in self.max[pid]:
                    self.max[pid][k] = max(self.max[pid][k], st.get(k, 0))
            time.sleep(0.05)

    def __enter__(self):
        for pid in self.pids:
            reset_peak(pid)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        for pid in self.pids:
            self.max[pid]["VmHWM"] = proc_status(pid)["VmHWM"]

    def fmt(self, pid) -> str:
        m = self.max[pid]
        return f"{m['VmHWM'] / 1024:.1f} MiB (heap {m['RssAnon'] / 1024:.1f}, mapped files {m['RssFile'] / 1024:.1f})"


class S3Run:
    def __init__(self, bench, h):
        self.b, self.h, self.a = bench, h, bench.args
        self.work = Path(bench.work) / "s3"
        self.s3 = self.pg = self.br = self.upstream = None
        self.nodes: list[BinaryRepo] = []

    def log(self, msg):
        self.h.log("s3: " + msg)

    def run(self):
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        if not self.b.binary_info:
            self.b.original_binary = (peers.binary_path(), peers.plugin_dir())
            self.b.snapshot()
        self.b.versions["s3s-fs"] = "0.14.1"
        try:
            self.s3 = S3Server(self.work, prefix="bench").start()
            self.single_node()
            self.two_nodes()
        finally:
            for p in [self.br, *self.nodes, self.upstream, self.s3]:
                if p is not None:
                    try:
                        p.stop()
                    except Exception as e:  # noqa: BLE001
                        self.log(f"stopping {p}: {e}")
            if self.pg is not None:
                self.pg.stop()

    # --- O1–O3: one node ---------------------------------------------------------------------------------
    def single_node(self):
        a, h = self.a, self.h
        self.br = BinaryRepo(self.work, "binaryrepo", config={"storage": self.s3.storage_config(), "gc_interval_hours": 0})
        self.br.start(timeout=300)
        self.br.create_local(PLAIN)
        self.br.create_local(REDIRECT, blob_redirect=True)
        size = a.s3_blob_mib * MIB
        blob = self.work / "blob.bin"
        digest = hashlib.sha256()
        with open(blob, "wb") as f:
            left = size
            while left:
                chunk = os.urandom(min(left, 8 * MIB))
                digest.update(chunk)
                f.write(chunk)
                left -= len(chunk)
        dg = "sha256:" + digest.hexdigest()
        for repo in (PLAIN, REDIRECT):
            t = time.monotonic()
            loc = Oci(self.br.url, repo).upload_url("big")
            p = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-T", str(blob), "-H",
                                "Content-Type: application/octet-stream", Oci.with_query(loc, digest=dg)],
                               capture_output=True, text=True, timeout=900)
            assert p.stdout == "201", f"push of the {a.s3_blob_mib} MiB blob to {repo}: HTTP {p.stdout} {p.stderr}"
            self.log(f"pushed {size:,} bytes to {repo} on S3 in {time.monotonic() - t:.1f} s")
        blob.unlink()
        plain = f"{self.br.url}/v2/{PLAIN}/big/blobs/{dg}"
        redir = f"{self.br.url}/v2/{REDIRECT}/big/blobs/{dg}"

        def direct_url() -> str:
            st, _, _, loc = curl(redir)
            assert st == 307 and loc, f"blob_redirect GET: HTTP {st}"
            return loc

        def timed(name) -> float:
            if name == "direct":
                url, follow = direct_url(), False
            else:
                url, follow = (plain, False) if name == "binaryrepo" else (redir, True)
            st, got, took, _ = curl(url, follow=follow)
            if st != 200 or got != size:
                raise RuntimeError(f"{name}: HTTP {st}, {got} bytes (expected {size})")
            return took
        names = ["direct", "binaryrepo", "redirect"]
        for n in names:
            timed(n)  # untimed: page cache, the first GET of each path
        res = {n: h.Series() for n in names}
        redirect_sent = []
        for i in range(a.runs):
            for n in h.rotate(names, i):
                before = sent_bytes(self.br.pid)
                res[n].add(timed(n))
                if n == "redirect":
                    redirect_sent.append(sent_bytes(self.br.pid) - before)
        self.log("warm: " + ", ".join(f"{n} {res[n].fmt(1, 's', 3)}" for n in names))
        d = res["direct"].mean
        o1, o2 = self.b.rows["O1"], self.b.rows["O2"]
        o1.values["binaryrepo"] = res["binaryrepo"].fmt(1, "s", 3)
        o1.values["direct"] = o2.values["direct"] = res["direct"].fmt(1, "s", 3)
        r1 = h.ratio(res["binaryrepo"].mean, d)
        o1.ratios = [h.fmt_ratio(r1, "direct")]
        o1.verdict = h.verdict(r1 <= 1.1)
        o1.raw = {n: res[n].values for n in names}
        share = max(redirect_sent) / size
        r2 = h.ratio(res["redirect"].mean, d)
        o2.values["binaryrepo"] = f"{res['redirect'].fmt(1, 's', 3)}; node sent ≤ {max(redirect_sent):,} B ({share:.4%})"
        o2.ratios = [h.fmt_ratio(r2, "direct")]
        o2.verdict = h.verdict(r2 <= 1.05 and share < 0.01)
        o2.raw = {"times": res["redirect"].values, "node_bytes_sent": redirect_sent}
        # O3 (first half): concurrent warm GETs through the node
        n = a.clients
        # a node as it runs: restarted, so that the heap the two 500 MiB pushes left is not counted
        self.br.stop()
        self.br.start(timeout=120)
        t = time.monotonic()
        with Peak([self.br.pid]) as peak, ThreadPoolExecutor(n) as ex:
            outs = list(ex.map(lambda _: curl(plain), range(n)))
        wall = time.monotonic() - t
        bad = [o for o in outs if o[0] != 200 or o[1] != size]
        if bad:
            self.b.errors.append(f"O3: {len(bad)} of {n} concurrent warm GETs failed: {bad[:2]}")
        self.single_hwm = peak.max[self.br.pid]["VmHWM"]
        self.single_peak = peak.fmt(self.br.pid)
        self.log(f"{n} concurrent warm GETs in {wall:.1f} s ({n * size / wall / 1e6:,.0f} MB/s); peak {self.single_peak}")
        self.b.notes.append(
            f"O1–O3: {n} concurrent warm GETs of the {a.s3_blob_mib} MiB blob from S3 through one node took "
            f"{wall:.1f} s ({n * size / wall / 1e6:,.0f} MB/s aggregate); with blob_redirect the node wrote at most "
            f"{max(redirect_sent):,} bytes per GET (/proc/<pid>/io wchar: the 307 and its access line).")
        self.br.stop()
        self.br = None

    # --- O3 (second half), O4: two nodes ---------------------------------------------------------------------
    def two_nodes(self):
        a, h = self.a, self.h
        self.pg = Postgres().start()
        url = self.pg.database()
        sizes = [int(x) * MIB for x in a.s3_cold_layers.split(",") if x.strip()]
        t = time.monotonic()
        img = build_image("s3-bench-cold", layer_sizes=sizes)
        self.upstream = Registry(self.work, "upstream").start()
        Oci(self.upstream.url).push_image(IMAGE, img, "1")
        image_bytes = sum(len(b) for b in img.blobs.values())
        self.log(f"upstream {self.upstream.host} holds {IMAGE}:1 ({image_bytes:,} blob bytes), built in "
                 f"{time.monotonic() - t:.1f} s")
        cfg = {"storage": self.s3.storage_config(prefix="bench-nodes"), "metadata": {"backend": "postgres", "url": url},
               "gc_interval_hours": 0}
        self.nodes = [BinaryRepo(self.work, name, config=cfg) for name in ("node-a", "node-b")]
        for node in self.nodes:
            node.start(timeout=300)
        self.nodes[0].create_remote(REMOTE, self.upstream.url)
        deadline = time.monotonic() + 30
        while not any(r["name"] == REMOTE for r in self.nodes[1].repos()):
            if time.monotonic() > deadline:
                raise RuntimeError("node B never listed the remote repository created on node A")
            time.sleep(0.2)
        mark = self.upstream.mark()
        pulldir = self.work / "pulls"
        pulldir.mkdir()

        def one(i):
            node = self.nodes[i % 2]
            tt = time.monotonic()
            pr = subprocess.run(["skopeo", "--insecure-policy", "copy", "-q", "--src-tls-verify=false",
                                 f"docker://{node.host}/{REMOTE}/{IMAGE}:1", f"dir:{pulldir / str(i)}"],
                                capture_output=True, text=True, timeout=1800)
            return pr.returncode, time.monotonic() - tt, pr.stderr[-400:]
        t = time.monotonic()
        n = a.clients
        with Peak([node.pid for node in self.nodes]) as peak, ThreadPoolExecutor(n) as ex:
            outs = list(ex.map(one, range(n)))
        wall = time.monotonic() - t
        bad = [(i, o) for i, o in enumerate(outs) if o[0] != 0]
        for i, o in bad[:3]:
            self.b.errors.append(f"O4: pull {i} failed (rc {o[0]}): {o[2].strip()}")
        for i in range(n):
            for d, body in img.blobs.items():
                f = pulldir / str(i) / d.split(":", 1)[1]
                if not f.exists() or f.stat().st_size != len(body):
                    self.b.errors.append(f"O4: pull {i} lacks {d[:19]}")
                    break
        time.sleep(2)  # fills that were still verifying finish writing their access lines
        st = self.upstream.stats(mark)
        total = st.body_bytes("blob")
        per_blob = {d[:19]: len(v) for d, v in st.blob_gets(status=None).items()}
        multiple = total / image_bytes
        hwm = [peak.max[node.pid]["VmHWM"] for node in self.nodes]
        self.log(f"cold: {n} pulls through two nodes in {wall:.1f} s, {len(bad)} failed; upstream served "
                 f"{total:,} blob bytes = {multiple:.2f}× the image; GETs per blob {per_blob}; VmHWM "
                 + ", ".join(f"{x / 1024:.1f} MiB" for x in hwm))
        o4 = self.b.rows["O4"]
        o4.values["binaryrepo"] = f"{multiple:.2f}× ({total:,} of {image_bytes:,} B)" + (f", {len(bad)} failed" if bad else "")
        o4.verdict = "stated" if not bad else "error"
        o4.raw = {"bytes": total, "image_blob_bytes": image_bytes, "gets_per_blob": per_blob, "wall_s": wall}
        o3 = self.b.rows["O3"]
        o3.values["binaryrepo"] = (f"warm, one node: {self.single_peak}; cold, node A: {peak.fmt(self.nodes[0].pid)}, "
                                   f"node B: {peak.fmt(self.nodes[1].pid)}")
        o3.verdict = h.verdict(max([self.single_hwm, *hwm]) <= 64 * 1024)
        o3.raw = {"single_vmhwm_kib": self.single_hwm, "nodes_vmhwm_kib": hwm,
                  "nodes_peak_kib": {str(k): v for k, v in peak.max.items()}}
        self.b.notes.append(
            f"O4: {n} skopeo clients, alternately on node A and node B, pulled {IMAGE}:1 (layers "
            f"{a.s3_cold_layers} MiB) cold in {wall:.1f} s; the upstream's blob GETs per blob: {per_blob}. Each node "
            "fills a blob once for all its own clients; the nodes do not coordinate fills with each other, so a blob "
            "pulled through both at once is fetched once per node (at most 2.00× with two nodes).")


def run(bench, helpers):
    S3Run(bench, helpers).run()
