"""Helm workload of the bench (`--only helm`, rows 8a–8c): binaryrepo's Helm remote repository against nginx
serving the same files from disk.

The upstream chart repository is a static nginx on 127.0.0.1 serving a generated index.yaml of at least
25 MB (relative chart URLs, so binaryrepo serves it byte for byte and both peers send the same bytes) and
a few charts of ~64 KiB. The nginx peer is a second static nginx on the same directory. binaryrepo has a
remote repository `helm` (format helm, tag_check_seconds 300) for the upstream, created through the API.

  8a  warm index.yaml GET, wrk: requests/s and MB/s, binaryrepo vs nginx
  8b  warm chart GETs (wrk, round robin over the charts): requests/s and MB/s
  8c  binaryrepo's RSS growth over idle while N clients fetch the index cold (fresh data dir each run)

bench.py registers the rows and calls `run(bench, helpers)`; `helpers` is bench.py's own module (Series,
verdict, curl_get, tree_cpu_seconds, ...), passed in because bench.py runs as __main__.
"""
from __future__ import annotations

import base64
import hashlib
import os
import random
import re
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import peers
from harness.chartrepo import entry_yaml, make_chart  # noqa: E402  (peers put tests/e2e on sys.path)
from harness.util import proc_status, request  # noqa: E402

WORKLOAD = "helm"


def rows(args) -> list[tuple[str, str, str, str]]:
    """(key, workload, metric, target) of the rows this workload fills"""
    return [
        ("8a", "warm Helm index.yaml GET, 25 MB (wrk -t2 -c16); nginx column: static files", "requests/s; MB/s",
         "≥ 1.0× nginx"),
        ("8b", "warm Helm chart GETs, 5 charts of ~64 KiB (wrk -t2 -c16); nginx column: static files",
         "requests/s; MB/s", "≥ 1.0× nginx"),
        ("8c", "binaryrepo RSS, Helm", f"peak above idle, {args.clients} clients GET the 25 MB index cold", "≤ 64 MiB"),
    ]


ROW_KEYS = ["8a", "8b", "8c"]
REPO = "helm"  # the remote repository created in binaryrepo
INDEX_MIN_BYTES = 25 * 1000 * 1000
CHARTS = 5
CHART_PAD = 64 * 1024  # incompressible bytes in each chart: charts of real repositories are tens of KiB
# The default configuration: a call earns CPU for the bytes it rewrites (docs/helm.md, "Large indexes").
BR_CONFIG: dict = {}

HOW = """8. Helm (`--only helm`): a static nginx upstream serves a generated index.yaml (≥ 25 MB, relative chart URLs,
   so binaryrepo serves it byte for byte) and 5 charts of ~64 KiB; the nginx peer is a second static nginx
   (`sendfile on`, 2 workers) on the same files. binaryrepo: remote repository `helm` (tag_check_seconds 300,
   default settings), `/repo/helm/…`. 8a/8b: `wrk -t2 -c16 -d<wrk-seconds>s --timeout 60s` on a warm cache (index
   and charts fetched twice first, bytes checked against the files), the peers alternating over max(3, --runs) rounds;
   8b rotates over the 5 charts with a wrk Lua script; MB/s = requests/s × response size. 8c: a fresh data
   dir (compiled plugins kept), restart, repository re-created, VmRSS 2 s later (idle), then N concurrent `curl` GETs of the index;
   the peak is VmHWM if it rose during the run, else the highest VmRSS polled every 20 ms; the worst of
   the runs counts.
"""


# --- peers ------------------------------------------------------------------------------------------------

def NginxStatic(work: Path, name: str, root: Path) -> peers.NginxStatic:
    """a static nginx on the chart directory (the upstream, or the static peer)"""
    return peers.NginxStatic(work, name, root, types={"yaml": "application/x-yaml", "tgz": "application/gzip"})


