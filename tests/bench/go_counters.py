#!/usr/bin/env python3
"""Kernel counters per request of servers answering warm `go mod download` runs, side by side.

    .venv/bin/python tests/bench/go_counters.py [--runs N] [--record] LABEL=BINARY [LABEL=BINARY ...]

Starts the GOPROXY tree of gobench.py (60 module versions, 180 files a run), one binaryrepo per
LABEL=BINARY (each with the plugins next to its binary, or $BINARYREPO_PLUGIN_DIR) and nginx serving the
tree from disk, warms them all (two runs each), then runs `go mod download` N times against each in
alternating order (A B nginx, nginx B A, ...). Around every run it attaches `perf stat` to the server's
process (nginx: master and workers) and prints the medians per request of task-clock (CPU time),
context switches, CPU migrations and page faults (instructions and cycles too where the machine has
hardware counters). Meant for comparing two builds in one sitting: CPU per request moves far less
with the machine's load than wall time does. `--record`: also `perf record -g` every server over all
its runs into <work>/LABEL.data.
"""
from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers  # noqa: E402,F401  (puts tests/e2e on sys.path)
import gobench  # noqa: E402
from harness.binaryrepo import BinaryRepo  # noqa: E402
from harness.goproxy import GoProxy, clean  # noqa: E402

EVENTS = ["task-clock", "context-switches", "cpu-migrations", "page-faults", "instructions", "cycles"]


def children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                out.append(int(d))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("servers", nargs="+", help="LABEL=path/to/binaryrepo")
    ap.add_argument("--runs", type=int, default=12)
    ap.add_argument("--record", action="store_true")
    ap.add_argument("--work", type=Path, default=Path("/tmp/go-counters"))
    args = ap.parse_args()
    work = args.work
    clean(work)
    work.mkdir(parents=True)
    tree = work / "tree"
    names = gobench.module_set(tree)
    up = GoProxy(tree, zip_delay=0.0).start()
    nginx = peers.NginxStatic(work, "nginx-static", tree, log_flush="50ms").start()
    servers: dict[str, tuple[str, list[int], BinaryRepo | None]] = {}
    try:
        plugin_dir = os.environ.get("BINARYREPO_PLUGIN_DIR")
        for spec in args.servers:
            label, binary = spec.split("=", 1)
            os.environ["BINARYREPO_BIN"] = binary
            os.environ["BINARYREPO_PLUGIN_DIR"] = plugin_dir or str(Path(binary).parent / "plugins")
            repos = [{"name": "go-remote", "type": "remote", "format": "go", "url": up.url, "tag_check_seconds": 3600}]
            br = BinaryRepo(work, f"br-{label}", repositories=repos).start()
            servers[label] = (f"{br.url}/go/go-remote", [br.pid], br)
        servers["nginx"] = (nginx.url, [nginx.pid(), *children(nginx.pid())], None)
        order = list(servers)
        for _ in range(2):
            for p in order:
                gobench.download(work / "home", servers[p][0], names)
        recorders = [subprocess.Popen(["perf", "record", "-q", "-F", "4999", "-g", "-o", str(work / f"{p}.data"),
                                       "-p", ",".join(map(str, servers[p][1]))]) for p in order] if args.record else []
        counts: dict[str, dict[str, list[float]]] = {p: {} for p in order}
        walls: dict[str, list[float]] = {p: [] for p in order}
        loads = [os.getloadavg()[0]]
        for i in range(args.runs):
            for p in order if i % 2 == 0 else order[::-1]:
                url, pids, _ = servers[p]
                out = work / f"stat-{p}.csv"
                perf = subprocess.Popen(["perf", "stat", "-x", ",", "-e", ",".join(EVENTS), "-p", ",".join(map(str, pids)),
                                         "-o", str(out)])
                time.sleep(0.3)  # perf attached
                walls[p].append(gobench.download(work / "home", url, names))
                perf.send_signal(signal.SIGINT)
                perf.wait()
                for line in out.read_text().splitlines():
                    f = line.split(",")
                    if len(f) > 3 and not line.startswith("#"):
                        try:
                            counts[p].setdefault(f[2], []).append(float(f[0]))
                        except ValueError:  # <not supported>
                            pass
        loads.append(os.getloadavg()[0])
        for r in recorders:
            r.send_signal(signal.SIGINT)
        for r in recorders:
            r.wait()
        per_run = 3 * len(names)
        print(f"{args.runs} warm `go mod download` runs per server, {per_run} requests a run; "
              f"load average (1 min) {loads[0]:.1f} at the start, {loads[1]:.1f} at the end")
        print("| server | wall time, median | " + " | ".join(f"{e} per request" for e in EVENTS) + " |")
        print("|---|---|" + "---|" * len(EVENTS))
        for p in order:
            cells = []
            for e in EVENTS:
                v = counts[p].get(e)
                if not v:
                    cells.append("n/a")
                    continue
                per = statistics.median(x / per_run for x in v)
                # perf reports task-clock in milliseconds
                cells.append(f"{per * 1000:.1f} µs" if e == "task-clock" else f"{per:,.2f}")
            print(f"| {p} | {statistics.median(walls[p]) * 1000:.0f} ms | " + " | ".join(cells) + " |")
    finally:
        for _, _, br in servers.values():
            if br is not None:
                br.stop()
        nginx.stop()
        up.stop()


if __name__ == "__main__":
    main()
