"""The `go` workload of `make bench`: `go mod download` of a set of module versions (real go 1.19).

- G1 warm: binaryrepo (a `go` remote repository, every file already cached) vs nginx serving the same GOPROXY tree
  as static files from disk; each run with an empty module cache, GOSUMDB off (verification is client CPU, the
  same for both). Wall time of `go mod download`, mean ± σ of at least 15 runs, taken in turns; target ≤ 1.0×
  nginx.
- G2 cold: `--clients` concurrent `go mod download` of the whole set through a binaryrepo with an empty store; the
  upstream (harness/goproxy.py, a small delay on each .zip so that the clients overlap) counts requests per path.
  Target: every immutable file (.info, .mod, .zip) requested upstream exactly once.
Built on the e2e harness (harness/goproxy.py, harness/binaryrepo.py).
"""
from __future__ import annotations

import hashlib
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import peers
from harness.binaryrepo import BinaryRepo  # noqa: E402  (peers put tests/e2e on sys.path)
from harness.goproxy import GoProxy, clean, esc, go, go_available, go_env, make_module, module_zip  # noqa: E402

MODULES = 30
VERSIONS = ("v1.0.0", "v1.1.0")  # 60 module versions
PAYLOAD = 48 << 10  # bytes of source per module version (incompressible-ish text)

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


def run(bench, Series, verdict, fmt_ratio, log):
    warm_row, cold_row = bench.rows["G1"], bench.rows["G2"]
    if not go_available() or not shutil.which("nginx"):
        warm_row.verdict = cold_row.verdict = "n/a"
        bench.notes.append("G: go (golang-go, golang-golang-x-mod-dev) or nginx not installed")
        return
    work = bench.work / "go"
    tree = work / "tree"
    names = module_set(tree)
    up = GoProxy(tree, zip_delay=0.05).start()
    nginx = peers.NginxStatic(work, "nginx-static", tree, access_log=False).start()
    repos = [{"name": "go-remote", "type": "remote", "format": "go", "url": up.url, "tag_check_seconds": 3600}]
    br = BinaryRepo(work, "br-go", repositories=repos).start()
    try:
        targets = {"binaryrepo": f"{br.url}/go/go-remote", "nginx": nginx.url}
        for p, url in targets.items():  # warm-up: binaryrepo's store, the page cache, go's build of itself
            download(work / "home", url, names)
        res = {p: Series() for p in targets}
        # a run takes a fraction of a second and its spread is the go command's own: more runs than
        # the other workloads' so that the mean means something
        for i in range(max(15, bench.args.runs)):
            for p in (list(targets) if i % 2 == 0 else list(targets)[::-1]):
                res[p].add(download(work / "home", targets[p], names))
        log("go warm: " + ", ".join(f"{p} {res[p].fmt(1000, 'ms')}" for p in targets))
        for p in targets:
            warm_row.values[p] = res[p].fmt(1000, "ms")
        r = res["binaryrepo"].mean / res["nginx"].mean
        warm_row.ratios = [fmt_ratio(r, "nginx (static files)")]
        warm_row.verdict = verdict(r <= 1.0)
        warm_row.raw = {p: res[p].values for p in targets}
        bench.notes.append(f"G1: {len(names)} module versions ({sum((tree / esc(n.split('@')[0]) / '@v' / (n.split('@')[1] + '.zip')).stat().st_size for n in names):,} bytes of zips); the nginx column is nginx serving the tree from disk, not a cache.")

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
        clean(work / "home")
