"""The `go` workload of `make bench`: `go mod download` of a set of module versions (real go 1.19).

- G1 warm: binaryrepo (a `go` remote repository, every file already cached) vs nginx serving the same GOPROXY tree
  as static files from disk; each run with an empty module cache, GOSUMDB off (verification is client CPU, the
  same for both). After two warm-up runs each, at least 21 runs per peer in alternating pairs (AB, BA, ...).
  Wall time of `go mod download`: median with its interquartile range (and mean ± σ); the verdict is the ratio of
  the medians, target ≤ 1.0× nginx. Both peers write an access line per request, batched the same way
  (binaryrepo's default: written at most 50 ms later; nginx `access_log ... buffer=64k flush=50ms`).
  The server's CPU (user + system, all threads / workers, /proc) per request is reported three times: over the
  timed `go` runs (180 requests a run), over a tight keep-alive loop (`wrk -t1 -c1`, round robin over the same 180
  files) where the client's noise is smallest, and over the same loop with a new connection for every request
  (`Connection: close`: accept, one request, close).
- G2 cold: `--clients` concurrent `go mod download` of the whole set through a binaryrepo with an empty store; the
  upstream (harness/goproxy.py, a small delay on each .zip so that the clients overlap) counts requests per path.
  Target: every immutable file (.info, .mod, .zip) requested upstream exactly once.
Built on the e2e harness (harness/goproxy.py, harness/binaryrepo.py).
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import helm_bench
import peers
from harness.binaryrepo import BinaryRepo  # noqa: E402  (peers put tests/e2e on sys.path)
from harness.goproxy import GoProxy, clean, esc, go, go_available, go_env, make_module, module_zip  # noqa: E402

MODULES = 30
VERSIONS = ("v1.0.0", "v1.1.0")  # 60 module versions
PAYLOAD = 48 << 10  # bytes of source per module version (incompressible-ish text)
WARM_RUNS = 101  # per peer at least: a run takes ~0.1 s on a tmpfs, and the spread left is the `go` command's own
TMPFS = Path("/dev/shm")
LOOP_SECONDS = 5  # per peer and round of each wrk loop

def module_set(root: Path) -> list[str]:
    """Write the module versions into a GOPROXY tree; returns their `path@version` names."""
    names = []
    for i in range(MODULES):
        mod = f"bench.example/Mod{i:02d}/lib"  # upper case: escaped paths on every request
        for v in VERSIONS:
            make_module(root, mod, v)
            # a bigger file, so that the zips weigh something: hex of a hash chain
            zpath = root / esc(mod) / "@v" / f"{v}.zip"
            files = {"lib.go": f'package lib\n\nfunc Hello() string {{ return "{mod} {v}" }}\n',
                     "go.mod": f"module {mod}\n\ngo 1.19\n", "data.txt": _payload(f"{mod}@{v}")}
            zpath.write_bytes(module_zip(mod, v, files))
            names.append(f"{mod}@{v}")
    return names


def _payload(seed: str) -> str:
    out, h = [], seed.encode()
    while sum(map(len, out)) < PAYLOAD:
        h = hashlib.sha256(h).digest()
        out.append(h.hex() + "\n")
    return "".join(out)


def download(home: Path, proxy: str, names: list[str]) -> float:
    clean(home)
    home.mkdir(parents=True)
    t0 = time.monotonic()
    go(go_env(home, proxy), "mod", "download", *names, cwd=home, timeout=900)
    return time.monotonic() - t0


def client_home(work: Path) -> Path:
    """where the `go` client keeps its module cache in the warm runs: a tmpfs when the machine has one"""
    if TMPFS.is_dir() and shutil.disk_usage(TMPFS).free > 256 << 20:
        return TMPFS / f"binaryrepo-gobench-{work.name}-{os.getpid()}"
    return work / "home"


def median_ci(values: list[float]) -> tuple[float, float]:
    """95 % confidence interval of the median: the order statistics n/2 ∓ 1.96·√n/2 (sign test)"""
    v, n = sorted(values), len(values)
    k = max(0, int(n / 2 - 0.98 * n ** 0.5))
    return v[k], v[min(n - 1, n - 1 - k)]


def files(names: list[str]) -> list[str]:
    """the GOPROXY paths `go mod download` asks for: .info, .mod and .zip of each version"""
    out = []
    for n in names:
        mod, v = n.split("@")
        out += [f"/{esc(mod)}/@v/{v}.{ext}" for ext in ("info", "mod", "zip")]
    return out


def loop_cpu(work: Path, base: str, pid: int, paths: list[str], tree_cpu_seconds, close: bool = False) -> tuple[float, int]:
    """(server CPU seconds, requests) of `wrk -t1 -c1` round-robin over `paths` for LOOP_SECONDS; `close`: one
    request per connection"""
    prefix = base.split("://", 1)[1].partition("/")[2]
    script = helm_bench.round_robin_script(work / f"loop-{pid}.lua", [f"/{prefix}{p}" if prefix else p for p in paths])
    c0 = tree_cpu_seconds(pid)
    close_args = ["-H", "Connection: close"] if close else []
    r = subprocess.run(["wrk", "-t1", "-c1", f"-d{LOOP_SECONDS}s", "-s", str(script), *close_args, base],
                       capture_output=True, text=True, timeout=LOOP_SECONDS + 60)
    cpu = tree_cpu_seconds(pid) - c0
    m = re.search(r"(\d+) requests in", r.stdout)
    if r.returncode != 0 or not m or "Non-2xx" in r.stdout or "Socket errors" in r.stdout:
        raise RuntimeError(f"wrk {base}: rc={r.returncode}\n{r.stdout}\n{r.stderr}")
    return cpu, int(m.group(1))


def run(bench, Series, verdict, fmt_ratio, log, tree_cpu_seconds):
    warm_row, cold_row = bench.rows["G1"], bench.rows["G2"]
    if not go_available() or not shutil.which("nginx"):
        warm_row.verdict = cold_row.verdict = "n/a"
        bench.notes.append("G: go (golang-go, golang-golang-x-mod-dev) or nginx not installed")
        return
    work = bench.work / "go"
    tree = work / "tree"
    names = module_set(tree)
    up = GoProxy(tree, zip_delay=0.05).start()
    # binaryrepo writes an access line per request, batched (default); so does the peer
    nginx = peers.NginxStatic(work, "nginx-static", tree, log_flush="50ms").start()
    repos = [{"name": "go-remote", "type": "remote", "format": "go", "url": up.url, "tag_check_seconds": 3600}]
    br = BinaryRepo(work, "br-go", repositories=repos).start()
    home = client_home(work)
    try:
        targets = {"binaryrepo": f"{br.url}/go/go-remote", "nginx": nginx.url}
        pids = {"binaryrepo": br.pid, "nginx": nginx.pid()}
        for _ in range(2):  # warm-up: binaryrepo's store and plan reuse, the page cache, go's build of itself
            for p, url in targets.items():
                download(home, url, names)
        res = {p: Series() for p in targets}
        cpu = {p: 0.0 for p in targets}
        pairs = []
        for i in range(max(WARM_RUNS, bench.args.runs)):
            took = {}
            for p in (list(targets) if i % 2 == 0 else list(targets)[::-1]):
                c0 = tree_cpu_seconds(pids[p])
                took[p] = download(home, targets[p], names)
                cpu[p] += tree_cpu_seconds(pids[p]) - c0
                res[p].add(took[p])
            pairs.append(took["binaryrepo"] / took["nginx"])
        per_run = 3 * len(names)
        go_cpu = {p: cpu[p] * 1e6 / (per_run * len(res[p].values)) for p in targets}
        loops = {kind: {p: [0.0, 0] for p in targets} for kind in ("keep-alive", "new-connection")}
        for i in range(2):
            for p in (list(targets) if i % 2 == 0 else list(targets)[::-1]):
                for kind, loop in loops.items():
                    c, n = loop_cpu(work, targets[p], pids[p], files(names), tree_cpu_seconds,
                                    close=kind == "new-connection")
                    loop[p][0] += c
                    loop[p][1] += n
        per_req = {kind: {p: loop[p][0] * 1e6 / max(1, loop[p][1]) for p in targets} for kind, loop in loops.items()}
        log("go warm: " + ", ".join(f"{p} {res[p].fmt_median(1000, 'ms')}" for p in targets))
        for p in targets:
            warm_row.values[p] = res[p].fmt_median(1000, "ms")
        r = res["binaryrepo"].median / res["nginx"].median
        warm_row.ratios = [fmt_ratio(r, "nginx (static files), medians"),
                           "pairs: median {:.3f}× (95 % CI {:.3f}–{:.3f}×; range {:.2f}–{:.2f}×)".format(
                               statistics.median(pairs), *median_ci(pairs), min(pairs), max(pairs))]
        warm_row.verdict = verdict(r <= 1.0)
        warm_row.raw = {p: res[p].values for p in targets}
        warm_row.raw["server_cpu_us_per_request"] = {"go runs": go_cpu, "keep-alive loop": per_req["keep-alive"],
                                                     "new-connection loop": per_req["new-connection"],
                                                     "loop requests": {kind: {p: loop[p][1] for p in targets}
                                                                       for kind, loop in loops.items()}}
        bench.notes.append(f"G1: {len(names)} module versions ({sum((tree / esc(n.split('@')[0]) / '@v' / (n.split('@')[1] + '.zip')).stat().st_size for n in names):,} bytes of zips); the nginx column is nginx serving the tree from disk, not a cache, with buffered access lines as binaryrepo's; {len(pairs)} alternating pairs; the client's module cache in {home.parent}.")
        bench.notes.append("G1: server CPU (user + system, all threads / workers) per request: during the `go` runs "
                           + ", ".join(f"{p} {go_cpu[p]:,.1f} µs" for p in targets)
                           + "".join(f"; {kind} loop (wrk -t1 -c1{', Connection: close' if kind != 'keep-alive' else ''}, "
                                     f"2 × {LOOP_SECONDS} s each) "
                                     + ", ".join(f"{p} {per_req[kind][p]:,.1f} µs ({loop[p][1] / (2 * LOOP_SECONDS):,.0f} requests/s)"
                                                 for p in targets)
                                     for kind, loop in loops.items()))

        # cold: a second remote repository with an empty store, `clients` concurrent downloads
        br.create(name="go-cold", type="remote", format="go", url=up.url, tag_check_seconds=3600)
        up.hits.clear()
        n = bench.args.clients
        t0 = time.monotonic()
        with ThreadPoolExecutor(n) as ex:
            list(ex.map(lambda k: download(work / f"cold{k}", f"{br.url}/go/go-cold", names), range(n)))
        wall = time.monotonic() - t0
        immutable = {p: c for p, c in up.hits.items() if p.rsplit(".", 1)[-1] in ("info", "mod", "zip")}
        expected = 3 * len(names)
        most = max(immutable.values(), default=0)
        cold_row.values["binaryrepo"] = f"{len(immutable)} files, max {most} request(s) per file; {wall:.1f} s"
        cold_row.verdict = verdict(len(immutable) == expected and most == 1)
        cold_row.raw = {"files": len(immutable), "expected": expected, "max": most, "wall_s": wall}
        for k in range(n):
            clean(work / f"cold{k}")
    finally:
        br.stop()
        nginx.stop()
        up.stop()
        clean(home)
