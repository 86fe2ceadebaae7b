#!/usr/bin/env python3
"""G1's workload against binaryrepo builds, nginx and the floor of a hyper/tokio server, in rotation.

    .venv/bin/python tests/bench/go_floor.py [--runs N] [LABEL=BINARY ...]

Starts the GOPROXY tree of gobench.py (60 module versions, 180 files a run), one binaryrepo per
LABEL=BINARY (default: `binaryrepo=$BINARYREPO_BIN`; plugins from $BINARYREPO_PLUGINS), nginx serving
the tree from disk with buffered access lines (as in G1) and `static_floor` (benches/examples: the same
files from memory over hyper with binaryrepo's connection settings and no request path of its own),
warms each twice, then runs a warm `go mod download` (module cache on a tmpfs) N times against each,
the order rotating and reversing from run to run. Prints per server the median wall time with its
interquartile range and the server's CPU per request (user + system of all its threads and workers,
from /proc), and per server against nginx the ratio of medians and the median of the per-run ratios
with its 95 % confidence interval (gobench.median_ci).

What it tells: how far binaryrepo is from the runtime and HTTP stack it is built on (the floor), and
the floor from nginx, in one sitting; the wall-time ratios move by about 1 % between sittings, so
compare builds in the same one.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers  # noqa: E402  (puts tests/e2e on sys.path)
import gobench  # noqa: E402
from harness.binaryrepo import BinaryRepo  # noqa: E402
from harness.goproxy import GoProxy, clean, go, go_env  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def floor_binary() -> Path:
    subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "binaryrepo-benches", "--example", "static_floor"],
                   cwd=ROOT, check=True)
    return ROOT / "target" / "release" / "examples" / "static_floor"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """user + system CPU of a process and its children (nginx's workers)"""
    pids = [pid] + [int(x) for x in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()]
    ticks = 0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=101)
    ap.add_argument("builds", nargs="*", help="LABEL=BINARY (default binaryrepo=$BINARYREPO_BIN)")
    args = ap.parse_args()
    builds = [b.split("=", 1) for b in args.builds] or [["binaryrepo", os.environ["BINARYREPO_BIN"]]]

    work = Path(f"/tmp/binaryrepo-go-floor-{os.getpid()}")
    clean(work)
    work.mkdir(parents=True)
    tree = work / "tree"
    names = gobench.module_set(tree)
    home = gobench.client_home(work)
    up = GoProxy(tree, zip_delay=0.0).start()
    nginx = peers.NginxStatic(work, "nginx-static", tree, log_flush="50ms").start()
    servers, targets, pids = [], {}, {}
    floor = None
    try:
        repos = [{"name": "go-remote", "type": "remote", "format": "go", "url": up.url, "tag_check_seconds": 3600}]
        saved = os.environ.get("BINARYREPO_BIN")
        for label, binary in builds:
            os.environ["BINARYREPO_BIN"] = binary
            br = BinaryRepo(work, f"br-{label}", repositories=repos).start()
            servers.append(br)
            targets[label], pids[label] = f"{br.url}/go/go-remote", br.pid
        if saved is not None:
            os.environ["BINARYREPO_BIN"] = saved
        targets["nginx"], pids["nginx"] = nginx.url, nginx.pid()
        port = free_port()
        floor = subprocess.Popen([str(floor_binary()), str(tree), f"127.0.0.1:{port}"])
        time.sleep(0.5)
        targets["floor"], pids["floor"] = f"http://127.0.0.1:{port}", floor.pid

        for _ in range(2):
            for url in targets.values():
                gobench.download(home, url, names)
        order = list(targets)
        wall = {p: [] for p in targets}
        cpu = dict.fromkeys(targets, 0.0)
        for i in range(args.runs):
            k = i % len(order)
            turn = order[k:] + order[:k]
            for p in (turn if i % 2 == 0 else turn[::-1]):
                c0 = cpu_seconds(pids[p])
                wall[p].append(gobench.download(home, targets[p], names))
                cpu[p] += cpu_seconds(pids[p]) - c0
        per_run = len(gobench.files(names))
        for p in targets:
            q = statistics.quantiles(wall[p], n=4)
            print(f"{p:>16}: median {statistics.median(wall[p]) * 1000:6.1f} ms (IQR {q[0] * 1000:.1f}–{q[2] * 1000:.1f}), "
                  f"server CPU {cpu[p] * 1e6 / (per_run * args.runs):5.1f} µs per request")
        for p in targets:
            if p == "nginx":
                continue
            pairs = [a / b for a, b in zip(wall[p], wall["nginx"])]
            lo, hi = gobench.median_ci(pairs)
            print(f"{p:>16} / nginx: medians {statistics.median(wall[p]) / statistics.median(wall['nginx']):.3f}×, "
                  f"runs {statistics.median(pairs):.3f}× (95 % CI {lo:.3f}–{hi:.3f}×)")
    finally:
        for br in servers:
            br.stop()
        if floor is not None:
            floor.kill()
        nginx.stop()
        up.stop()
        clean(home)
        clean(work)


if __name__ == "__main__":
    main()
