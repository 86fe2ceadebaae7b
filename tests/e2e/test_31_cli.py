"""The command-line client (`binaryrepo repo|plugins|user|token|gc`) run as a user runs it: the real binary
against a live server, credentials from the environment. Tables for people, --json equal to what the API
answers, the server's message and a distinct exit code on every error (host/src/cli/)."""
import json
import os
import subprocess

import pytest

from harness.binaryrepo import ADMIN, basic, binary_path
from harness.util import free_port, request


def cli(br, *args, user=ADMIN, token=None, stdin=None, server=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("BINARYREPO_")}
    env["BINARYREPO_SERVER"] = server or br.url
    if token:
        env["BINARYREPO_TOKEN"] = token
    elif user:
        env["BINARYREPO_USER"], env["BINARYREPO_PASSWORD"] = user
    return subprocess.run([str(binary_path()), *args], env=env, input=stdin, capture_output=True, text=True, timeout=60)


def ok(p):
    assert p.returncode == 0, f"exit {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}"
    return p.stdout


def table(text):
    """rows of a table as dicts keyed by its header"""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    header = lines[0]
    # column starts: after two spaces in the header (names like "MANAGED BY" hold one space)
    starts = [0] + [i for i in range(2, len(header)) if header[i - 2:i] == "  " and header[i] != " "]
    names = [header[s:e].strip() for s, e in zip(starts, starts[1:] + [None])]
    return [dict(zip(names, (ln[s:e].strip() for s, e in zip(starts, starts[1:] + [None])))) for ln in lines[1:]]


@pytest.fixture
def br(make_binaryrepo):
    return make_binaryrepo(open=False, repositories=[{"name": "cfg-local", "type": "local", "format": "docker"}])


def test_repositories_table_json_and_lifecycle(br):
    rows = table(ok(cli(br, "repo", "list")))
    assert [r["NAME"] for r in rows] == ["cfg-local"]
    assert rows[0]["TYPE"] == "local" and rows[0]["FORMAT"] == "docker" and rows[0]["MANAGED BY"] == "api"

    out = ok(cli(br, "repo", "create", "hub", "--type", "remote", "--format", "docker", "--url", "http://127.0.0.1:9",
                 "--set", "tag_check_seconds=30"))
    assert "created repository hub" in out
    api = br.api("GET", "/api/repositories/hub").json()
    assert api["url"] == "http://127.0.0.1:9" and api["tag_check_seconds"] == 30
    # --json is the server's JSON, unchanged
    assert json.loads(ok(cli(br, "--json", "repo", "show", "hub"))) == api
    assert json.loads(ok(cli(br, "repo", "list", "--json"))) == br.api("GET", "/api/repositories").json()
    shown = ok(cli(br, "repo", "show", "hub"))
    assert any(ln.split() == ["url", "http://127.0.0.1:9"] for ln in shown.splitlines()), shown

    # update changes what it is told and keeps the rest
    ok(cli(br, "repo", "update", "hub", "--set", "tag_check_seconds=60"))
    after = br.api("GET", "/api/repositories/hub").json()
    assert after["tag_check_seconds"] == 60 and after["url"] == "http://127.0.0.1:9" and after["access_default"] is True

    # a virtual repository with members, listed with them
    ok(cli(br, "repo", "create", "all", "--type", "virtual", "--format", "docker", "--member", "cfg-local", "--member", "hub"))
    rows = {r["NAME"]: r for r in table(ok(cli(br, "repo", "list")))}
    assert rows["all"]["UPSTREAM/MEMBERS"] == "cfg-local,hub"

    assert "deleted repository all" in ok(cli(br, "repo", "delete", "all"))
    assert br.api("GET", "/api/repositories/all").status == 404


