"""The real clients: skopeo, podman, containerd/ctr and a Docker Engine (dockerd), each with its own state
under a temp dir (nothing touches /var/lib/docker, /var/lib/containers, /run/containerd's default socket),
and an egress trap so that nothing the engine tries can leave the machine.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from .util import Fatal, run, sha256_file, stop_process, tail, wait_until

# --- skopeo ------------------------------------------------------------------------------------


def skopeo_copy(ref: str, dest: Path, override_arch: str | None = None, creds: str | None = None,
                env=None, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    """skopeo copy docker://REF dir:DEST over plain http (TLS verification off: skopeo first tries TLS)."""
    pre = ["skopeo", "--insecure-policy"]
    if override_arch:
        pre += ["--override-arch", override_arch]
    cmd = pre + ["copy", "--src-tls-verify=false"]
    if creds:
        cmd += ["--src-creds", creds]
    cmd += [f"docker://{ref}", f"dir:{dest}"]
    shutil.rmtree(dest, ignore_errors=True)
    return run(cmd, timeout=timeout, env=env, check=check)


def skopeo_raw(ref: str, creds: str | None = None, env=None, check=True) -> bytes:
    cmd = ["skopeo", "--insecure-policy", "inspect", "--raw", "--tls-verify=false"]
    if creds:
        cmd += ["--creds", creds]
    return run(cmd + [f"docker://{ref}"], timeout=120, env=env, check=check).stdout


def dir_image(dest: Path) -> tuple[str, dict]:
    """What a skopeo `dir:` copy holds: (sha256 of manifest.json, {blob digest: size}). Every blob file is
    checked to hash to its name."""
    dest = Path(dest)
    manifest_digest = sha256_file(dest / "manifest.json")
    blobs = {}
    for f in dest.iterdir():
        if f.name in ("manifest.json", "version"):
            continue
        got = sha256_file(f)
        assert got == "sha256:" + f.name, f"{f}: content hashes to {got}"
        blobs[got] = f.stat().st_size
    return manifest_digest, blobs


# --- podman ------------------------------------------------------------------------------------


class Podman:
    def __init__(self):
        # podman refuses a runroot longer than 50 characters: use a short dir under /tmp
        self.dir = Path(tempfile.mkdtemp(prefix="bre2e-pm-", dir="/tmp"))
        for d in ("root", "runroot", "tmp"):
            (self.dir / d).mkdir(parents=True, exist_ok=True)

    def __call__(self, *args, timeout=300, check=True):
        cmd = ["podman", "--root", str(self.dir / "root"), "--runroot", str(self.dir / "runroot"),
               "--tmpdir", str(self.dir / "tmp"), "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs",
               "--events-backend", "none", *args]
        return run(cmd, timeout=timeout, check=check)

    def cleanup(self):
        try:
            self("system", "reset", "--force", timeout=60, check=False)
        except Exception:  # noqa: BLE001
            pass
        _umount_under(self.dir)
        shutil.rmtree(self.dir, ignore_errors=True)


# --- containerd --------------------------------------------------------------------------------


