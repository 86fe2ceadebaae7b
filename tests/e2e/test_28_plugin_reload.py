"""Plugins loaded while the server runs (host/src/plugins/reload.rs, registry.rs; docs/plugins.md).

A .wasm copied into the plugin directory serves within seconds without a restart; a replaced one swaps
atomically (a request in flight finishes on the build it started on, new requests get the new build); a file
that does not load (not wasm, another contract, a trap in `info`, a format already provided) is refused with the
reason in GET /api/plugins while whatever served before keeps serving; a removed plugin's repositories answer
a clear 503; POST /api/plugins/reload does the same at once.

The second plugin is the example, examples/generic-file (built by test_29's helper). Two builds that differ
visibly are made by rewriting its version string in the .wasm ("generic-file/0.1.0" -> "generic-file/0.1.9",
same length), which every response carries as `x-plugin-build`.
"""
from __future__ import annotations

import http.client
import os
import threading
import time
from pathlib import Path

import pytest

from harness.binaryrepo import basic
from harness.util import request, wait_until
from test_17_plugin_isolation import test_plugin as misbehave_plugin
from test_29_example_plugin import BUILD, build_example, formats, install, listing, plugdir, wait_format  # noqa: F401

NEW_BUILD = "generic-file/0.1.9"
# the smallest component: valid wasm, but it implements no binaryrepo:plugin world
EMPTY_COMPONENT = b"\0asm\x0d\x00\x01\x00"


def patched(src: Path, old: str, new: str) -> bytes:
    data = src.read_bytes()
    assert len(old) == len(new) and data.count(old.encode()) == 1, f"{old!r} once in {src}"
    return data.replace(old.encode(), new.encode())


def plugin_entry(br, fmt: str) -> dict:
    return next(p for p in listing(br)["plugins"] if p["format"] == fmt)


def refused(br) -> dict:
    return {Path(r["file"]).name: r["reason"] for r in listing(br)["refused"]}


@pytest.fixture
def server(make_binaryrepo, plugdir):
    return make_binaryrepo(config={"plugin_dir": str(plugdir)})


def test_a_copied_plugin_serves_within_seconds_without_restart(server, plugdir):
    br = server
    pid = br.pid
    before = listing(br)
    assert "docker" in formats(br) and "generic" not in formats(br) and before["refused"] == []
    wasm = build_example()
    started = time.monotonic()
    install(wasm, plugdir)
    wait_format(br, "generic", timeout=10)
    took = time.monotonic() - started
    entry = plugin_entry(br, "generic")
    assert entry["contract"] == "0.3.0" and entry["roots"] == ["/generic/"]
    assert Path(entry["file"]).name == "generic.wasm"
    import hashlib
    assert entry["sha256"] == hashlib.sha256(wasm.read_bytes()).hexdigest()
    assert entry["loaded_at"].endswith("Z")
    br.create(name="files", type="local", format="generic")
    assert request("PUT", f"{br.url}/repo/files/a.txt", body=b"hello").status == 201
    assert request("GET", f"{br.url}/repo/files/a.txt").body == b"hello"
    assert br.pid == pid, "no restart"
    print(f"plugin serving {took:.1f}s after it was copied in")


def test_replacing_a_plugin_swaps_it_and_requests_in_flight_finish_on_the_old_one(server, plugdir):
    br = server
    install(build_example(), plugdir)
    wait_format(br, "generic")
    br.create(name="files", type="local", format="generic")
    old_sha = plugin_entry(br, "generic")["sha256"]

    # an upload in flight: the request started on the old build, its body still arriving
    body = os.urandom(200_000)
    half = threading.Event()
    swapped = threading.Event()
    result = {}

    def slow_put():
        conn = http.client.HTTPConnection("127.0.0.1", int(br.url.rsplit(":", 1)[1]), timeout=60)
        conn.putrequest("PUT", "/repo/files/slow.bin")
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders()
        conn.send(body[:1000])
        half.set()
        swapped.wait(30)
        conn.send(body[1000:])
        r = conn.getresponse()
        result["status"], result["build"], result["body"] = r.status, r.getheader("x-plugin-build"), r.read()
        conn.close()

    t = threading.Thread(target=slow_put)
    t.start()
    assert half.wait(10)
    time.sleep(0.3)  # the server has resolved the plugin and is receiving the body
    install(None, plugdir, data=patched(build_example(), BUILD, NEW_BUILD))
    wait_until(lambda: plugin_entry(br, "generic")["sha256"] != old_sha, timeout=10, what="the new build loaded")
    # new requests get the new build at once
    fresh = request("GET", f"{br.url}/repo/files/none-yet")
    assert fresh.status == 404 and fresh.header("x-plugin-build") == NEW_BUILD, fresh
    swapped.set()
    t.join(30)
    assert result.get("status") == 201, result
    assert result["build"] == BUILD, "the upload finished on the build it started on"
    got = request("GET", f"{br.url}/repo/files/slow.bin")
    assert got.status == 200 and got.body == body and got.header("x-plugin-build") == NEW_BUILD


