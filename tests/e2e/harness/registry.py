"""CNCF distribution (`docker-registry serve CONFIG`, Debian docker-registry 2.8) as a test upstream.

Each instance: its own config, storage dir, log file (app + access log lines) and a free port on 127.0.0.1.
`storage_template` is a storage dir to start from (the session's pre-pushed images): blob data files are
hard-linked (distribution never rewrites an existing blob), everything else copied.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from .accesslog import AccessLog, Stats
from .util import Fatal, free_port, request, stop_process, tail, wait_until


def clone_storage(src: Path, dst: Path):
    def copy(s, d):
        if os.sep + "blobs" + os.sep in s and os.path.basename(s) == "data":
            os.link(s, d)
        else:
            shutil.copy2(s, d)
    shutil.copytree(src, dst, copy_function=copy)


class Registry:
    def __init__(self, workdir: Path, name: str = "upstream", storage_template: Path | None = None,
                 auth: dict | None = None, proxy_remote: str | None = None, port: int | None = None):
        self.dir = Path(workdir) / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.storage = self.dir / "storage"
        self.conf = self.dir / "config.yml"
        self.logfile = self.dir / "registry.log"
        self.port = port or free_port()
        self.auth = auth
        self.proxy_remote = proxy_remote
        self.proc: subprocess.Popen | None = None
        self.base_mark = 0
        if storage_template is not None and not self.storage.exists():
            clone_storage(Path(storage_template), self.storage)
        self.storage.mkdir(exist_ok=True)
        self.log = AccessLog(self.logfile)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def _write_config(self):
        lines = [
            "version: 0.1",
            f"log: {{level: info, formatter: text, fields: {{service: {self.name}}}, accesslog: {{disabled: false}}}}",
            "storage:",
            "  cache: {blobdescriptor: inmemory}",
            f"  filesystem: {{rootdirectory: '{self.storage}'}}",
            "  delete: {enabled: true}",
            "http:",
            f"  addr: '{self.host}'",
            "  headers: {X-Content-Type-Options: [nosniff]}",
            "health: {storagedriver: {enabled: false}}",
        ]
        if self.proxy_remote:
            lines.append(f"proxy: {{remoteurl: '{self.proxy_remote}'}}")
        if self.auth:
            lines.append("auth:")
            for kind, opts in self.auth.items():
                lines.append(f"  {kind}:")
                for k, v in opts.items():
                    lines.append(f"    {k}: '{v}'")
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self):
        self._write_config()
        logf = open(self.logfile, "ab")
        self.proc = subprocess.Popen(["docker-registry", "serve", str(self.conf)], stdout=logf, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        logf.close()

        def up():
            if self.proc.poll() is not None:
                raise Fatal(f"registry {self.name} exited:\n{tail(self.logfile)}")
            return request("GET", self.url + "/v2/", timeout=2).status in (200, 401)
        wait_until(up, timeout=15, what=f"registry {self.name} on {self.host}")
        self.base_mark = self.log.mark()  # stats() counts from here: the readiness probe is not a test request
        return self

    def stop(self):
        stop_process(self.proc)
        self.proc = None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def mark(self) -> int:
        return self.log.mark()

    def stats(self, since: int | None = None) -> Stats:
        """requests served since `since` (a mark()), by default since the last start"""
        return Stats(self.log.entries(self.base_mark if since is None else since))

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
