"""A real S3 endpoint for the storage tests: s3s-fs (crates.io; it checks SigV4 signatures and presigned
URLs and their expiry) on 127.0.0.1, serving one bucket from a directory.

tests/install-deps.sh builds it once into $BINARYREPO_E2E_CACHE/s3s-fs (the tests' one cache, default
/tmp/binaryrepo-e2e-cache; or $BINARYREPO_TEST_S3S_FS names the binary). s3s-fs keeps each object as the file <root>/<bucket>/<key>, so
what the bucket holds is read straight from that directory.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

from .util import free_port, stop_process, wait_until

ACCESS_KEY = "e2e-access-key"
SECRET_KEY = "e2e-secret-key-0123456789"


def s3s_fs_binary() -> Path:
    if os.environ.get("BINARYREPO_TEST_S3S_FS"):
        return Path(os.environ["BINARYREPO_TEST_S3S_FS"])
    cache = Path(os.environ.get("BINARYREPO_E2E_CACHE", "/tmp/binaryrepo-e2e-cache"))
    return cache / "s3s-fs" / "bin" / "s3s-fs"


class S3Server:
    def __init__(self, workdir: Path, bucket: str = "binaryrepo", prefix: str = "e2e"):
        self.root = Path(workdir) / "s3"
        self.bucket, self.prefix = bucket, prefix
        (self.root / bucket).mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.logfile = Path(workdir) / "s3s-fs.log"
        self.proc = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "S3Server":
        exe = s3s_fs_binary()
        if not exe.exists():
            raise RuntimeError(f"s3s-fs not found at {exe}: run tests/install-deps.sh")
        logf = open(self.logfile, "ab")
        self.proc = subprocess.Popen([str(exe), "--host", "127.0.0.1", "--port", str(self.port), "--access-key", ACCESS_KEY,
                                      "--secret-key", SECRET_KEY, str(self.root)], stdout=logf, stderr=subprocess.STDOUT)
        import socket

        def up():
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return True
            except OSError:
                return False
        wait_until(up, timeout=15, what="s3s-fs listening")
        return self

    def storage_config(self, **extra) -> dict:
        """binaryrepo's [storage] table for this bucket"""
        return {"backend": "s3", "endpoint": self.endpoint, "region": "us-east-1", "bucket": self.bucket,
                "prefix": self.prefix, "access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY, **extra}

    def blobs(self) -> dict:
        """{digest: size} of every object under <prefix>/blobs/, each checked to hash to its name"""
        out = {}
        base = self.root / self.bucket / self.prefix / "blobs"
        if not base.exists():
            return out
        for f in base.rglob("*"):
            if not f.is_file():
                continue
            algo = f.relative_to(base).parts[0]
            h = hashlib.new(algo)
            with open(f, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    h.update(chunk)
            name = f"{algo}:{f.name}"
            assert h.hexdigest() == f.name, f"object {f.relative_to(self.root)} hashes to {algo}:{h.hexdigest()}"
            out[name] = f.stat().st_size
        return out

    def objects(self) -> list:
        """every object key in the bucket"""
        b = self.root / self.bucket
        return sorted(str(f.relative_to(b)) for f in b.rglob("*") if f.is_file())

    def pending_uploads(self) -> list:
        """multipart uploads begun and neither completed nor aborted (s3s-fs keeps their state and parts
        as `.upload*` files in its root)"""
        return sorted(f.name for f in self.root.iterdir() if f.name.startswith(".upload"))

    def stop(self):
        if self.proc:
            stop_process(self.proc)
            self.proc = None
