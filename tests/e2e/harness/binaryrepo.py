"""Start/stop the binaryrepo server under test, and talk to its management API.

The binary is $BINARYREPO_BIN or <repo>/target/release/binaryrepo; plugins $BINARYREPO_PLUGIN_DIR (or
$BINARYREPO_PLUGINS) or the `plugins/` directory next to the binary. Each instance gets a free port, its own data dir and config file
(TOML, see the CLI section of the README) and logs to <dir>/binaryrepo.log.
"""
from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import time
from pathlib import Path

from .util import Fatal, Resp, free_port, proc_status, request, run, stop_process, tail, trust_ca, wait_until

REPO_ROOT = Path(__file__).resolve().parents[3]


def binary_path() -> Path:
    return Path(os.environ.get("BINARYREPO_BIN", REPO_ROOT / "target" / "release" / "binaryrepo"))


def compiled_plugin_dir() -> Path:
    """One compiled-plugin cache for every server the tests start: the first start compiles each plugin
    (seconds of CPU on two cores), the hundreds after it load the verified artifact. It is keyed by the
    plugin's bytes and the engine's settings, so a rebuilt plugin or host compiles again by itself."""
    return Path(os.environ.get("BINARYREPO_E2E_CACHE", "/tmp/binaryrepo-e2e-cache")) / "compiled-plugins"


def plugin_dir() -> Path:
    d = os.environ.get("BINARYREPO_PLUGIN_DIR") or os.environ.get("BINARYREPO_PLUGINS")
    return Path(d) if d else binary_path().parent / "plugins"


def _toml(v) -> str:
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml(x)}" for k, x in v.items()) + " }"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'


