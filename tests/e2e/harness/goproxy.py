"""Go modules for the e2e tests: a GOPROXY upstream, a checksum database, and the real `go` command.

- `make_module` lays out a module version in a static GOPROXY tree (<escaped path>/@v/{list,V.info,V.mod,V.zip},
  @latest), the zip's files under `module@version/` as the go command requires.
- `GoProxy` serves such a tree over HTTP on 127.0.0.1 (a static_upstream server) with per-path hit counters, an optional delay on .zip
  downloads (so concurrent cold fetches overlap), per-path overrides (a tampered zip, a 410), and forwards
  `/sumdb/<name>/...` to a checksum database server the way proxy.golang.org proxies sum.golang.org.
- `SumDB` runs tests/e2e/go/sumdb (golang.org/x/mod/sumdb's server over a signed tree of the modules in a tree),
  built once with Debian's go 1.19 in GOPATH mode against golang-golang-x-mod-dev and cached under
  $BINARYREPO_E2E_CACHE/go/.
- `go_env` is an environment for a private GOPATH/GOMODCACHE with GOPROXY as the only route out.
"""
from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from .static_upstream import StaticUpstream

SUMDB_SRC = Path(__file__).resolve().parent.parent / "go" / "sumdb" / "main.go"
GOPATH_DEPS = "/usr/share/gocode"


def esc(p: str) -> str:
    """Go's case escaping of module paths and versions: 'A' -> '!a'."""
    return re.sub(r"[A-Z]", lambda m: "!" + m.group(0).lower(), p)


def go_available() -> bool:
    return shutil.which("go") is not None and Path(GOPATH_DEPS, "src/golang.org/x/mod/sumdb").is_dir()