class Containerd:
    def __init__(self, workdir: Path):
        self.dir = Path(workdir) / "containerd"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.sock = self.dir / "containerd.sock"
        self.conf = self.dir / "config.toml"
        self.logfile = self.dir / "containerd.log"
        self.proc = None

    def start(self):
        self.conf.write_text(
            "version = 2\n"
            f'root = "{self.dir / "root"}"\n'
            f'state = "{self.dir / "state"}"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            "[grpc]\n"
            f'  address = "{self.sock}"\n'
            "[ttrpc]\n"
            f'  address = "{self.sock}.ttrpc"\n'
            "[debug]\n"
            '  address = ""\n'
            "[metrics]\n"
            '  address = ""\n')
        logf = open(self.logfile, "ab")
        self.proc = subprocess.Popen(["containerd", "--config", str(self.conf)], stdout=logf,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        logf.close()

        def up():
            if self.proc.poll() is not None:
                raise Fatal(f"containerd exited:\n{tail(self.logfile)}")
            return self.ctr("version", check=False).returncode == 0
        wait_until(up, timeout=20, interval=0.2, what="containerd")
        return self

    def ctr(self, *args, ns="e2e", timeout=300, check=True):
        return run(["ctr", "--address", str(self.sock), "--namespace", ns, *args], timeout=timeout, check=check)

    def image_digest(self, ref: str) -> str | None:
        out = self.ctr("images", "ls").stdout.decode().splitlines()
        for line in out[1:]:
            cols = line.split()
            if cols and cols[0] == ref:
                return cols[2]
        return None

    def stop(self):
        stop_process(self.proc)
        self.proc = None
        _umount_under(self.dir)
        shutil.rmtree(self.dir / "root", ignore_errors=True)


def _umount_under(*dirs):
    roots = [str(Path(d).resolve()) for d in dirs]
    try:
        mounts = [line.split()[1] for line in open("/proc/mounts")]
    except OSError:
        return
    for m in sorted(mounts, reverse=True):
        if any(m == r or m.startswith(r + "/") for r in roots):
            subprocess.run(["umount", "-l", m], capture_output=True)


# --- egress trap + Docker Engine ---------------------------------------------------------------


class EgressTrap:
    """A fake HTTP(S) forward proxy that refuses everything (502) and records each request line. dockerd
    gets HTTP(S)_PROXY pointing here, so an attempt to reach e.g. registry-1.docker.io stays on loopback
    (Go never proxies loopback addresses, so 127.x registries are reached directly)."""

    def __init__(self):
        self.lines: list[str] = []
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self._stop = False
        threading.Thread(target=self._loop, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _loop(self):
        while not self._stop:
            try:
                c, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(c,), daemon=True).start()

    def _handle(self, c):
        try:
            c.settimeout(5)
            data = b""
            while b"\r\n" not in data and len(data) < 8192:
                b = c.recv(4096)
                if not b:
                    break
                data += b
            self.lines.append(data.split(b"\r\n", 1)[0].decode("latin-1", "replace"))
            c.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 14\r\nConnection: close\r\n\r\negress blocked")
        except OSError:
            pass
        finally:
            c.close()

    def stop(self):
        self._stop = True
        self._sock.close()


class Dockerd:
    """dockerd 20.10 with its own data-root, exec-root, socket and managed containerd; no iptables, no bridge."""

    def __init__(self, workdir: Path, trap: EgressTrap, mirror: str | None = None, storage: str = "overlay2",
                 hosts: Path | None = None):
        """hosts: a file dockerd sees as /etc/hosts (bind-mounted in a mount namespace of its own), for names
        that must resolve only for this Engine."""
        self.dir = Path(workdir) / "dockerd"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.data = self.dir / "data"
        self.exec = self.dir / "exec"
        self.sock = self.dir / "docker.sock"
        self.pidfile = self.dir / "dockerd.pid"
        self.logfile = self.dir / "dockerd.log"
        self.conf = self.dir / "daemon.json"
        self.trap = trap
        self.mirror = mirror
        self.storage = storage
        self.hosts = hosts
        self.proc = None

    @property
    def env(self) -> dict:
        return {"DOCKER_HOST": f"unix://{self.sock}"}

    def start(self):
        self.conf.write_text("{}")  # never read /etc/docker/daemon.json
        args = ["dockerd", "--data-root", str(self.data), "--exec-root", str(self.exec), "-H", f"unix://{self.sock}",
                "--pidfile", str(self.pidfile), "--config-file", str(self.conf), "--iptables=false",
                "--ip-masq=false", "--bridge=none", "--storage-driver", self.storage,
                "--exec-opt", "native.cgroupdriver=cgroupfs", "--max-concurrent-downloads", "3"]
        if self.mirror:
            args += ["--registry-mirror", self.mirror]
        if self.hosts:
            # unshare execs the shell, which execs dockerd: the process stays the one stop() signals
            args = ["unshare", "-m", "--propagation", "private", "sh", "-c",
                    'mount --bind "$0" /etc/hosts && exec "$@"', str(self.hosts), *args]
        env = dict(os.environ)
        env.update({"HTTP_PROXY": self.trap.url, "HTTPS_PROXY": self.trap.url,
                    "NO_PROXY": "localhost,127.0.0.0/8,::1"})
        logf = open(self.logfile, "ab")
        self.proc = subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        logf.close()

        def up():
            if self.proc.poll() is not None:
                raise Fatal(f"dockerd exited:\n{tail(self.logfile)}")
            return self.docker("version", check=False, timeout=10).returncode == 0
        wait_until(up, timeout=60, interval=0.3, what="dockerd")
        return self

    def docker(self, *args, timeout=300, check=True):
        return run(["docker", *args], timeout=timeout, env=self.env, check=check)

    def image_id(self, ref: str) -> str | None:
        p = self.docker("image", "inspect", "--format", "{{.Id}}", ref, check=False)
        return p.stdout.decode().strip() if p.returncode == 0 else None

    def repo_digests(self, ref: str) -> list:
        p = self.docker("image", "inspect", "--format", "{{json .RepoDigests}}", ref)
        return json.loads(p.stdout)

    def remove_all_images(self):
        ids = self.docker("images", "-aq", check=False).stdout.decode().split()
        if ids:
            self.docker("rmi", "-f", *sorted(set(ids)), check=False)

    def stop(self):
        stop_process(self.proc, timeout=30)
        self.proc = None
        time.sleep(0.2)
        _umount_under(self.data, self.exec)
        shutil.rmtree(self.data, ignore_errors=True)
        shutil.rmtree(self.exec, ignore_errors=True)
