"""Scale of metadata and many concurrent warm pulls (`--only scale`, rows S1–S6; `--only pulls`, row S7).

scale: one binaryrepo with a local Docker repository `scale-local` (anonymous write, as every bench repository),
seeded over HTTP, the way clients write, by wrk running Lua scripts with --seed-clients connections:

  - `scale/big`: --scale-tags tags (default 100,000), each tag its own manifest (an annotation numbers it)
    over one config and one layer blob: one manifest PUT per tag;
  - `scale/img0000`…: --scale-images image names (default 1,000), one tag each (catalog);
  - `scale/blobs`: --scale-blobs small blobs (default 100,000; ~40 bytes each, no manifest refers to them),
    one monolithic `POST …/blobs/uploads/?digest=` each.

Then, timed (median of --scale-repeat requests): a tag list page (`?n=100`) at the start, the middle and the
end of the 100,000 tags; the catalog (first page of 100 and the whole of it, through the repository's mount);
a garbage collection that keeps everything (default grace: every blob is walked and judged) and one that
removes the unreferenced blobs (grace 0); binaryrepo's RSS (VmRSS, VmHWM) idle, after seeding, after the
listings and after GC.

pulls: --pull-clients connections (default 1,000; wrk -t2 --latency) GET the blobs of a small cached image
(layers of 4 KiB, 64 KiB and 1 MiB, round robin) from binaryrepo's remote repository and from nginx
proxy_cache (bench peers) in front of the same upstream (CNCF distribution): p50/p99 latency, requests/s,
errors, and each server's RSS (nginx: master and workers) at its peak during the run.
"""
from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import peers
from harness.binaryrepo import ADMIN, BinaryRepo, basic  # noqa: E402  (peers put tests/e2e on sys.path)
from harness.oci import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, Oci, build_image  # noqa: E402
from harness.registry import Registry  # noqa: E402
from harness.util import proc_status, request  # noqa: E402

WORKLOADS = ["scale", "pulls"]
ROW_KEYS = {"scale": ["S1", "S2", "S3", "S4", "S5", "S6"], "pulls": ["S7"]}
REPO = "scale-local"  # addressed by the path method: /v2/scale-local/<image>/…

HOW = """S. Scale (`--only scale`, tests/bench/scale.py): a local repository seeded over HTTP by wrk Lua scripts
   (one manifest PUT per tag, one monolithic blob POST per blob; --seed-clients connections); figures are medians of
   --scale-repeat requests with curl-like single GETs; GC through `POST /api/gc?wait=true`. S7 (`--only pulls`):
   `wrk -t2 -c<pull-clients> --latency` round robin over the blobs of a warm image, binaryrepo remote vs nginx
   proxy_cache in front of the same upstream; RSS polled every 50 ms during the run.
"""


def add_args(ap):
    ap.add_argument("--scale-tags", type=int, default=100_000, help="tags in one image (scale; default 100,000)")
    ap.add_argument("--scale-images", type=int, default=1_000, help="image names in the catalog (default 1,000)")
    ap.add_argument("--scale-blobs", type=int, default=100_000, help="small unreferenced blobs (default 100,000)")
    ap.add_argument("--scale-repeat", type=int, default=5, help="requests timed per listing figure (default 5)")
    ap.add_argument("--scale-blob-files", type=int, default=0,
                    help="more small blobs written straight into the store's layout, not over HTTP (default 0; "
                         "900,000 with the default --scale-blobs makes the million)")
    ap.add_argument("--scale-plugin-cpu-ms", type=int, default=0,
                    help="the server's plugin_cpu_ms (default: the server's own); the budget is counted in wall-clock "
                         "epochs, so on a machine loaded far past its cores a manifest PUT can trap at the default")
    ap.add_argument("--seed-clients", type=int, default=32, help="wrk connections while seeding (default 32)")
    ap.add_argument("--pull-clients", type=int, default=1_000, help="concurrent clients of `pulls` (default 1,000)")


