"""A PostgreSQL cluster for the tests that share metadata between nodes (tests/postgres.sh: Debian's server,
initdb in a temp dir, loopback port, run as the `postgres` user when the tests run as root).

One cluster per session; each test gets a database of its own (`database()`), so nodes of one test never
see another test's repositories."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from .binaryrepo import REPO_ROOT
from .util import free_port

SCRIPT = REPO_ROOT / "tests" / "postgres.sh"


class Postgres:
    def __init__(self, tls=None, hba: str | None = None, client_ca: Path | None = None):
        """tls: a harness.tlscerts.ServerCert: the server gets TLS (ssl=on) with its certificate. hba: the text
        of pg_hba.conf (the default lets every local connection in, clear text or TLS). client_ca: the CA
        file client certificates are checked against (with tls and hba)."""
        # Not under pytest's 0700 temp dirs: the cluster's owner must reach its data directory.
        self.root = Path(tempfile.mkdtemp(prefix="binaryrepo-e2e-pg."))
        os.chmod(self.root, 0o755)
        self.data = self.root / "data"
        self.port = free_port()
        self.url = None
        self.extra = []
        if tls is not None:
            self.extra = [str(tls.cert), str(tls.key)]
        if hba is not None:
            (self.root / "pg_hba.conf").write_text(hba)
            self.extra = self.extra + [str(self.root / "pg_hba.conf")]
        if client_ca is not None:
            self.extra = self.extra + [str(client_ca)]

    def start(self):
        out = subprocess.run([str(SCRIPT), "start", str(self.data), str(self.port), *self.extra], check=True,
                             capture_output=True, text=True, timeout=120)
        self.url = out.stdout.strip().splitlines()[-1]
        return self

    def sql(self, statement: str, db: str = "binaryrepo") -> str:
        return subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "binaryrepo", "-d", db, "-qAtc",
                               statement], check=True, capture_output=True, text=True, timeout=60).stdout

    def database(self) -> str:
        """A fresh, empty database; its URL."""
        name = "t" + uuid.uuid4().hex[:16]
        self.sql(f"CREATE DATABASE {name}")
        return f"postgresql://binaryrepo@127.0.0.1:{self.port}/{name}"

    def stop(self):
        subprocess.run([str(SCRIPT), "stop", str(self.data)], check=False, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)