def module_zip(mod: str, version: str, files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, body in sorted(files.items()):
            zi = zipfile.ZipInfo(f"{mod}@{version}/{name}", date_time=(2020, 1, 1, 0, 0, 0))
            zi.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(zi, body)
    return buf.getvalue()


def module_files(mod: str, version: str, requires: dict[str, str] | None = None, go_mod: bool = True) -> dict:
    """A tiny package whose Hello() names its module and version; `go.mod` requires `requires`."""
    pkg = re.sub(r"[^a-z0-9_]", "_", mod.rsplit("/", 1)[-1].lower())
    if re.fullmatch(r"v[0-9]+", pkg):
        pkg = re.sub(r"[^a-z0-9_]", "_", mod.rsplit("/", 2)[-2].lower())
    req = "".join(f"require {m} {v}\n" for m, v in (requires or {}).items())
    gomod = f"module {mod}\n\ngo 1.19\n" + (f"\n{req}" if req else "")
    src = f'package {pkg}\n\n// Hello names the module version.\nfunc Hello() string {{ return "hello from {mod} {version}" }}\n'
    files = {f"{pkg}.go": src, "LICENSE": "Public domain test module.\n"}
    if go_mod:
        files["go.mod"] = gomod
    return {"files": files, "gomod": gomod if go_mod else f"module {mod}\n", "pkg": pkg}


def make_module(root: Path, mod: str, version: str, requires: dict[str, str] | None = None, go_mod: bool = True,
                time_: str = "2020-01-01T00:00:00Z") -> dict:
    """Write one module version into a GOPROXY tree (and add it to the list); returns {info, mod, zip, pkg}."""
    d = Path(root) / esc(mod) / "@v"
    d.mkdir(parents=True, exist_ok=True)
    m = module_files(mod, version, requires, go_mod)
    out = {"info": json.dumps({"Version": version, "Time": time_}).encode(), "mod": m["gomod"].encode(),
           "zip": module_zip(mod, version, m["files"]), "pkg": m["pkg"]}
    for ext in ("info", "mod", "zip"):
        (d / f"{esc(version)}.{ext}").write_bytes(out[ext])
    lst = d / "list"
    versions = lst.read_text().split() if lst.exists() else []
    if version not in versions:
        versions.append(version)
    lst.write_text("".join(v + "\n" for v in versions))
    (Path(root) / esc(mod) / "@latest").write_bytes(out["info"])
    return out


class GoProxy(StaticUpstream):
    """A static GOPROXY upstream on 127.0.0.1 with hit counters; `/sumdb/<name>/...` forwarded to `sumdbs`."""
    delay_suffix = ".zip"
    unquote = True  # go sends "!" as %21

    def __init__(self, root: Path, port: int | None = None, zip_delay: float = 0.0):
        super().__init__(root, port, delay=zip_delay)
        self.sumdbs: dict[str, str] = {}  # name -> base URL of its server

    def special(self, path: str):
        m = re.fullmatch(r"/sumdb/([^/]+)/(.+)", path)
        if not m:
            return None
        name, rest = m.groups()
        base = self.sumdbs.get(name)
        if base is None:
            return 404, b"unknown checksum database\n", {}
        if rest == "supported":
            return 200, b"", {}
        try:
            with urllib.request.urlopen(f"{base}/{rest}", timeout=30) as r:
                return r.status, r.read(), {}
        except urllib.error.HTTPError as e:
            return e.code, e.read(), {}


def cache_dir() -> Path:
    return Path(os.environ.get("BINARYREPO_E2E_CACHE", "/tmp/binaryrepo-e2e-cache")) / "go"


def sumdb_binary() -> Path:
    """The checksum database test server, built on first use (keyed by its source) and cached."""
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    tag = hashlib.sha256(SUMDB_SRC.read_bytes()).hexdigest()[:16]
    exe = root / f"sumdb-{tag}"
    with open(root / ".lock", "w") as lockf:
        fcntl.flock(lockf, fcntl.LOCK_EX)
        if exe.exists():
            return exe
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            env = dict(os.environ, GOPATH=f"{tmp}/gopath:{GOPATH_DEPS}", GO111MODULE="off", GOFLAGS="",
                       GOCACHE=f"{tmp}/cache", GOTOOLCHAIN="local", GOPROXY="off")
            p = subprocess.run(["go", "build", "-o", f"{tmp}/sumdb", str(SUMDB_SRC)], capture_output=True, env=env,
                               timeout=600)
            if p.returncode != 0:
                raise RuntimeError(f"building the sumdb test server failed: {p.stderr.decode(errors='replace')[-2000:]}")
            os.replace(f"{tmp}/sumdb", exe)
    return exe


class SumDB:
    """A signed checksum database over the modules of a GOPROXY tree, served on 127.0.0.1."""

    def __init__(self, name: str, root: Path):
        self.name = name
        self.proc = subprocess.Popen([str(sumdb_binary()), "-name", name, "-root", str(root)], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL)
        self.vkey = self._line("vkey")
        self.url = "http://" + self._line("addr")

    def _line(self, key: str) -> str:
        line = self.proc.stdout.readline().decode().strip()
        if not line.startswith(key + " "):
            raise RuntimeError(f"sumdb server said {line!r}")
        return line.split(" ", 1)[1]

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


def go_env(home: Path, proxy: str, sumdb: str | None = None) -> dict:
    """`go` with a private GOPATH, GOPROXY as its only route out (no proxy variables: go never proxies loopback),
    checksum verification by `sumdb` ("name+key") or off."""
    home = Path(home)
    env = {"HOME": str(home), "GOPATH": str(home / "gopath"), "GOMODCACHE": str(home / "gopath/pkg/mod"),
           "GOCACHE": str(home / "cache"), "GOPROXY": proxy, "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local",
           "GO111MODULE": "on", "GOPRIVATE": "", "GONOPROXY": "", "GOINSECURE": "",
           "HTTP_PROXY": "", "HTTPS_PROXY": "", "http_proxy": "", "https_proxy": "", "NO_PROXY": "", "no_proxy": ""}
    if sumdb:
        env.update(GOSUMDB=sumdb, GONOSUMDB="")
    else:
        env.update(GOSUMDB="off", GONOSUMDB="*")
    return env


def go(env: dict, *args, cwd=None, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("GO")}
    full.update(env)
    p = subprocess.run(["go", *args], capture_output=True, env=full, cwd=cwd, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"go {' '.join(args)} failed ({p.returncode}):\n{p.stderr.decode(errors='replace')[-3000:]}")
    return p


def clean(home: Path):
    """Module caches are read-only: make them removable."""
    for dirpath, dirnames, _ in os.walk(home):
        for d in dirnames:
            try:
                os.chmod(os.path.join(dirpath, d), 0o755)
            except OSError:
                pass
    shutil.rmtree(home, ignore_errors=True)


def go_remote(name: str, url: str, window: int = 300, **settings) -> dict:
    """A `go` remote repository's definition; `window`: its check window (tag_check_seconds)."""
    r = {"name": name, "type": "remote", "format": "go", "url": url, "tag_check_seconds": window}
    return {**r, "settings": settings} if settings else r


def proxy_url(br, name: str) -> str:
    """The GOPROXY URL of repository `name` (the path method)."""
    return f"{br.url}/go/{name}"