def rows(args) -> list[tuple[str, str, str, str]]:
    return [
        ("S1", f"seed: {args.scale_tags:,} tags, {args.scale_images:,} images, {args.scale_blobs:,} blobs (HTTP)"
               + (f" + {args.scale_blob_files:,} blob files written into the store" if args.scale_blob_files else ""),
         "writes/s (tags; blobs)", "—"),
        ("S2", f"tag list page `?n=100` among {args.scale_tags:,} tags", "start / middle / end, median", "< 100 ms"),
        ("S3", f"catalog of {args.scale_images + 2:,} images", "first page `?n=100`; all at once", "< 100 ms; < 1 s"),
        ("S4", f"GC over {args.scale_tags + args.scale_blobs + args.scale_blob_files + 2 * args.scale_images:,}+ blobs",
         "keeps all (walk); removes the unreferenced", "< 60 s; < 120 s"),
        ("S5", "binaryrepo RSS, scale", "idle → seeded → listed → after keep-all GC → after sweeping GC (VmRSS); peak VmHWM", "peak ≤ 256 MiB"),
        ("S6", "tags and blobs all there", "tags listed / expected; GC removed / seeded blobs", "exactly 1.00"),
        ("S7", f"{args.pull_clients:,} concurrent warm blob GETs (wrk --latency)", "p50 / p99; req/s; peak RSS",
         "no errors; p99 ≤ 2× nginx"),
    ]


def raise_nofile(n: int = 65536):
    """wrk and the servers (children inherit it) hold a descriptor per connection"""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(max(soft, n), hard)
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def timed(fn, repeat: int) -> tuple[float, object]:
    """median wall time of `repeat` calls (the last call's result)"""
    times, out = [], None
    for _ in range(repeat):
        t = time.monotonic()
        out = fn()
        times.append(time.monotonic() - t)
    return statistics.median(times), out


def ms(s: float) -> str:
    return f"{s * 1000:,.1f} ms" if s < 10 else f"{s:,.1f} s"


def mib(kib: int) -> str:
    return f"{kib / 1024:,.1f}"


def run_wrk(url: str, script: Path, connections: int, seconds: int, timeout: float = 600,
            until: list[Path] | None = None) -> dict:
    """wrk; with `until`, interrupted (SIGINT: it prints its summary) once every one of those files exists"""
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "60s", "--latency", "-s", str(script), url]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while until and p.poll() is None and not all(f.exists() for f in until):
        if time.monotonic() > deadline:
            p.kill()
            break
        time.sleep(0.2)
    if until and p.poll() is None:
        p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=max(1, deadline - time.monotonic()))
    if p.returncode != 0:
        raise RuntimeError(f"wrk {url}: rc={p.returncode}\n{out}\n{err}")
    import re
    def grab(rx, conv=float, default=None):
        m = re.search(rx, out)
        return conv(m.group(1)) if m else default
    unit = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}

    def dur(rx):
        m = re.search(rx, out)
        return float(m.group(1)) * unit[m.group(2)] if m else None
    return {"rps": grab(r"Requests/sec:\s+([\d.]+)"), "requests": grab(r"(\d+) requests in", int, 0),
            "p50": dur(r"\n\s+50%\s+([\d.]+)(us|ms|s|m)\b"), "p99": dur(r"\n\s+99%\s+([\d.]+)(us|ms|s|m)\b"),
            "non2xx": grab(r"Non-2xx or 3xx responses:\s+(\d+)", int, 0),
            "errors": (re.search(r"Socket errors:\s+(.*)", out) or [None, ""])[1].strip(), "out": out, "err": err}


# --- Lua scripts for the seeding: each of wrk's two threads writes its half, then stops ---------------------

LUA_COMMON = """
local threads = {}
local nthreads = 2
local next_id = 0
function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end
local total = %(total)d
local done = 0
local i = 0
local mine = 0
function init(args)
  mine = math.floor(total / nthreads) + ((id < total %% nthreads) and 1 or 0)
  -- wrk calls the first thread's request() once to check it, and sends nothing of it
  if id == 0 then i = -1 end
end
function response(status, headers, body)
  if status < 200 or status > 299 then
    io.stderr:write("HTTP " .. status .. " " .. string.sub(body or "", 1, 200) .. "\\n")
  end
  done = done + 1
  if done == mine then
    -- wrk's main thread sleeps out -d whatever its threads do: tell the bench, which interrupts it
    local f = io.open(string.format("@MARKER@-%%d", id), "w")
    f:write(done)
    f:close()
  end
end
local function item()
  -- past this thread's share, repeat its last write (idempotent) until wrk stops the thread
  local k = i
  if k >= mine then k = mine - 1 else i = i + 1 end
  return math.max(0, id + k * nthreads)
end
"""