# The first admin's password in every test instance (BINARYREPO_ADMIN_PASSWORD); `api()` signs in with it.
ADMIN = ("admin", "e2e-admin-password")
# What `open=True` grants on every repository that names no access of its own: the tests of caching,
# pushing and routing run as anonymous clients, an operator's explicit choice (a grant to anonymous).
OPEN_ACCESS = [{"who": "anonymous", "allow": ["read", "write", "delete"]}]


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class BinaryRepo:
    def __init__(self, workdir: Path, name: str = "binaryrepo", port: int | None = None, config: dict | None = None,
                 repositories: list[dict] | None = None, tls=None, ip: str = "127.0.0.1", open: bool = True):
        """tls: a harness.tlscerts.ServerCert: the server gets its files as tls_cert/tls_key and the harness
        trusts its CA for https://HOST. ip: the listen address (e.g. "::1").
        open: repositories (configured here or created through `api()`) that name no `access` let anonymous
        clients read, write and delete, and /metrics is open; open=False keeps the server's secure defaults."""
        self.open = open
        self.dir = Path(workdir) / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.dir / "data"
        self.conf = self.dir / "binaryrepo.toml"
        self.logfile = self.dir / "binaryrepo.log"
        self.port = port or free_port()
        self.config = {"upstream_connect_timeout_ms": 2000, "upstream_down_seconds": 30,
                       "compiled_plugin_dir": str(compiled_plugin_dir())}
        if open:
            self.config["metrics_anonymous"] = True
        self.config.update(config or {})
        self.repositories = repositories or []
        self.ip = ip
        self.tls = tls
        if tls is not None:
            self.config.update(tls_cert=str(tls.cert), tls_key=str(tls.key))
            trust_ca(self.host, tls.ca)
        self.proc: subprocess.Popen | None = None

    # --- lifecycle -------------------------------------------------------------------------------
    @property
    def host(self) -> str:
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _write_config(self):
        lines = [f"listen = {_toml(self.host)}", f"data_dir = {_toml(str(self.data_dir))}",
                 f"plugin_dir = {_toml(self.config.get('plugin_dir', str(plugin_dir())))}"]
        lines += [f"{k} = {_toml(v)}" for k, v in self.config.items() if k != "plugin_dir"]
        if not self.repositories:
            # no seeds at all: without this key the server seeds its embedded defaults (a Docker Hub
            # remote as the default repository), and a test must never reach for the internet
            lines.append("repositories = []")
        for r in self.repositories:
            if self.open and "access" not in r:
                r = {**r, "access": OPEN_ACCESS}
            lines.append("")
            lines.append("[[repositories]]")
            lines += [f"{k} = {_toml(v)}" for k, v in r.items()]
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 30):
        exe = binary_path()
        if not exe.exists():
            raise RuntimeError(f"binaryrepo binary not found at {exe} (run `make build`, or set BINARYREPO_BIN)")
        self._write_config()
        logf = open(self.logfile, "ab")
        logf.write(f"=== start {exe} serve --config {self.conf}\n".encode())
        logf.flush()
        env = dict(os.environ)
        env.setdefault("RUST_BACKTRACE", "1")
        env["NO_COLOR"] = "1"  # plain log lines
        env["BINARYREPO_ADMIN_PASSWORD"] = ADMIN[1]
        for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
            env.pop(k, None)
        self.proc = subprocess.Popen([str(exe), "serve", "--config", str(self.conf)], stdout=logf,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        logf.close()

        def healthy():
            if self.proc.poll() is not None:
                raise Fatal(f"binaryrepo exited with {self.proc.returncode}:\n{tail(self.logfile)}")
            r = request("GET", self.url + "/api/health", timeout=2)
            return r.status == 200
        try:
            wait_until(healthy, timeout=timeout, what=f"binaryrepo /api/health on {self.host}")
        except TimeoutError as e:
            raise RuntimeError(f"{e}\n{tail(self.logfile)}") from None
        return self

    def stop(self):
        stop_process(self.proc)
        self.proc = None

    def kill(self):
        """SIGKILL: no chance to clean up"""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def restart(self):
        self.stop()
        return self.start()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 30) -> str:
        return tail(self.logfile, n)

    def memory(self) -> dict:
        return proc_status(self.pid)

    # --- management API --------------------------------------------------------------------------
    def api(self, method: str, path: str, json_body=None, body=None, headers=None, auth=ADMIN) -> Resp:
        """The management API, as the admin unless `auth` says otherwise ((user, password), or None for an
        anonymous call; an Authorization in `headers` wins). With `open`, a repository created or replaced
        without `access` gets OPEN_ACCESS."""
        hdrs = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
        if auth is not None and not any(k.lower() == "authorization" for k, _ in hdrs):
            hdrs.append(("Authorization", basic(*auth)))
        if (self.open and isinstance(json_body, dict) and "access" not in json_body and method in ("POST", "PUT")
                and path.rstrip("/").split("/")[:3] in (["", "api", "repositories"], ["", "api", "repository"])):
            json_body = {**json_body, "access": OPEN_ACCESS}
        return request(method, self.url + path, json_body=json_body, body=body, headers=hdrs, timeout=30)

    def repos(self) -> list:
        r = self.api("GET", "/api/repositories")
        assert r.status == 200, f"GET /api/repositories -> {r!r}"
        return r.json()

    def create(self, **obj) -> dict:
        r = self.api("POST", "/api/repositories", json_body=obj)
        assert r.status == 201, f"POST /api/repositories {obj} -> {r!r}\n{self.log_tail(10)}"
        return r.json()

    def create_remote(self, name: str, url: str, **extra) -> dict:
        return self.create(name=name, type="remote", format="docker", url=url, **extra)

    def create_local(self, name: str = "docker-local", **extra) -> dict:
        return self.create(name=name, type="local", format="docker", **extra)

    def create_virtual(self, name: str, members: list, **extra) -> dict:
        return self.create(name=name, type="virtual", format="docker", members=members, **extra)

    def gc(self, repo: str = "docker-local", grace_seconds: int | None = 0, timeout: float = 300) -> dict:
        """POST /api/repositories/<repo>/gc?wait=true[&grace_seconds=N]: a background run, waited for ->
        {"state": "finished", "removed", "removed_bytes", "kept", "evicted", ...}"""
        q = "?wait=true" + ("" if grace_seconds is None else f"&grace_seconds={grace_seconds}")
        r = request("POST", f"{self.url}/api/repositories/{repo}/gc{q}", timeout=timeout,
                    headers={"Authorization": basic(*ADMIN)})
        assert r.status == 200, f"POST /api/repositories/{repo}/gc{q} -> {r!r}\n{self.log_tail(10)}"
        return r.json()

    def gc_offline(self, grace_seconds: int = 0, timeout: float = 300) -> subprocess.CompletedProcess:
        """`binaryrepo gc --data-dir DIR --grace-seconds N` (the server must be stopped)"""
        cmd = [str(binary_path()), "gc", "--data-dir", str(self.data_dir), "--grace-seconds", str(grace_seconds)]
        if os.environ.get("BINARYREPO_PLUGIN_DIR") or os.environ.get("BINARYREPO_PLUGINS"):
            cmd += ["--plugin-dir", str(plugin_dir())]  # otherwise: plugins/ next to the binary, its default
        return run(cmd, timeout=timeout, env={"NO_COLOR": "1"})

    def metrics(self) -> "Metrics":
        """GET /metrics, parsed"""
        r = request("GET", self.url + "/metrics", timeout=30)
        assert r.status == 200, f"GET /metrics -> {r!r}"
        return Metrics(r.body.decode())

    # --- data dir and request log ----------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        """<data_dir>/blobs/<algorithm>/<first two hex>/<hex>"""
        alg, hexd = digest.split(":", 1)
        return self.data_dir / "blobs" / alg / hexd[:2] / hexd

    def uploads_dir(self, repo: str | None = None) -> Path:
        d = self.data_dir / "uploads"
        return d / repo if repo else d

    def upload_files(self) -> list:
        """every file under <data_dir>/uploads/ (open upload sessions)"""
        d = self.uploads_dir()
        return sorted(p for p in d.rglob("*") if p.is_file()) if d.exists() else []

    def log_mark(self) -> int:
        try:
            return self.logfile.stat().st_size
        except OSError:
            return 0

    def _log_since(self, since: int) -> str:
        """the log from a log_mark() on, once the log writer has caught up (it writes access lines in batches
        up to 50 ms apart): read when the file has stopped growing for a moment, or after 2 s"""
        size, deadline = -1, time.monotonic() + 2
        while time.monotonic() < deadline:
            now = self.log_mark()
            if now == size:
                break
            size = now
            time.sleep(0.08)
        with open(self.logfile, "rb") as f:
            f.seek(since)
            return f.read().decode("utf-8", "replace")

    def served(self, since: int = 0) -> list:
        """the requests served since a log_mark(): [(method, path, status)], from the one info line per request
        (`request{method=PUT path=/v2/... repo=...}: ... served status=201 ms=3`)"""
        text = self._log_since(since)
        out = []
        for line in text.splitlines():
            m = SERVED.search(line)
            if m:
                out.append((m.group("method"), m.group("path"), int(m.group("status"))))
        return out

    def fills_ended(self, since: int = 0) -> list:
        """the cache fills that ended since a log_mark(): [(digest, "committed" | "failed")]. A streamed fill
        completes its clients before it is verified, so a client's complete body does not mean the fill ended."""
        text = self._log_since(since)
        return [(m.group("digest"), m.group("outcome")) for m in FILL_ENDED.finditer(text)]

    def wait_fill(self, digest: str, since: int = 0, timeout: float = 60) -> str:
        """waits for the fill of `digest` begun after `since` to end; returns "committed" or "failed"."""
        from .util import wait_until
        def ended():
            return next((o for d, o in self.fills_ended(since) if d == digest), None)
        return wait_until(ended, timeout=timeout, interval=0.05, what=f"the fill of {digest} to end")

    # --- registry helpers ------------------------------------------------------------------------
    def prefix(self, repo: str | None = None) -> str:
        """image reference prefix for the path method: 127.0.0.1:PORT/<repo>"""
        return f"{self.host}/{repo}" if repo else self.host

    def v2(self, repo: str | None, path: str) -> str:
        """URL of a registry path through the path method: /v2/<repo>/<path>"""
        return f"{self.url}/v2/{repo}/{path}" if repo else f"{self.url}/v2/{path}"


