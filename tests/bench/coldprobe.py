"""Where a cold GET's CPU goes in binaryrepo: N cold GETs of the bench image's 500 MiB layer, each through
a freshly emptied binaryrepo, with the CPU time of every binaryrepo thread (from /proc/PID/task/*/stat), of
the upstream and of curl over curl's window; `--perf` records the last GET with `perf record -g` (then
`perf report -i /tmp/coldprobe.perf --children --sort sym --no-call-graph`). Session 6 used it to find
the page faults under `recv`, the staging-file read-back and ext4's block reservation (README, "cold GET").

    .venv/bin/python tests/bench/coldprobe.py [--runs 5] [--perf]

Environment reaches binaryrepo (e.g. `GLIBC_TUNABLES=glibc.malloc.trim_threshold=…`), so variants can be
compared without rebuilding. The VM's speed moves within minutes: compare CPU per GET and perf shares, not
wall times, between variants, and alternate them.
"""
from __future__ import annotations

import argparse
import collections
import resource
import shutil
import signal
import subprocess
import time
from pathlib import Path

import peers
from bench import curl_get, proc_cpu, tree_cpu_seconds


def thread_cpu(pid: int) -> collections.Counter:
    """CPU seconds (user + system) so far of each thread of `pid`, by "name/tid"."""
    out = collections.Counter()
    for t in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (t / "comm").read_text().strip()
        except OSError:
            continue
        out[f"{name}/{t.name}"] += proc_cpu(t / "stat")[1]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--perf", action="store_true", help="perf record -g the last GET into /tmp/coldprobe.perf")
    ap.add_argument("--workdir", default="/tmp/binaryrepo-coldprobe")
    args = ap.parse_args()
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    image = peers.ensure_image()
    upstream = peers.Registry(work, "upstream", storage_template=image.seed_storage).start()
    br = peers.Binaryrepo(work, upstream.url).start()
    big, size = image.big_blob()
    direct_url = f"{upstream.url}/v2/{peers.IMAGE_REPO}/blobs/{big}"
    total, times, threads = collections.Counter(), [], collections.Counter()
    try:
        curl_get(direct_url, size)  # the upstream's file into the page cache
        for i in range(args.runs):
            br.fresh()
            pid = br.pid()
            perf = None
            if args.perf and i == args.runs - 1:
                perf = subprocess.Popen(["perf", "record", "-F", "2000", "-g", "-p", str(pid), "-o", "/tmp/coldprobe.perf"],
                                        stderr=subprocess.DEVNULL)
                time.sleep(1)
            t0, u0 = thread_cpu(pid), tree_cpu_seconds(upstream.proc.pid)
            ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            times.append(curl_get(f"{br.url}/v2/{peers.BR_REPO}/{peers.IMAGE_REPO}/blobs/{big}", size))
            ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t1 = thread_cpu(pid)
            if perf:
                perf.send_signal(signal.SIGINT)
                perf.wait()
            total["upstream"] += tree_cpu_seconds(upstream.proc.pid) - u0
            total["curl"] += (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
            for k, v in t1.items():
                used = v - t0.get(k, 0)
                total["server"] += used
                threads[k.split("/")[0]] += used
            br.wait_fill([big])
        direct = [curl_get(direct_url, size) for _ in range(args.runs)]
    finally:
        br.stop()
        upstream.stop()
        shutil.rmtree(work, ignore_errors=True)
    n = args.runs
    print(f"cold GET {sum(times) / n * 1000:.0f} ms ({', '.join(f'{t * 1000:.0f}' for t in times)}); "
          f"direct {sum(direct) / n * 1000:.0f} ms")
    print("CPU per GET: " + ", ".join(f"{k} {total[k] / n * 1000:.0f} ms" for k in ("server", "upstream", "curl")))
    print("server threads: " + ", ".join(f"{k} {v / n * 1000:.0f} ms" for k, v in threads.most_common() if v > 0))
    if args.perf:
        print("perf data: /tmp/coldprobe.perf")


if __name__ == "__main__":
    main()