LUA_TAGS = LUA_COMMON + """
local config = "%(config)s"
local layer = "%(layer)s"
function request()
  local n = item()
  local body = string.format('{"schemaVersion":2,"mediaType":"%(mt)s","config":{"mediaType":"%(cmt)s","digest":"%%s","size":%(csize)d},"layers":[{"mediaType":"%(lmt)s","digest":"%%s","size":%(lsize)d}],"annotations":{"n":"%%d"}}', config, layer, n)
  return wrk.format("PUT", string.format("%(path)s/manifests/t%%07d", n), {["Content-Type"] = "%(mt)s"}, body)
end
"""

LUA_BLOBS = LUA_COMMON + """
local digests = {}
function init(args)
  mine = math.floor(total / nthreads) + ((id < total %% nthreads) and 1 or 0)
  if id == 0 then i = -1 end
  local f = io.open("%(digests)s")
  for line in f:lines() do table.insert(digests, line) end
  f:close()
end
function request()
  local n = item()
  return wrk.format("POST", "%(path)s/blobs/uploads/?digest=" .. digests[n + 1],
                    {["Content-Type"] = "application/octet-stream"}, string.format("binaryrepo scale blob %%d", n))
end
"""


def blob_body(n: int) -> bytes:
    return f"binaryrepo scale blob {n}".encode()