def test_errors_carry_the_servers_message_and_an_exit_code(br):
    # the server refuses: its message, exit 1
    p = cli(br, "repo", "create", "cfg-local", "--type", "local", "--format", "docker")
    assert p.returncode == 1 and "already exists" in p.stderr and "409" in p.stderr, p
    p = cli(br, "repo", "create", "x", "--type", "local", "--format", "no-such-format")
    assert p.returncode == 1 and "400" in p.stderr and "no-such-format" in p.stderr, p
    p = cli(br, "repo", "show", "nope")
    assert p.returncode == 1 and "404" in p.stderr and "nope" in p.stderr, p
    assert p.stdout == ""
    # no or wrong credentials: exit 4 and what to set
    p = cli(br, "repo", "list", user=None)
    assert p.returncode == 4 and "401" in p.stderr and "BINARYREPO_TOKEN" in p.stderr, p
    p = cli(br, "repo", "list", user=("admin", "wrong"))
    assert p.returncode == 4, p
    # nobody listening: exit 3, one line and a hint
    dead = f"http://127.0.0.1:{free_port()}"
    p = cli(br, "repo", "list", server=dead)
    assert p.returncode == 3, p
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 2 and "cannot reach" in lines[0] and "refused" in lines[0].lower(), p.stderr
    assert lines[1].startswith("hint:") and "BINARYREPO_SERVER" in lines[1]
    # usage mistakes: exit 2 without asking the server
    p = cli(br, "repo", "update", "cfg-local", "--set", "novalue")
    assert p.returncode == 2 and "KEY=VALUE" in p.stderr, p
    p = cli(br, "repo", "list", server="ftp://example")
    assert p.returncode == 2, p
    p = cli(br, "repo", "show", "../users")
    assert p.returncode == 2, p


def test_users_passwords_and_tokens(br):
    ok(cli(br, "user", "create", "alice", "--group", "dev", "--password-stdin", stdin="alice-password-1\n"))
    rows = {r["NAME"]: r for r in table(ok(cli(br, "user", "list")))}
    assert rows["alice"]["ADMIN"] == "no" and rows["alice"]["GROUPS"] == "dev"
    assert rows["admin"]["ADMIN"] == "yes"
    me = request("GET", br.url + "/api/users/me", headers={"Authorization": basic("alice", "alice-password-1")})
    assert me.status == 200 and me.json()["groups"] == ["dev"]
    # alice is no admin: the server's refusal, exit 4
    p = cli(br, "user", "list", user=("alice", "alice-password-1"))
    assert p.returncode == 4 and "403" in p.stderr and "not an admin" in p.stderr, p

    ok(cli(br, "user", "passwd", "alice", stdin="alice-password-2\n"))
    assert request("GET", br.url + "/api/users/me", headers={"Authorization": basic("alice", "alice-password-2")}).status == 200
    assert request("GET", br.url + "/api/users/me", headers={"Authorization": basic("alice", "alice-password-1")}).status == 401
    p = cli(br, "user", "create", "bob")
    assert p.returncode == 2 and "--password-stdin" in p.stderr, p

    # alice makes a token and uses it as BINARYREPO_TOKEN
    created = json.loads(ok(cli(br, "--json", "token", "create", "laptop", user=("alice", "alice-password-2"))))
    secret = created["token"]
    assert secret.startswith("brt_")
    rows = table(ok(cli(br, "token", "list", token=secret)))
    assert [(r["ID"], r["NAME"], r["USER"], r["EXPIRES"]) for r in rows] == [(created["id"], "laptop", "alice", "-")]
    human = ok(cli(br, "token", "create", "ci", "--expires-in", "3600", user=("alice", "alice-password-2")))
    assert "brt_" in human and "shown only now" in human
    ok(cli(br, "token", "revoke", created["id"], token=secret))
    p = cli(br, "token", "list", token=secret)
    assert p.returncode == 4, p

    ok(cli(br, "user", "delete", "alice"))
    assert br.api("GET", "/api/users/alice").status == 404


def test_plugins_and_gc(br):
    rows = table(ok(cli(br, "plugins")))
    docker = [r for r in rows if r["FORMAT"] == "docker"]
    assert docker and docker[0]["FILE"].endswith(".wasm"), rows
    listing = json.loads(ok(cli(br, "plugins", "--json")))
    assert listing == br.api("GET", "/api/plugins").json()

    p = cli(br, "gc", "--grace-seconds", "0")
    out = ok(p)
    assert out.startswith("removed ") and "kept" in out, out
    # progress on stderr while the collection runs in the background
    assert "gc: " in p.stderr and "repositories" in p.stderr, p.stderr
    report = json.loads(ok(cli(br, "--json", "gc", "--grace-seconds", "0")))
    assert report["state"] == "finished" and report["removed"] == 0, report
    assert report == br.api("GET", "/api/gc").json()
