"""Session fixtures for the end-to-end tests: test images, upstream registries, binaryrepo instances and
the real clients. Everything runs on 127.0.0.1; nothing here needs the internet.

Environment:
  BINARYREPO_BIN         the server binary (default <repo>/target/release/binaryrepo)
  BINARYREPO_PLUGIN_DIR  plugin dir (default: plugins/ next to the binary)
  BINARYREPO_E2E_CACHE   where the deterministic test images are cached (default /tmp/binaryrepo-e2e-cache)
"""
from __future__ import annotations

import itertools
import shutil

import pytest

from harness.accesslog import LINE
from harness.binaryrepo import BinaryRepo, binary_path
from harness.clients import Containerd, Dockerd, EgressTrap, Podman
from harness.goproxy import GoProxy, clean
from harness.helm import Helm
from harness.images import ensure_images
from harness.nginx import Nginx
from harness.oci import Oci
from harness.postgres import Postgres
from harness.registry import Registry
from harness.s3 import S3Server
from harness.tokenserver import TokenServer
from harness.util import free_port, server_factory, tail


def _attach(request, title, path, access_only=False):
    request.node.__dict__.setdefault("_e2e_logs", []).append((title, path, access_only))


def _access_tail(path, n):
    """the last n access-log lines of a distribution log (its app lines repeat them verbosely)"""
    try:
        lines = [line for line in open(path, errors="replace") if LINE.match(line)]
    except OSError as e:
        return f"(no log: {e})"
    return "".join(lines[-n:])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for title, path, access_only in item.__dict__.get("_e2e_logs", []):
            text = _access_tail(path, 25) if access_only else tail(path, 25)
            rep.sections.append((f"log tail: {title}", text))


@pytest.fixture(scope="session")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="session")
def images(work):
    return ensure_images(work)


@pytest.fixture(scope="session")
def binaryrepo_bin():
    exe = binary_path()
    if not exe.exists():
        pytest.fail(f"binaryrepo binary not found at {exe}: build it first (make build) or set BINARYREPO_BIN")
    return exe


@pytest.fixture
def make_upstream(request, tmp_path, images):
    """make_upstream(name="upstream", auth=None, empty=False) -> a started distribution instance holding
    every test image (unless empty), with its own access log."""
    started = []

    def make(name="upstream", auth=None, empty=False, port=None):
        r = Registry(tmp_path, name, storage_template=None if empty else images.seed_storage, auth=auth, port=port)
        started.append(r)
        _attach(request, f"upstream {name} (access log)", r.logfile, access_only=True)
        return r.start()
    yield make
    for r in started:
        r.cleanup()


@pytest.fixture
def upstream(make_upstream):
    return make_upstream()


@pytest.fixture
def make_binaryrepo(request, tmp_path, binaryrepo_bin):
    """make_binaryrepo(name="binaryrepo", port=None, config={...}, repositories=[...], start=True)"""
    started = []

    def make(name="binaryrepo", start=True, **kw):
        b = BinaryRepo(tmp_path, name, **kw)
        started.append(b)
        _attach(request, name, b.logfile)
        return b.start() if start else b
    yield make
    for b in started:
        b.stop()
        shutil.rmtree(b.data_dir, ignore_errors=True)


@pytest.fixture
def br(make_binaryrepo):
    return make_binaryrepo()


@pytest.fixture
def local_br(br):
    """a binaryrepo with one local repository, docker-local (created through the API)"""
    br.create_local("docker-local")
    return br


@pytest.fixture
def oci(local_br):
    """a plain-HTTP OCI client for docker-local through the path method (/v2/docker-local/<image>/...)"""
    return Oci(local_br.url, "docker-local")


@pytest.fixture
def nginx(request, br, tmp_path):
    """nginx with examples/nginx/binaryrepo.conf in front of `br`."""
    n = Nginx(tmp_path, br.port)
    request.node.__dict__.setdefault("_e2e_logs", []).append(("nginx error log", n.errlog, False))
    yield n.start()
    n.stop()


@pytest.fixture
def token_server(tmp_path):
    n = itertools.count()
    yield from server_factory(lambda **kw: TokenServer(tmp_path / f"token{next(n)}", **kw))


@pytest.fixture(scope="module")
def helms(tmp_path_factory):
    """Helm 3 and Helm 4 clients, each with its own home ({3: Helm, 4: Helm}); skips when one cannot be fetched."""
    out = {}
    for major in (3, 4):
        try:
            out[major] = Helm(major, tmp_path_factory.mktemp(f"helm{major}"))
        except RuntimeError as e:
            pytest.skip(f"helm {major} could not be fetched: {e}")
    return out


@pytest.fixture
def podman():
    p = Podman()
    yield p
    p.cleanup()


@pytest.fixture(scope="session")
def containerd(work):
    c = Containerd(work).start()
    yield c
    c.stop()


@pytest.fixture(scope="session")
def egress_trap():
    t = EgressTrap()
    yield t
    t.stop()


@pytest.fixture(scope="session")
def mirror_port():
    """the port of the binaryrepo that the session's dockerd uses as --registry-mirror"""
    return free_port()


@pytest.fixture(scope="session")
def dockerd(work, egress_trap, mirror_port):
    d = Dockerd(work, egress_trap, mirror=f"http://127.0.0.1:{mirror_port}").start()
    yield d
    d.stop()


@pytest.fixture(scope="session")
def postgres():
    """one PostgreSQL server for the session; each test that uses it makes a database of its own"""
    pg = Postgres().start()
    yield pg
    pg.stop()


@pytest.fixture
def s3(tmp_path):
    """an s3s-fs server of the test's own, on 127.0.0.1"""
    s = S3Server(tmp_path).start()
    yield s
    s.stop()


@pytest.fixture
def goproxy(tmp_path):
    """GOPROXY upstreams serving module trees under tmp_path (harness/goproxy.py)."""
    yield from server_factory(lambda name="up", **kw: GoProxy(tmp_path / name, **kw))


@pytest.fixture
def gohome(tmp_path):
    """gohome(name): a private HOME/GOPATH for one `go` client; its read-only module cache is removed after."""
    made = []

    def make(name):
        h = tmp_path / "go" / name
        h.mkdir(parents=True)
        made.append(h)
        return h
    yield make
    for h in made:
        clean(h)