class ScaleRun:
    def __init__(self, bench, h):
        self.b, self.h = bench, h
        self.a = bench.args
        self.work = Path(bench.work) / "scale"
        self.br = None
        self.rss: list[tuple[str, dict]] = []

    def log(self, msg):
        self.h.log("scale: " + msg)

    def note_rss(self, when: str):
        st = proc_status(self.br.pid)
        self.rss.append((when, st))
        self.log(f"RSS {when}: VmRSS {mib(st['VmRSS'])} MiB, VmHWM {mib(st['VmHWM'])} MiB")

    def v2(self, rest: str) -> str:
        return f"{self.br.url}/v2/{REPO}/{rest}"

    def seed_wrk(self, name: str, lua: str, total: int) -> float:
        script = self.work / f"{name}.lua"
        marker = self.work / f"{name}-done"
        script.write_text(lua.replace("@MARKER@", str(marker)))
        t = time.monotonic()
        # -d is only a ceiling: wrk is interrupted once both threads have written their share
        r = run_wrk(self.v2(""), script, self.a.seed_clients, seconds=3600, timeout=3600,
                    until=[Path(f"{marker}-{i}") for i in range(2)])
        took = time.monotonic() - t
        if r["non2xx"] or r["errors"]:
            raise RuntimeError(f"seeding {name}: {r['non2xx']} non-2xx, socket errors {r['errors']!r}\n{r['out']}\n"
                               f"{r['err'][-2000:]}")
        self.log(f"seeded {total:,} {name} in {took:.1f} s ({total / took:,.0f}/s; {r['requests']:,} requests)")
        return took

    def setup(self):
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        if not self.b.binary_info:
            self.b.original_binary = (peers.binary_path(), peers.plugin_dir())
            self.b.snapshot()
        # GC only when asked: a scheduled run must not land inside a timing
        config = {"gc_interval_hours": 0}
        if self.a.scale_plugin_cpu_ms:
            config["plugin_cpu_ms"] = self.a.scale_plugin_cpu_ms
        self.br = BinaryRepo(self.work, "binaryrepo", config=config)
        self.br.start(timeout=300)  # a fresh data dir compiles the plugins first
        self.br.create_local(REPO)
        time.sleep(2)
        self.note_rss("idle")

    def seed(self):
        a = self.a
        oci = Oci(self.br.url, REPO)
        # the 100,000 tags' config and layer
        img = build_image("scale-big", layer_sizes=(512,))
        for d, body in img.blobs.items():
            oci.push_blob("big", body, d)
        cfg, layer = img.config, img.layers[0]
        lua = LUA_TAGS % {"total": a.scale_tags, "config": cfg, "layer": layer, "path": f"/v2/{REPO}/big",
                          "mt": OCI_MANIFEST, "cmt": OCI_CONFIG, "lmt": OCI_LAYER,
                          "csize": len(img.blobs[cfg]), "lsize": len(img.blobs[layer])}
        t_tags = self.seed_wrk("tags", lua, a.scale_tags)
        # the catalog's images: three writes each, from a thread pool
        t = time.monotonic()

        def image(i):
            built = build_image(f"scale-img-{i}", layer_sizes=(64,))
            oci.push_image(f"img{i:04d}", built, "latest")
        with ThreadPoolExecutor(16) as ex:
            list(ex.map(image, range(a.scale_images)))
        t_images = time.monotonic() - t
        self.log(f"seeded {a.scale_images:,} images in {t_images:.1f} s")
        # the small blobs
        digests = self.work / "digests.txt"
        digests.write_text("".join("sha256:" + hashlib.sha256(blob_body(n)).hexdigest() + "\n"
                                   for n in range(a.scale_blobs)))
        lua = LUA_BLOBS % {"total": a.scale_blobs, "digests": digests, "path": f"/v2/{REPO}/blobs"}
        t_blobs = self.seed_wrk("blobs", lua, a.scale_blobs)
        t_files = self.seed_blob_files()
        self.seeded = {"tags_s": t_tags, "images_s": t_images, "blobs_s": t_blobs, "blob_files_s": t_files}
        row = self.b.rows["S1"]
        row.values["binaryrepo"] = (f"{a.scale_tags / t_tags:,.0f} tags/s ({t_tags:.0f} s); "
                                    f"{a.scale_blobs / t_blobs:,.0f} blobs/s ({t_blobs:.0f} s); images {t_images:.0f} s")
        row.verdict = "pass"
        row.raw = self.seeded
        self.note_rss("seeded")

    def seed_blob_files(self) -> float:
        """--scale-blob-files more small blobs written into <data_dir>/blobs/sha256/<xx>/<hex> by the bench itself
        (pushing a million over HTTP takes most of an hour on a loaded 2-core machine): each hashes to its name, like
        a stored blob. Their modification time is an hour ahead, so the sweeping GC (grace 0) keeps them and removes
        the blobs seeded over HTTP: it still walks and judges every one."""
        n = self.a.scale_blob_files
        if not n:
            return 0.0
        t = time.monotonic()
        root = self.br.data_dir / "blobs" / "sha256"
        ahead = time.time() + 3600

        def write(lo: int):
            for i in range(lo, min(n, lo + 10_000)):
                body = blob_body(self.a.scale_blobs + i)
                hexd = hashlib.sha256(body).hexdigest()
                d = root / hexd[:2]
                d.mkdir(parents=True, exist_ok=True)
                (d / hexd).write_bytes(body)
                # dated an hour ahead: no grace period runs out on them while a sweep runs
                os.utime(d / hexd, (ahead, ahead))
        with ThreadPoolExecutor(4) as ex:
            list(ex.map(write, range(0, n, 10_000)))
        took = time.monotonic() - t
        self.log(f"wrote {n:,} blob files into the store in {took:.1f} s (not over HTTP)")
        return took

    def get_json(self, url: str) -> tuple[dict, str]:
        r = request("GET", url, timeout=300)
        assert r.status == 200, f"GET {url}: {r!r}"
        return json.loads(r.body), r.header("Link") or ""

    def listings(self):
        a = self.a
        n = a.scale_tags
        pages = {"start": "", "middle": f"&last=t{n // 2:07d}", "end": f"&last=t{max(0, n - 50):07d}"}
        got = {}
        for where, q in pages.items():
            url = self.v2(f"big/tags/list?n=100{q}")
            got[where], body = timed(lambda url=url: self.get_json(url), a.scale_repeat)
            tags = body[0]["tags"]
            self.log(f"tag page at the {where}: {ms(got[where])} ({len(tags)} tags, {tags[:1]}…)")
        row = self.b.rows["S2"]
        row.values["binaryrepo"] = " / ".join(ms(got[w]) for w in pages)
        row.verdict = self.h.verdict(max(got.values()) < 0.1)
        row.raw = got
        # every tag, page by page (also: are they all there)
        t = time.monotonic()
        url, listed = self.v2("big/tags/list?n=1000"), 0
        while url:
            body, link = self.get_json(url)
            listed += len(body["tags"] or [])
            target = link.split(";")[0].strip().strip("<>") if link else ""
            url = target if target.startswith("http") else (self.br.url + target if target else "")
        walk = time.monotonic() - t
        self.log(f"all {listed:,} tags in pages of 1000: {walk:.1f} s")
        # catalog
        first, body = timed(lambda: self.get_json(self.v2("_catalog?n=100")), a.scale_repeat)
        whole, body = timed(lambda: self.get_json(self.v2("_catalog")), a.scale_repeat)
        names = len(body[0]["repositories"])
        root, _ = timed(lambda: self.get_json(self.br.url + "/v2/_catalog?n=100"), a.scale_repeat)
        self.log(f"catalog: first page {ms(first)}, all {names:,} names {ms(whole)}, root first page {ms(root)}")
        row = self.b.rows["S3"]
        row.values["binaryrepo"] = f"{ms(first)}; {ms(whole)} ({names:,} names); root mount first page {ms(root)}"
        row.verdict = self.h.verdict(first < 0.1 and whole < 1.0)
        row.raw = {"first_page_s": first, "all_s": whole, "names": names, "root_first_page_s": root}
        self.listed = {"tags": listed, "walk_s": walk, "names": names}
        self.note_rss("listed")

    def gc(self):
        def run(grace: int) -> tuple[float, dict]:
            t = time.monotonic()
            r = request("POST", f"{self.br.url}/api/gc?wait=true&grace_seconds={grace}", timeout=3600,
                        headers=[("Authorization", basic(*ADMIN))])
            took = time.monotonic() - t
            assert r.status == 200, f"POST /api/gc: {r!r}\n{self.br.log_tail(10)}"
            return took, json.loads(r.body)
        keep_s, keep = run(3600)
        self.log(f"GC keeping everything: {keep_s:.1f} s: {json.dumps(keep)[:400]}")
        # between the two runs too: whether memory a collection took is given back before the next
        self.note_rss("after keep-all GC")
        sweep_s, sweep = run(0)
        self.log(f"GC removing the unreferenced: {sweep_s:.1f} s: {json.dumps(sweep)[:400]}")
        row = self.b.rows["S4"]
        row.values["binaryrepo"] = f"{keep_s:.1f} s; {sweep_s:.1f} s (removed {sweep.get('removed', '?'):,})"
        row.verdict = self.h.verdict(keep_s < 60 and sweep_s < 120)
        row.raw = {"keep_s": keep_s, "keep": keep, "sweep_s": sweep_s, "sweep": sweep}
        self.note_rss("after sweeping GC")
        # nothing in use went: every tag still resolves to a manifest whose blobs are there
        for tag in ("t0000000", f"t{self.a.scale_tags - 1:07d}"):
            r = request("GET", self.v2(f"big/manifests/{tag}"), headers=[("Accept", OCI_MANIFEST)])
            assert r.status == 200, f"after GC, tag {tag}: {r!r}"
        r = request("GET", self.v2("img0000/manifests/latest"), headers=[("Accept", OCI_MANIFEST)])
        assert r.status == 200, f"after GC, img0000:latest: {r!r}"
        removed = sweep.get("removed", 0)
        ok_tags = self.listed["tags"] == self.a.scale_tags
        ok_blobs = removed >= self.a.scale_blobs
        row = self.b.rows["S6"]
        row.values["binaryrepo"] = (f"{self.listed['tags'] / self.a.scale_tags:.2f}; "
                                    f"{removed / max(1, self.a.scale_blobs):.2f}")
        row.verdict = self.h.verdict(ok_tags and ok_blobs)
        if not ok_tags:
            self.b.errors.append(f"S6: {self.listed['tags']:,} tags listed, {self.a.scale_tags:,} pushed")

    def report_rss(self):
        row = self.b.rows["S5"]
        peak = max(st["VmHWM"] for _, st in self.rss)
        row.values["binaryrepo"] = " → ".join(mib(st["VmRSS"]) for _, st in self.rss) + f" MiB; peak {mib(peak)} MiB"
        row.verdict = self.h.verdict(peak <= 256 * 1024)
        row.raw = {w: st for w, st in self.rss}

    def teardown(self):
        if self.br is not None:
            self.br.stop()

    def run(self):
        try:
            self.setup()
            self.seed()
            self.listings()
            self.gc()
        finally:
            if self.rss:
                self.report_rss()
            self.teardown()