class HelmBinaryrepo(peers.Binaryrepo):
    """the bench's binaryrepo peer, with a Helm remote repository instead of the Docker one"""

    def __init__(self, workdir: Path, upstream_url: str, resnapshot=None):
        super().__init__(workdir, upstream_url, resnapshot=resnapshot)
        self.br.config.update(BR_CONFIG)

    def start(self, create: bool = True):
        self._start()
        if create:
            self.br.create(name=REPO, type="remote", format="helm", url=self.upstream_url,
                           tag_check_seconds=self.tag_check_seconds)
        return self

    def fresh(self):
        """an empty cache (new data dir, restart, repository re-created), but the compiled plugins kept, as on any
        server after its first start: compiling them at start-up would otherwise be in the idle RSS"""
        self.br.stop()
        keep = self.data_dir / "cache" / "plugins"
        aside = self.data_dir.parent / "compiled-plugins"
        shutil.rmtree(aside, ignore_errors=True)
        if keep.is_dir():
            keep.rename(aside)
        shutil.rmtree(self.data_dir, ignore_errors=True)
        if aside.is_dir():
            keep.parent.mkdir(parents=True)
            aside.rename(keep)
        return self.start()

    def plans(self) -> dict:
        """binaryrepo_plans_total of the repository, by source (plugin: the plugin was called; reused: a plan
        the plugin offered for reuse answered the request without a call)"""
        m = self.br.metrics()
        return {src: m.value("binaryrepo_plans_total", repository=REPO, source=src) for src in ("plugin", "reused")}


# --- the files --------------------------------------------------------------------------------------------


def make_files(root: Path) -> tuple[int, dict]:
    """index.yaml (≥ INDEX_MIN_BYTES) and CHARTS charts under root/charts; -> (index size, {path: bytes})"""
    rnd = random.Random(8)
    charts = {}
    entries = []
    for i in range(CHARTS):
        name, version = f"bench{i}", "1.0.0"
        pad = base64.b64encode(rnd.randbytes(CHART_PAD)).decode()  # make_chart takes text; base64 hardly compresses
        data = make_chart(name, version, greeting=f"bench {i}", extra={f"{name}/files/blob.b64": pad})
        rel = f"charts/{name}-{version}.tgz"
        charts["/" + rel] = data
        entries.append(f"  {name}:\n" + entry_yaml(name, version, rel, hashlib.sha256(data).hexdigest()))
    size = sum(len(e) for e in entries)
    i = 0
    while size < INDEX_MIN_BYTES:  # filler: many charts with many versions, as big public repositories have
        name = f"chart{i:05d}"
        part = [f"  {name}:\n"]
        for v in range(40):
            digest = hashlib.sha256(f"{name}-{v}".encode()).hexdigest()
            part.append(entry_yaml(name, f"1.{v}.0", f"charts/{name}-1.{v}.0.tgz", digest))
        text = "".join(part)
        entries.append(text)
        size += len(text)
        i += 1
    index = ("apiVersion: v1\nentries:\n" + "".join(entries) + "generated: \"2024-01-01T00:00:00Z\"\n").encode()
    (root / "charts").mkdir(parents=True, exist_ok=True)
    (root / "index.yaml").write_bytes(index)
    for rel, data in charts.items():
        (root / rel.lstrip("/")).write_bytes(data)
    return len(index), charts


# --- wrk --------------------------------------------------------------------------------------------------


