"""The example third-party plugin, examples/generic-file (format `generic`): built with cargo outside the
workspace, exactly as its README says (target wasm32-wasip2; the build is cached under target/examples), dropped
into the plugin directory of a running server, then used as a user would: local PUT/GET/HEAD/DELETE by path, and
a remote that proxies a plain HTTP file server started by the test (one upstream request however many GETs).
"""
from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from harness.binaryrepo import plugin_dir
from harness.util import request, wait_until

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "generic-file"
TARGET_DIR = ROOT / "target" / "examples"
BUILD = "generic-file/0.1.0"  # the x-plugin-build header of this build (crate name / version)


@functools.cache
def build_example() -> Path:
    """cargo build of examples/generic-file for wasm32-wasip2 (incremental: seconds once built) -> the .wasm"""
    installed = subprocess.run(["rustup", "target", "list", "--installed"], capture_output=True, text=True)
    if "wasm32-wasip2" not in installed.stdout:
        subprocess.run([str(ROOT / "plugins" / "build.sh"), "install"], check=True, timeout=900)
    cmd = ["cargo", "build", "--release", "--target", "wasm32-wasip2",
           "--manifest-path", str(EXAMPLE / "Cargo.toml"), "--target-dir", str(TARGET_DIR)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if p.returncode != 0:
        pytest.fail(f"building the example plugin failed: {' '.join(cmd)}\n{p.stderr[-3000:]}")
    out = TARGET_DIR / "wasm32-wasip2" / "release" / "generic_file.wasm"
    assert out.is_file(), f"cargo built no {out}"
    return out


def install(src: Path, plugdir: Path, name: str = "generic.wasm", data: bytes | None = None) -> Path:
    """copy then rename into the plugin directory: the safe way docs/plugins.md describes"""
    tmp = plugdir / f".{name}.part"
    if data is None:
        shutil.copyfile(src, tmp)
    else:
        tmp.write_bytes(data)
    os.replace(tmp, plugdir / name)
    return plugdir / name


def listing(br) -> dict:
    r = br.api("GET", "/api/plugins")
    assert r.status == 200, r
    return r.json()


def formats(br) -> list:
    return sorted(p["format"] for p in listing(br)["plugins"])


def wait_format(br, fmt: str, present: bool = True, timeout: float = 15):
    wait_until(lambda: (fmt in formats(br)) == present, timeout=timeout,
               what=f"format {fmt} {'loaded' if present else 'gone'}")


@pytest.fixture
def plugdir(tmp_path):
    """a plugin directory holding the shipped plugins (copies: the tests change it)"""
    d = tmp_path / "plugins"
    d.mkdir()
    shipped = sorted(plugin_dir().glob("*.wasm"))
    assert shipped, f"no plugins in {plugin_dir()}"
    for p in shipped:
        shutil.copyfile(p, d / p.name)
    return d


@pytest.fixture
def generic(make_binaryrepo, plugdir):
    """a running server; the example plugin copied in after the start, as an operator adds one"""
    wasm = build_example()
    br = make_binaryrepo(config={"plugin_dir": str(plugdir)})
    assert "generic" not in formats(br)
    install(wasm, plugdir)
    wait_format(br, "generic")
    return br


class FileServer:
    """a plain HTTP file server on 127.0.0.1 (what a remote generic repository proxies), counting GETs per path"""

    def __init__(self, files: dict):
        self.files, self.hits = files, {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                outer.hits[self.path] = outer.hits.get(self.path, 0) + 1
                body = outer.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_local_files_put_get_head_delete(generic):
    br = generic
    # a name with a '-': the path method (/generic/<name>/...) addresses only such names
    br.create(name="files-local", type="local", format="generic")
    body = os.urandom(300_000)
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    url = f"{br.url}/repo/files-local/tools/v1/tool.bin"

    put = request("PUT", url, body=body)
    assert put.status == 201, put
    assert put.header("x-plugin-build") == BUILD
    assert put.text().strip() == digest

    got = request("GET", url)
    assert got.status == 200 and got.body == body, got
    # the path method reaches the same file
    assert request("GET", f"{br.url}/generic/files-local/tools/v1/tool.bin").body == body
    head = request("HEAD", url)
    assert head.status == 200 and head.header("Content-Length") == str(len(body)) and head.body == b""

    # a checksum that does not match stores nothing and leaves the file as it was
    other = b"not the same bytes"
    bad = request("PUT", url, body=other, headers={"X-Checksum-Sha256": hashlib.sha256(b"x").hexdigest()})
    assert bad.status == 400, bad
    assert request("GET", url).body == body
    good = request("PUT", url, body=other, headers={"X-Checksum-Sha256": hashlib.sha256(other).hexdigest()})
    assert good.status == 201, good
    assert request("GET", url).body == other

    # paths that climb out, or name nothing, are refused in the plugin's plain-text shape
    assert request("GET", f"{br.url}/repo/files-local/tools/../../etc/passwd").status == 400
    assert request("PUT", f"{br.url}/repo/files-local/", body=b"x").status == 400

    assert request("DELETE", url).status == 204
    assert request("GET", url).status == 404
    assert request("DELETE", url).status == 404


def test_remote_proxies_any_file_server_once(generic):
    br = generic
    big = os.urandom(2_000_000)
    files = FileServer({"/pub/dist/app-1.0.tar.gz": big, "/pub/README": b"hello\n"})
    try:
        br.create(name="files-remote", type="remote", format="generic", url=files.url + "/pub")
        url = f"{br.url}/repo/files-remote/dist/app-1.0.tar.gz"
        for _ in range(4):
            r = request("GET", url)
            assert r.status == 200, r
            assert hashlib.sha256(r.body).hexdigest() == hashlib.sha256(big).hexdigest()
        assert files.hits == {"/pub/dist/app-1.0.tar.gz": 1}, "served from the cache after the first GET"
        assert request("GET", f"{br.url}/repo/files-remote/README").body == b"hello\n"
        missing = request("GET", f"{br.url}/repo/files-remote/nope.bin")
        assert missing.status == 404, missing
        # a remote takes no uploads
        assert request("PUT", url, body=b"x").status == 405
    finally:
        files.close()