class Metrics:
    """The samples of a Prometheus/OpenMetrics text exposition: value(name, **labels) sums the series of
    `name` whose labels include the given ones (0 when there is none)."""

    SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
    LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

    def __init__(self, text: str):
        self.text = text
        self.samples = []
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            m = self.SAMPLE.match(line)
            assert m, f"not a sample line: {line!r}"
            labels = dict(self.LABEL.findall(m.group(2) or ""))
            self.samples.append((m.group(1), labels, float(m.group(3))))

    def value(self, name: str, **labels) -> float:
        return sum(v for n, ls, v in self.samples
                   if n == name and all(ls.get(k) == str(want) for k, want in labels.items()))

    def series(self, name: str) -> list:
        return [(ls, v) for n, ls, v in self.samples if n == name]


SERVED = re.compile(r"method=(?P<method>[A-Z]+) path=(?P<path>\S+?)[ }].*?\bserved\b.*?status=(?P<status>\d{3})")

FILL_ENDED = re.compile(r"fill\{digest=(?P<digest>\S+?) .*?\bfill (?P<outcome>committed|failed)")

DIGEST_NAME = re.compile(r"^(?:sha256[:_-])?([0-9a-f]{64})$")


def blob_files(data_dir: Path):
    """Files under a data dir named for a digest: "<64 hex>", "sha256:<hex>", "sha256-<hex>", "sha256_<hex>",
    or ".../<64 hex>/data" (distribution style). Staged files (other names) are not blobs.
    Yields (path, "sha256:<hex>")."""
    for root, _dirs, files in os.walk(data_dir):
        for name in files:
            m = DIGEST_NAME.match(name)
            if not m and name == "data":
                m = DIGEST_NAME.match(os.path.basename(root))
            if m:
                yield Path(root) / name, "sha256:" + m.group(1)
