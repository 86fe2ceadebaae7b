"""The benchmark's image and peers: the 5 MiB + 100 MiB + 500 MiB test image, CNCF distribution as upstream
and as pull-through proxy, nginx proxy_cache, binaryrepo. Built on the end-to-end harness (tests/e2e/harness):
the same registry, binaryrepo, image-building and client code, nothing copied.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests" / "e2e"))

from harness.binaryrepo import BinaryRepo, binary_path, plugin_dir  # noqa: E402
from harness.images import Image, build_layout, describe, skopeo  # noqa: E402
from harness.registry import Registry  # noqa: E402
from harness.util import Fatal, free_port, proc_status, request, stop_process, tail, wait_until  # noqa: E402

KEY = "bench-v1"
MIB = 1 << 20
IMAGE_REPO, IMAGE_TAG = "library/test", "1"
IMAGE_SIZES = [5 * MIB, 100 * MIB, 500 * MIB]
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
BR_REPO = "bench-remote"  # the remote repository created in binaryrepo (a name with "-": the path method)


def cache_root() -> Path:
    return Path(os.environ.get("BINARYREPO_BENCH_CACHE", "/tmp/binaryrepo-bench-cache")) / KEY


class BenchImage:
    """library/test:1 (OCI manifest, one layer per size of seeded random bytes, gzip level 1) pushed once
    into a seed distribution storage; every upstream starts from a hard-linked clone of it."""

    def __init__(self, root: Path, image: Image):
        self.root = root
        self.image = image
        self.seed_storage = root / "seed-storage"

    @property
    def digest(self) -> str:
        return self.image.digest

    @property
    def manifest(self) -> bytes:
        return self.image.manifest

    @property
    def config(self) -> str:
        return self.image.config

    @property
    def blobs(self) -> dict:
        return self.image.blobs

    @property
    def total_bytes(self) -> int:
        return self.image.total_bytes

    def big_blob(self) -> tuple[str, int]:
        return self.image.largest_layer()


def ensure_image(log=print) -> BenchImage:
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lockf:
        fcntl.flock(lockf, fcntl.LOCK_EX)
        meta = root / "image.json"
        if meta.exists() and (root / "seed-storage").is_dir():
            d = json.loads(meta.read_text())
            d["manifest"] = d["manifest"].encode()
            return BenchImage(root, Image.from_json(d))
        log(f"building the bench image under {root} (once; about a minute) ...")
        for p in ("layout", "seed-storage", "seed"):
            shutil.rmtree(root / p, ignore_errors=True)
        layout = root / "layout"
        build_layout(layout, IMAGE_TAG, "bench-test", IMAGE_SIZES, ["linux/amd64"])
        seed = Registry(root, "seed")
        seed.start()
        try:
            skopeo("copy", "--dest-tls-verify=false", f"oci:{layout}:{IMAGE_TAG}",
                   f"docker://{seed.host}/{IMAGE_REPO}:{IMAGE_TAG}")
            image = describe(seed.url, "test", IMAGE_REPO, IMAGE_TAG, layout)
        finally:
            seed.stop()
        os.replace(seed.storage, root / "seed-storage")
        shutil.rmtree(root / "seed", ignore_errors=True)
        shutil.rmtree(layout, ignore_errors=True)  # the seed storage holds every blob; the layout is not needed
        d = dict(image.__dict__)
        d["manifest"] = image.manifest.decode()
        d["layout"] = None
        (root / "image.json.tmp").write_text(json.dumps(d, indent=1))
        os.replace(root / "image.json.tmp", meta)
        return BenchImage(root, image)


# --- distribution: upstream and pull-through proxy ------------------------------------------------------


def distribution_blob_path(storage: Path, digest: str) -> Path:
    hexd = digest.split(":", 1)[1]
    return Path(storage) / "docker" / "registry" / "v2" / "blobs" / "sha256" / hexd[:2] / hexd / "data"


class Proxy:
    """CNCF distribution as a pull-through proxy of the upstream; `fresh()` wipes its storage and restarts it."""

    def __init__(self, workdir: Path, upstream_url: str):
        self.reg = Registry(workdir, "distribution-proxy", proxy_remote=upstream_url)

    @property
    def port(self):
        return self.reg.port

    @property
    def url(self):
        return self.reg.url

    @property
    def host(self):
        return self.reg.host

    def start(self):
        self.reg.start()
        return self

    def fresh(self):
        self.reg.stop()
        shutil.rmtree(self.reg.storage, ignore_errors=True)
        self.reg.storage.mkdir(parents=True)
        return self.start()

    def stop(self):
        self.reg.stop()

    def has_blob(self, digest: str) -> bool:
        return distribution_blob_path(self.reg.storage, digest).exists()

    def wait_fill(self, digests, timeout: float = 120):
        """distribution fills its cache in the background, seconds after the client got the bytes"""
        for d in digests:
            wait_until(lambda: self.has_blob(d), timeout=timeout, interval=0.1, what=f"distribution proxy fill of {d}")
        time.sleep(0.5)  # the repository link is written just after the blob data

    def pid(self) -> int:
        return self.reg.proc.pid


# --- nginx proxy_cache ---------------------------------------------------------------------------------

NGINX_CONF = """# nginx as a caching reverse proxy in front of the upstream registry (the lab's set-up).
# Workers run as root: the bench's work dir need not be reachable by `nobody`.
user root;
daemon off;
worker_processes 2;
pid {dir}/nginx.pid;
error_log {dir}/logs/error.log notice;
events {{ worker_connections 1024; }}
http {{
  log_format cachelog '$remote_addr - - [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent" cache=$upstream_cache_status rt=$request_time';
  access_log {dir}/logs/access.log cachelog;
  client_body_temp_path {dir}/tmp/body;
  proxy_temp_path {dir}/tmp/proxy;
  fastcgi_temp_path {dir}/tmp/fastcgi;
  uwsgi_temp_path {dir}/tmp/uwsgi;
  scgi_temp_path {dir}/tmp/scgi;
  sendfile on;
  proxy_cache_path {dir}/cache levels=1:2 keys_zone=reg:10m max_size=20g inactive=7d use_temp_path=off;
  upstream registry {{ server {upstream}; keepalive 16; }}
  server {{
    listen 127.0.0.1:{port};
    client_max_body_size 0;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host $http_host;
    proxy_read_timeout 900s;
    # blobs are content-addressed: cache by digest only (shared across repos), one fill at a time
    location ~ "^/v2/.+/blobs/(sha256:[0-9a-f]{{64}})$" {{
      proxy_pass http://registry;
      proxy_cache reg;
      proxy_cache_key $1;
      proxy_cache_valid 200 7d;
      proxy_cache_lock on;
      proxy_cache_lock_timeout 15m;
      proxy_cache_lock_age 15m;
      add_header X-Cache-Status $upstream_cache_status always;
    }}
    # manifests by digest are immutable too; the Accept header decides the representation
    location ~ "^/v2/.+/manifests/sha256:[0-9a-f]{{64}}$" {{
      proxy_pass http://registry;
      proxy_cache reg;
      proxy_cache_key $uri|$http_accept;
      proxy_cache_valid 200 7d;
      add_header X-Cache-Status $upstream_cache_status always;
    }}
    # tags, /v2/ ping, uploads: pass through (no cache)
    location / {{ proxy_pass http://registry; }}
  }}
}}
"""


class RssPoll:
    """`with RssPoll(pid) as polled:` polls the process's VmRSS every 20 ms while the block runs; `polled.max` is the
    highest seen (at least `start`), in KiB."""

    def __init__(self, pid: int, start: int = 0):
        self.pid = pid
        self.max = start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self):
        while not self._stop.wait(0.02):
            try:
                self.max = max(self.max, proc_status(self.pid)["VmRSS"])
            except OSError:
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


class Nginx:
    """An nginx of the bench in its own directory under the work dir: `conf()` is its configuration, `probe` the
    path that answers once it is up. Workers run as root: the bench's work dir need not be reachable by `nobody`."""
    probe = "/"

    def __init__(self, workdir: Path, name: str):
        self.dir = Path(workdir) / name
        self.port = free_port()
        self.conf_path = self.dir / "nginx.conf"
        self.errlog = self.dir / "logs" / "error.log"
        self.proc = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    @property
    def host(self):
        return f"127.0.0.1:{self.port}"

    def conf(self) -> str:
        raise NotImplementedError

    def start(self):
        for d in ("tmp", "logs", "cache"):
            (self.dir / d).mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(self.conf())
        self.proc = subprocess.Popen(["nginx", "-p", str(self.dir), "-c", str(self.conf_path), "-e", str(self.errlog)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)

        def up():
            if self.proc.poll() is not None:
                raise Fatal(f"nginx exited:\n{tail(self.errlog)}")
            return request("GET", self.url + self.probe, timeout=2).status in (200, 403, 404)
        wait_until(up, timeout=15, what=f"nginx ({self.dir.name})")
        return self

    def stop(self):
        stop_process(self.proc, sig=signal.SIGQUIT)
        self.proc = None

    def pid(self) -> int:
        return self.proc.pid


class NginxCache(Nginx):
    """nginx proxy_cache + proxy_cache_lock in front of the upstream; `fresh()` wipes the cache and restarts."""
    probe = "/v2/"

    def __init__(self, workdir: Path, upstream_host: str):
        super().__init__(workdir, "nginx")
        self.upstream_host = upstream_host

    def conf(self) -> str:
        return NGINX_CONF.format(dir=self.dir, port=self.port, upstream=self.upstream_host)

    def fresh(self):
        self.stop()
        shutil.rmtree(self.dir / "cache", ignore_errors=True)
        return self.start()


NGINX_STATIC_CONF = """# nginx serving a directory from disk (an upstream of static files, or the static peer)
user root;
daemon off;
worker_processes 2;
pid {dir}/nginx.pid;
error_log {dir}/logs/error.log notice;
events {{ worker_connections 1024; }}
http {{
  access_log {access_log};
  client_body_temp_path {dir}/tmp/body;
  proxy_temp_path {dir}/tmp/proxy;
  fastcgi_temp_path {dir}/tmp/fastcgi;
  uwsgi_temp_path {dir}/tmp/uwsgi;
  scgi_temp_path {dir}/tmp/scgi;
  sendfile on;
  tcp_nopush on;
  default_type application/octet-stream;
  types {{ {types} }}
  server {{
    listen 127.0.0.1:{port};
    root {root};
  }}
}}
"""


class NginxStatic(Nginx):
    """nginx serving `root` from disk. `types`: file extension -> Content-Type. With `access_log`, `hits(path)`
    counts GETs of a path (nginx writes each line as the request ends). `log_flush` ("50ms"): access lines are
    buffered (64 KiB per worker) and written at most that long after the request, as binaryrepo batches its own;
    `hits` then lags by as much."""

    def __init__(self, workdir: Path, name: str, root: Path, types: dict[str, str] | None = None,
                 access_log: bool = True, log_flush: str | None = None):
        super().__init__(workdir, name)
        self.root = Path(root)
        self.types = types or {}
        self.access_log = access_log
        self.log_flush = log_flush

    def conf(self) -> str:
        types = " ".join(f"{ctype} {ext};" for ext, ctype in self.types.items())
        log = f"{self.dir}/logs/access.log" if self.access_log else "off"
        if self.access_log and self.log_flush:
            log += f" combined buffer=64k flush={self.log_flush}"
        return NGINX_STATIC_CONF.format(dir=self.dir, port=self.port, root=self.root, types=types, access_log=log)

    def hits(self, path: str) -> int:
        try:
            text = (self.dir / "logs" / "access.log").read_text()
        except OSError:
            return 0
        return len(re.findall(rf'"GET {re.escape(path)} HTTP', text))


# --- binaryrepo ----------------------------------------------------------------------------------------


def snapshot_binary(dest: Path, attempts: int = 5, wait: float = 60, log=print) -> tuple[Path, Path]:
    """Copy the release binary and its plugins into the work dir, so that a rebuild during the bench cannot
    change what is measured half-way (or make a restart fail). Waits for a binary that is being rebuilt."""
    exe, plugins = binary_path(), plugin_dir()
    for i in range(attempts):
        wasm = sorted(plugins.glob("*.wasm")) if plugins.is_dir() else []
        if exe.exists() and wasm:
            try:
                shutil.rmtree(dest, ignore_errors=True)
                (dest / "plugins").mkdir(parents=True)
                shutil.copy2(exe, dest / "binaryrepo")
                for w in wasm:
                    shutil.copy2(w, dest / "plugins" / w.name)
                return dest / "binaryrepo", dest / "plugins"
            except OSError as e:
                log(f"copying {exe} failed ({e})")
        else:
            log(f"binaryrepo binary {exe} or plugins in {plugins} missing")
        if i + 1 < attempts:
            log(f"waiting {wait:.0f} s for the build (attempt {i + 1}/{attempts}) ...")
            time.sleep(wait)
    raise RuntimeError(f"no usable binaryrepo at {exe} with plugins in {plugins} (run `make build`)")


class Binaryrepo:
    """binaryrepo (harness.binaryrepo.BinaryRepo: generated TOML with `repositories = []`) plus the remote
    repository `bench-remote` for the upstream, created with the API. `fresh()` = new data dir, restart, create."""

    def __init__(self, workdir: Path, upstream_url: str, tag_check_seconds: int = 300, resnapshot=None):
        self.br = BinaryRepo(workdir, "binaryrepo")
        self.upstream_url = upstream_url
        self.tag_check_seconds = tag_check_seconds
        self.resnapshot = resnapshot  # called before a retry: the build may have been half-way when copied

    @property
    def port(self):
        return self.br.port

    @property
    def url(self):
        return self.br.url

    @property
    def host(self):
        return self.br.host

    @property
    def data_dir(self) -> Path:
        return self.br.data_dir

    def _start(self, retries: int = 4, wait: float = 60, log=print):
        for i in range(retries):
            try:
                return self.br.start()
            except RuntimeError as e:
                self.br.stop()
                if i + 1 == retries:
                    raise
                why = " / ".join(str(e).strip().splitlines()[-2:])
                log(f"binaryrepo did not start ({why}); retrying in {wait:.0f} s (a rebuild may be under way)")
                time.sleep(wait)
                if self.resnapshot is not None:
                    self.resnapshot()

    def start(self, create: bool = True):
        self._start()
        if create:
            self.br.create_remote(BR_REPO, self.upstream_url, tag_check_seconds=self.tag_check_seconds)
        return self

    def restart(self):
        """same data dir (the repository and the cache persist)"""
        self.br.stop()
        self._start()
        return self

    def fresh(self):
        self.br.stop()
        shutil.rmtree(self.br.data_dir, ignore_errors=True)
        return self.start()

    def stop(self):
        self.br.stop()

    def pid(self) -> int:
        return self.br.pid

    def blob_path(self, digest: str) -> Path:
        algo, hexd = digest.split(":", 1)
        return self.br.data_dir / "blobs" / algo / hexd[:2] / hexd

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).exists()

    def wait_fill(self, digests, timeout: float = 120):
        for d in digests:
            wait_until(lambda: self.has_blob(d), timeout=timeout, interval=0.05, what=f"binaryrepo fill of {d}")

    def log_tail(self, n=20) -> str:
        return self.br.log_tail(n)