class PullsRun:
    def __init__(self, bench, h):
        self.b, self.h = bench, h
        self.a = bench.args
        self.work = Path(bench.work) / "pulls"
        self.upstream = self.nginx = self.br = None

    def log(self, msg):
        self.h.log("pulls: " + msg)

    def setup(self):
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        if not self.b.binary_info:
            self.b.original_binary = (peers.binary_path(), peers.plugin_dir())
            self.b.snapshot()
        self.upstream = Registry(self.work, "upstream").start()
        self.image = build_image("pulls", layer_sizes=(4096, 65536, 1 << 20))
        Oci(self.upstream.url).push_image("library/pulls", self.image, "1")
        self.nginx = peers.NginxCache(self.work, self.upstream.host).start()
        config = {"gc_interval_hours": 0}
        if self.a.scale_plugin_cpu_ms:
            config["plugin_cpu_ms"] = self.a.scale_plugin_cpu_ms
        self.br = BinaryRepo(self.work, "binaryrepo", config=config)
        self.br.start(timeout=300)  # a fresh data dir compiles the plugins first
        self.br.create_remote("pulls", self.upstream.url, tag_check_seconds=300)
        self.paths = {"binaryrepo": [f"/repo/pulls/v2/library/pulls/blobs/{d}" for d in self.image.blobs],
                      "nginx": [f"/v2/library/pulls/blobs/{d}" for d in self.image.blobs]}
        base = {"binaryrepo": self.br.url, "nginx": self.nginx.url}
        for peer, paths in self.paths.items():
            for p in paths:
                want = self.image.blobs[p.rsplit("/", 1)[1]]
                for _ in range(3):  # fill, then hits
                    r = request("GET", base[peer] + p, timeout=60)
                    assert r.status == 200 and r.body == want, f"{peer} {p}: {r!r}"
                    time.sleep(0.2)
        self.base = base

    def tree_rss_kib(self, pid: int) -> int:
        """VmRSS of a process and its children (nginx: master + workers)"""
        total = proc_status(pid)["VmRSS"]
        try:
            kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            kids = []
        for k in kids:
            try:
                total += proc_status(int(k))["VmRSS"]
            except (OSError, KeyError):
                pass
        return total

    def run_peer(self, peer: str, pid: int) -> dict:
        script = self.work / f"{peer}.lua"
        quoted = ", ".join(f'"{p}"' for p in self.paths[peer])
        script.write_text(f"local paths = {{{quoted}}}\nlocal i = 0\n"
                          "request = function()\n  i = i % #paths + 1\n  return wrk.format(\"GET\", paths[i])\nend\n")
        idle = self.tree_rss_kib(pid)
        peak = {"kib": idle}
        stop = threading.Event()

        def poll():
            while not stop.wait(0.05):
                try:
                    peak["kib"] = max(peak["kib"], self.tree_rss_kib(pid))
                except OSError:
                    return
        th = threading.Thread(target=poll, daemon=True)
        th.start()
        try:
            r = run_wrk(self.base[peer] + "/", script, self.a.pull_clients, self.a.wrk_seconds * 2)
        finally:
            stop.set()
            th.join()
        r.update(idle_kib=idle, peak_kib=peak["kib"])
        self.log(f"{peer}: p50 {ms(r['p50'] or 0)}, p99 {ms(r['p99'] or 0)}, {r['rps']:,.0f} req/s, "
                 f"non-2xx {r['non2xx']}, socket errors {r['errors'] or 'none'}; RSS {mib(idle)} → peak {mib(peak['kib'])} MiB")
        return r

    def run(self):
        try:
            self.setup()
            up0 = self.upstream.mark()
            res = {}
            for peer, pid in [("binaryrepo", self.br.pid), ("nginx", self.nginx.proc.pid)]:
                res[peer] = self.run_peer(peer, pid)
            upstream_blob_gets = sum(len(v) for v in self.upstream.stats(up0).blob_gets(status=None).values())
        finally:
            for p in (self.br, self.nginx, self.upstream):
                if p is not None:
                    p.stop()
        row = self.b.rows["S7"]
        fails = []
        for peer, r in res.items():
            row.values[peer] = (f"{ms(r['p50'] or 0)} / {ms(r['p99'] or 0)}; {r['rps']:,.0f} req/s; "
                                f"RSS {mib(r['idle_kib'])} → {mib(r['peak_kib'])} MiB")
            if r["non2xx"] or r["errors"]:
                fails.append(f"{peer}: {r['non2xx']} non-2xx, socket errors {r['errors']}")
        ratio = self.h.ratio(res["binaryrepo"]["p99"], res["nginx"]["p99"])
        row.ratios = [f"p99 {self.h.fmt_ratio(ratio, 'nginx')}"]
        row.verdict = self.h.verdict(not fails and ratio is not None and ratio <= 2.0)
        row.raw = {p: {k: v for k, v in r.items() if k not in ("out", "err")} for p, r in res.items()}
        row.raw["upstream_blob_gets"] = upstream_blob_gets
        self.b.notes.append(f"S7: upstream blob GETs during the warm runs: {upstream_blob_gets} (0 expected).")
        for f in fails:
            self.b.errors.append(f"S7: {f}")


def run(bench, helpers, workload: str):
    raise_nofile()
    if workload == "scale":
        ScaleRun(bench, helpers).run()
    else:
        PullsRun(bench, helpers).run()
