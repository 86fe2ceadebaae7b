"""nginx in front of binaryrepo, with the project's example config (examples/nginx/binaryrepo.conf).

The example is rendered with test ports only ("listen 80;" -> a loopback port, "127.0.0.1:8081" -> the test
binaryrepo) and included in a minimal nginx.conf whose pid, logs and temp dirs live under a temp dir.
Workers run as root (`user root;`): pytest's temp dirs are 0700, the default worker user could not reach them.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

from .binaryrepo import REPO_ROOT
from .util import Fatal, free_port, request, stop_process, tail, wait_until

EXAMPLE = REPO_ROOT / "examples" / "nginx" / "binaryrepo.conf"


def render(example: str, nginx_port: int, binaryrepo_port: int) -> str:
    assert "listen 80;" in example and "127.0.0.1:8081" in example, "the example no longer has the test's anchors"
    return (example.replace("listen 80;", f"listen 127.0.0.1:{nginx_port};")
            .replace("127.0.0.1:8081", f"127.0.0.1:{binaryrepo_port}"))


class Nginx:
    def __init__(self, workdir: Path, binaryrepo_port: int | None, example: Path = EXAMPLE, site=None):
        """site: a function of nginx's port returning the server block(s) to use instead of the example's."""
        self.dir = Path(workdir) / "nginx"
        for d in ("tmp", "logs"):
            (self.dir / d).mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.site = self.dir / "binaryrepo.conf"
        self.site.write_text(site(self.port) if site else render(Path(example).read_text(), self.port, binaryrepo_port))
        self.conf = self.dir / "nginx.conf"
        self.errlog = self.dir / "logs" / "error.log"
        self.accesslog = self.dir / "logs" / "access.log"
        t = self.dir / "tmp"
        self.conf.write_text(f"""
user root;
daemon off;
worker_processes 1;
pid {self.dir / 'nginx.pid'};
error_log {self.errlog} notice;
events {{ worker_connections 256; }}
http {{
    access_log {self.accesslog};
    client_body_temp_path {t / 'body'};
    proxy_temp_path {t / 'proxy'};
    fastcgi_temp_path {t / 'fastcgi'};
    uwsgi_temp_path {t / 'uwsgi'};
    scgi_temp_path {t / 'scgi'};
    include {self.site};
}}
""")
        self.proc = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        self.proc = subprocess.Popen(["nginx", "-p", str(self.dir), "-c", str(self.conf), "-e", str(self.errlog)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)

        def up():
            if self.proc.poll() is not None:
                raise Fatal(f"nginx exited:\n{tail(self.errlog)}")
            request("GET", self.url + "/", timeout=2)
            return True
        wait_until(up, timeout=10, what="nginx")
        return self

    def stop(self):
        import signal
        stop_process(self.proc, sig=signal.SIGQUIT)
        self.proc = None