def test_files_that_do_not_load_are_refused_and_the_old_plugin_keeps_serving(server, plugdir):
    br = server
    wasm = build_example()
    install(wasm, plugdir)
    wait_format(br, "generic")
    br.create(name="files", type="local", format="generic")
    assert request("PUT", f"{br.url}/repo/files/keep.txt", body=b"kept").status == 201
    good_sha = plugin_entry(br, "generic")["sha256"]

    install(None, plugdir, "junk.wasm", data=b"this is not webassembly at all")
    install(None, plugdir, "empty.wasm", data=EMPTY_COMPONENT)
    install(wasm, plugdir, "generic-copy.wasm")  # a second plugin for format generic
    trapping = misbehave_plugin()
    install(None, plugdir, "trap-in-info.wasm", data=patched(trapping, "info=keep", "info=trap"))
    # and the serving plugin's file replaced by garbage
    install(None, plugdir, "generic.wasm", data=b"\0asm garbage")
    want = {"junk.wasm", "empty.wasm", "generic-copy.wasm", "trap-in-info.wasm", "generic.wasm"}
    wait_until(lambda: want <= set(refused(br)), timeout=15, what=f"{want} refused")
    reasons = refused(br)
    assert "generic-copy.wasm" in reasons and "already provided by" in reasons["generic-copy.wasm"], reasons
    assert "neither" in reasons["empty.wasm"], reasons
    assert "info()" in reasons["trap-in-info.wasm"], reasons
    for name in ("junk.wasm", "generic.wasm"):
        assert reasons[name], reasons
    assert {r["at"][-1] for r in listing(br)["refused"]} == {"Z"}
    # the log says it too (log lines are written by their own thread, shortly after the listing changes)
    def logged():
        log = br.logfile.read_text(errors="replace")
        return "plugin refused" in log and "trap-in-info.wasm" in log
    wait_until(logged, timeout=10, what="the refusal of trap-in-info.wasm in the log")

    # whatever served before serves on: the old build of generic, and docker
    assert {"docker", "generic"} <= set(formats(br)) and "misbehave" not in formats(br)
    assert plugin_entry(br, "generic")["sha256"] == good_sha
    got = request("GET", f"{br.url}/repo/files/keep.txt")
    assert got.status == 200 and got.body == b"kept" and got.header("x-plugin-build") == BUILD
    assert request("GET", f"{br.url}/v2/").status in (200, 401)

    # a good file again clears the refusal
    install(wasm, plugdir, "generic.wasm", data=patched(wasm, BUILD, NEW_BUILD))
    wait_until(lambda: "generic.wasm" not in refused(br), timeout=10, what="generic.wasm loaded again")
    assert request("GET", f"{br.url}/repo/files/keep.txt").header("x-plugin-build") == NEW_BUILD


def test_a_removed_plugin_leaves_its_repositories_answering_503(server, plugdir):
    br = server
    install(build_example(), plugdir)
    wait_format(br, "generic")
    br.create(name="files", type="local", format="generic")
    assert request("PUT", f"{br.url}/repo/files/a.bin", body=b"data").status == 201

    (plugdir / "generic.wasm").unlink()
    wait_format(br, "generic", present=False)
    gone = request("GET", f"{br.url}/repo/files/a.bin")
    assert gone.status == 503, gone
    assert "generic" in gone.text() and "not loaded" in gone.text(), gone
    assert "files" in [r["name"] for r in br.repos()], "the repository itself stays configured"
    assert request("GET", f"{br.url}/v2/").status in (200, 401), "other formats serve on"

    install(build_example(), plugdir)
    wait_format(br, "generic")
    assert request("GET", f"{br.url}/repo/files/a.bin").body == b"data", "its files come back with it"


def test_post_reload_loads_at_once_and_needs_an_admin(server, plugdir):
    br = server
    shipped = formats(br)
    assert br.api("POST", "/api/plugins/reload", auth=None).status == 401
    assert br.api("GET", "/api/plugins", auth=None).status == 401
    # written in place (not renamed): polling waits for it to settle, an explicit reload does not
    (plugdir / "generic.wasm").write_bytes(build_example().read_bytes())
    r = br.api("POST", "/api/plugins/reload")
    assert r.status == 200, r
    assert sorted(p["format"] for p in r.json()["plugins"]) == sorted(shipped + ["generic"])
    (plugdir / "generic.wasm").unlink()
    r = br.api("POST", "/api/plugins/reload")
    assert sorted(p["format"] for p in r.json()["plugins"]) == shipped
    assert br.api("GET", "/api/plugins/reload").status == 405
    br.api("POST", "/api/users", json_body={"name": "alice", "password": "alice-password-1"})
    assert br.api("POST", "/api/plugins/reload", headers={"Authorization": basic("alice", "alice-password-1")}).status == 403