def wrk(url: str, seconds: int, script: Path | None = None) -> dict:
    cmd = ["wrk", "-t2", "-c16", f"-d{seconds}s", "--timeout", "60s"]
    if script is not None:
        cmd += ["-s", str(script)]
    p = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=seconds + 120)
    out = p.stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if p.returncode != 0 or not m:
        raise RuntimeError(f"wrk {url}: rc={p.returncode}\n{out}\n{p.stderr}")
    lat = re.search(r"Latency\s+(\S+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errs = re.search(r"Socket errors:\s+(.*)", out)
    reqs = re.search(r"(\d+) requests in", out)
    return {"rps": float(m.group(1)), "latency": lat.group(1) if lat else "?",
            "requests": int(reqs.group(1)) if reqs else None, "non2xx": int(non2xx.group(1)) if non2xx else 0,
            "errors": errs.group(1).strip() if errs else ""}


def round_robin_script(path: Path, paths: list[str]) -> Path:
    quoted = ", ".join(f'"{p}"' for p in paths)
    path.write_text(f"local paths = {{{quoted}}}\nlocal i = 0\n"
                    "request = function()\n  i = i % #paths + 1\n  return wrk.format(\"GET\", paths[i])\nend\n")
    return path


# --- the workload -----------------------------------------------------------------------------------------


class HelmRun:
    def __init__(self, bench, h):
        self.b, self.h = bench, h
        self.work = Path(bench.work) / "helm"
        self.upstream = self.nginx = self.br = None

    def setup(self):
        b, h = self.b, self.h
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        if not b.binary_info:  # the Docker workloads did not snapshot the binary: --only helm
            b.original_binary = (peers.binary_path(), peers.plugin_dir())
            b.snapshot()
        self.root = self.work / "files"
        t = time.monotonic()
        self.index_size, self.charts = make_files(self.root)
        self.index = (self.root / "index.yaml").read_bytes()
        h.log(f"helm: index.yaml {self.index_size:,} bytes, {len(self.charts)} charts of "
              f"{min(map(len, self.charts.values())):,}–{max(map(len, self.charts.values())):,} bytes "
              f"(generated in {time.monotonic() - t:.1f} s)")
        self.upstream = NginxStatic(self.work, "upstream-nginx", self.root).start()
        self.nginx = NginxStatic(self.work, "nginx-static", self.root).start()
        self.br = HelmBinaryrepo(self.work, self.upstream.url, resnapshot=b.snapshot).start()
        h.log(f"helm: upstream nginx {self.upstream.url}, static nginx {self.nginx.url}, binaryrepo {self.br.url}"
              f"/repo/{REPO}")

    def teardown(self):
        for p in (self.br, self.nginx, self.upstream):
            if p is not None:
                try:
                    p.stop()
                except Exception as e:  # noqa: BLE001
                    self.h.log(f"helm: stopping {p}: {e}")

    def base(self, peer: str) -> str:
        return {"binaryrepo": f"{self.br.url}/repo/{REPO}", "nginx": self.nginx.url}[peer]

    # --- 8c: cold RSS -------------------------------------------------------------------------------------
    def cold_rss(self):
        b, h = self.b, self.h
        row = b.rows["8c"]
        n = b.args.clients
        runs = []
        for _ in range(min(3, b.args.runs)):
            self.br.fresh()
            time.sleep(2)
            pid = self.br.pid()
            idle = proc_status(pid)
            up0 = self.upstream.hits("/index.yaml")
            t0 = time.monotonic()
            with peers.RssPoll(pid, start=idle["VmRSS"]) as polled:
                with ThreadPoolExecutor(n) as ex:
                    times = list(ex.map(lambda _: h.curl_get(self.base("binaryrepo") + "/index.yaml", self.index_size,
                                                             timeout=300), range(n)))
            wall = time.monotonic() - t0
            after = proc_status(pid)
            peak = after["VmHWM"] if after["VmHWM"] > idle["VmHWM"] else polled.max
            up = self.upstream.hits("/index.yaml") - up0
            runs.append({"idle_vmrss_kib": idle["VmRSS"], "idle_vmhwm_kib": idle["VmHWM"], "after_vmhwm_kib": after["VmHWM"],
                         "polled_max_vmrss_kib": polled.max, "peak_kib": peak, "grew_kib": peak - idle["VmRSS"],
                         "wall_s": wall, "per_get_s": times, "upstream_index_gets": up})
            h.log(f"helm cold: {n} GETs of the index in {wall:.2f} s; idle VmRSS {idle['VmRSS'] / 1024:.1f} MiB, peak "
                  f"{peak / 1024:.1f} MiB (+{(peak - idle['VmRSS']) / 1024:.1f}); upstream index GETs {up}")
        worst = max(runs, key=lambda r: r["grew_kib"])
        grew = [r["grew_kib"] / 1024 for r in runs]
        row.values["binaryrepo"] = (f"+{worst['grew_kib'] / 1024:.1f} MiB (idle {worst['idle_vmrss_kib'] / 1024:.1f}, "
                                    f"peak {worst['peak_kib'] / 1024:.1f})")
        ups = [r["upstream_index_gets"] for r in runs]
        row.verdict = h.verdict(worst["grew_kib"] <= 64 * 1024)
        row.raw = {"runs": runs}
        b.notes.append(f"8c: cold runs: {len(runs)}; RSS growth over idle " + ", ".join(f"{g:.1f}" for g in grew)
                       + f" MiB; the {n} concurrent cold GETs of the index took " + ", ".join(f"{r['wall_s']:.2f}" for r in runs)
                       + f" s (start to the last client done, upstream fetch and rewrite included); upstream index "
                       f"GETs per run {ups} (1 expected).")
        if any(u != 1 for u in ups):
            b.errors.append(f"8c: upstream index GETs per cold run {ups}, expected 1 (one shared fetch)")

    # --- 8a/8b: warm ------------------------------------------------------------------------------------------
    def check_warm(self):
        """fill binaryrepo's cache (twice, so the second is a warm hit) and check the bytes both peers send"""
        for p in ("binaryrepo", "nginx"):
            for path, want in [("/index.yaml", self.index)] + list(self.charts.items()):
                for _ in range(2):
                    r = request("GET", self.base(p) + path, timeout=300)
                    assert r.status == 200 and r.body == want, \
                        f"{p} {path}: HTTP {r.status}, {len(r.body)} bytes, expected {len(want)} equal bytes"

    def warm(self):
        b, h = self.b, self.h
        self.check_warm()
        prefix = {"binaryrepo": f"/repo/{REPO}", "nginx": ""}
        script = {p: round_robin_script(self.work / f"charts-{p}.lua", [prefix[p] + path for path in self.charts])
                  for p in prefix}
        chart_size = sum(map(len, self.charts.values())) / len(self.charts)
        names = ["binaryrepo", "nginx"]
        pids = {"binaryrepo": self.br.pid(), "nginx": self.nginx.pid()}
        secs = b.args.wrk_seconds
        res = {w: {p: h.Series() for p in names} for w in ("index", "charts")}
        cpu = {w: {p: [0.0, 0] for p in names} for w in ("index", "charts")}  # CPU seconds, requests
        fails = []
        up0 = {path: self.upstream.hits(path) for path in ["/index.yaml", *self.charts]}
        plans0 = self.br.plans()
        rounds = max(3, b.args.runs)
        for i in range(rounds):
            for p in h.rotate(names, i):
                for w, url, sc in [("index", self.base(p) + "/index.yaml", None),
                                   ("charts", self.base(p) + "/", script[p])]:
                    c0 = h.tree_cpu_seconds(pids[p])
                    r = wrk(url, secs, sc)
                    cpu[w][p][0] += h.tree_cpu_seconds(pids[p]) - c0
                    cpu[w][p][1] += r["requests"] or 0
                    res[w][p].add(r["rps"])
                    if r["non2xx"] or r["errors"]:
                        fails.append(f"{w} {p}: {r['non2xx']} non-2xx, socket errors {r['errors'] or 'none'}")
                    h.log(f"helm warm {w}: {p}: {r['rps']:,.1f} req/s, latency {r['latency']}, {r['requests']} requests")
        plans1 = self.br.plans()
        upstream = sum(self.upstream.hits(path) - n for path, n in up0.items())
        for key, w, size in [("8a", "index", self.index_size), ("8b", "charts", chart_size)]:
            row = b.rows[key]
            for p in names:
                row.values[p] = f"{res[w][p].fmt(1, 'req/s', 1 if w == 'index' else 0)}; " \
                                f"{res[w][p].mean * size / 1e6:,.0f} MB/s"
            r = h.ratio(res[w]["binaryrepo"].mean, res[w]["nginx"].mean)
            row.ratios = [h.fmt_ratio(r, "nginx static")]
            row.verdict = h.verdict(not fails and r >= 1.0)
            row.raw = {p: res[w][p].values for p in names}
            row.raw["response_bytes"] = size
            row.raw["server_cpu_us_per_request"] = {p: cpu[w][p][0] * 1e6 / max(1, cpu[w][p][1]) for p in names}
        per = {w: ", ".join(f"{p} {cpu[w][p][0] * 1e6 / max(1, cpu[w][p][1]):,.1f} µs" for p in names)
               for w in ("index", "charts")}
        plugin_calls = plans1["plugin"] - plans0["plugin"]
        reused = plans1["reused"] - plans0["reused"]
        b.notes.append(f"8a/8b: server CPU (user + system, all threads / workers) per warm request: index {per['index']}; "
                       f"chart {per['charts']}. binaryrepo's plans during the warm runs: {plugin_calls:,.0f} from a "
                       f"plugin call, {reused:,.0f} reused without one (binaryrepo_plans_total); upstream GETs "
                       f"meanwhile {upstream} (0 expected inside the 300 s window).")
        b.rows["8a"].raw["plans"] = {"plugin": plugin_calls, "reused": reused}
        if upstream:
            b.errors.append(f"8a/8b: binaryrepo sent {upstream} GETs upstream during the warm runs")
        for f in fails:
            b.errors.append(f"8a/8b: {f}")


def run(bench, helpers):
    """the `helm` workload: rows 8a–8c"""
    hr = HelmRun(bench, helpers)
    try:
        hr.setup()
        hr.cold_rss()  # ends with a warm cache for the next part
        hr.warm()
    finally:
        hr.teardown()
