"""Repository management API: create/list/get/replace/delete, the original project's call, write-only
passwords, bad input (4xx JSON naming the problem, nothing half-created), persistence across restarts."""
import pytest

UPSTREAM = "http://127.0.0.1:9"  # never contacted by these tests
SECRET = "s3cret-Pa55word-never-shown"


def names(br):
    return sorted(r["name"] for r in br.repos())


def error_of(r, status):
    """the error object of a 4xx answer: {"error": {"code", "message"}}"""
    assert r.status == status, f"expected {status}, got {r!r}"
    try:
        body = r.json()
    except ValueError:
        pytest.fail(f"error body is not JSON: {r!r}")
    err = body.get("error") if isinstance(body, dict) else None
    assert isinstance(err, dict) and err.get("code") and err.get("message"), f"not an error object: {r!r}"
    return err


def test_health(br):
    r = br.api("GET", "/api/health")
    assert r.status == 200 and r.json().get("status") == "ok", r


def test_create_list_get_replace_delete(br):
    before = names(br)
    r = br.api("POST", "/api/repositories",
               json_body={"name": "docker-remote", "type": "remote", "format": "docker", "url": UPSTREAM})
    assert r.status == 201, r
    created = r.json()
    assert (created["name"], created["type"], created["format"], created["url"]) == \
        ("docker-remote", "remote", "docker", UPSTREAM), created
    assert created.get("tag_check_seconds") == 300, f"default tag_check_seconds: {created}"

    assert names(br) == sorted(before + ["docker-remote"])
    got = br.api("GET", "/api/repositories/docker-remote")
    assert got.status == 200 and got.json() == created, (got, created)

    # PUT an existing name replaces it (200), PUT a new name creates it (201)
    r = br.api("PUT", "/api/repositories/docker-remote",
               json_body={"name": "docker-remote", "type": "remote", "format": "docker", "url": UPSTREAM,
                          "tag_check_seconds": 60})
    assert r.status == 200, r
    got = br.api("GET", "/api/repositories/docker-remote").json()
    assert got["tag_check_seconds"] == 60, got
    r = br.api("PUT", "/api/repositories/docker-other",
               json_body={"type": "remote", "format": "docker", "url": UPSTREAM})
    assert r.status == 201, r
    assert br.api("GET", "/api/repositories/docker-other").status == 200

    r = br.api("DELETE", "/api/repositories/docker-remote")
    assert r.status == 204, r
    error_of(br.api("GET", "/api/repositories/docker-remote"), 404)
    error_of(br.api("DELETE", "/api/repositories/docker-remote"), 404)
    assert names(br) == sorted(before + ["docker-other"])


def test_original_call_and_write_only_password(br):
    r = br.api("POST", "/api/repository",
               json_body={"name": "docker-remote", "repo_type": "remote", "package_type": "docker",
                          "remote_url": UPSTREAM, "username": "alice", "password": SECRET})
    assert r.status in (200, 201), r
    assert SECRET.encode() not in r.body, f"the create answer echoes the password: {r!r}"
    got = br.api("GET", "/api/repositories/docker-remote")
    assert got.status == 200, got
    obj = got.json()
    assert (obj["type"], obj["format"], obj["url"]) == ("remote", "docker", UPSTREAM), obj
    assert obj.get("has_credentials") is True and obj.get("username") == "alice", obj
    assert "password" not in obj or obj["password"] in (None, ""), obj
    # the alias names work on the other endpoints too
    r = br.api("PUT", "/api/repositories/docker-alias",
               json_body={"repo_type": "remote", "package_type": "docker", "remote_url": UPSTREAM,
                          "username": "bob", "password": SECRET})
    assert r.status == 201, r
    assert br.api("GET", "/api/repositories/docker-alias").json()["url"] == UPSTREAM
    for path in ("/api/repositories", "/api/repositories/docker-remote", "/api/repositories/docker-alias"):
        r = br.api("GET", path)
        assert r.status == 200 and SECRET.encode() not in r.body, f"GET {path} shows the password: {r!r}"


BAD = [
    ("unknown format", {"name": "r-fmt", "type": "remote", "format": "nosuchformat", "url": UPSTREAM}, 400,
     ("format", "nosuchformat")),
    ("unknown type", {"name": "r-type", "type": "weird", "format": "docker", "url": UPSTREAM}, 400,
     ("type", "weird")),
    ("upper-case name", {"name": "Docker", "type": "remote", "format": "docker", "url": UPSTREAM}, 400, ("name",)),
    ("name starting with -", {"name": "-x", "type": "remote", "format": "docker", "url": UPSTREAM}, 400, ("name",)),
    ("name with /", {"name": "a/b", "type": "remote", "format": "docker", "url": UPSTREAM}, 400, ("name",)),
    ("name with ..", {"name": "..", "type": "remote", "format": "docker", "url": UPSTREAM}, 400, ("name",)),
    ("name of 65 chars", {"name": "a" * 65, "type": "remote", "format": "docker", "url": UPSTREAM}, 400, ("name",)),
    ("empty name", {"name": "", "type": "remote", "format": "docker", "url": UPSTREAM}, 400, ("name",)),
    ("remote without url", {"name": "r-nourl", "type": "remote", "format": "docker"}, 400, ("url",)),
    ("duplicate", {"name": "taken", "type": "remote", "format": "docker", "url": UPSTREAM}, 409,
     ("taken", "exist", "duplicate", "already")),
    ("original call, unknown format", {"name": "r-orig", "repo_type": "remote", "package_type": "nosuchformat",
                                       "remote_url": UPSTREAM}, 400, ("format", "nosuchformat", "package_type")),
]


def test_bad_input_is_rejected_and_nothing_half_created(br):
    br.create_remote("taken", UPSTREAM)
    before = br.repos()
    for what, obj, status, words in BAD:
        path = "/api/repository" if "repo_type" in obj else "/api/repositories"
        err = error_of(br.api("POST", path, json_body=obj), status)
        msg = (err["message"] + " " + err["code"]).lower()
        assert any(w in msg for w in words), f"{what}: the error does not name the problem: {err}"
        assert br.repos() == before, f"{what}: the repository list changed"
    # PUT of a new name with bad content creates nothing
    err = error_of(br.api("PUT", "/api/repositories/r-put",
                          json_body={"type": "remote", "format": "nosuchformat", "url": UPSTREAM}), 400)
    assert "format" in (err["message"] + err["code"]).lower(), err
    error_of(br.api("GET", "/api/repositories/r-put"), 404)
    # a bad replacement leaves the old definition alone
    error_of(br.api("PUT", "/api/repositories/taken", json_body={"type": "remote", "format": "docker"}), 400)
    assert br.api("GET", "/api/repositories/taken").json()["url"] == UPSTREAM
    # not JSON at all
    error_of(br.api("POST", "/api/repositories", body=b"{not json", headers={"Content-Type": "application/json"}), 400)
    assert br.repos() == before


def test_at_most_one_default(br):
    br.create_remote("first", UPSTREAM, default=True)
    r = br.api("POST", "/api/repositories",
               json_body={"name": "second", "type": "remote", "format": "docker", "url": UPSTREAM, "default": True})
    assert r.status in (201, 400, 409), r
    defaults = [x["name"] for x in br.repos() if x.get("default")]
    assert len(defaults) == 1, f"default repositories after a second default: {defaults}"
    if r.status != 201:
        error_of(r, r.status)


def test_repositories_persist_across_restart(br):
    br.create_remote("persist-remote", UPSTREAM, username="carol", password=SECRET, tag_check_seconds=42)
    br.create_remote("persist-vhost", UPSTREAM, hostnames=["docker-vhost.example.test"], default=True)
    br.create_remote("persist-deleted", UPSTREAM)
    assert br.api("DELETE", "/api/repositories/persist-deleted").status == 204
    before = sorted(br.repos(), key=lambda x: x["name"])
    br.restart()
    after = sorted(br.repos(), key=lambda x: x["name"])
    assert after == before
    obj = br.api("GET", "/api/repositories/persist-remote").json()
    assert obj["has_credentials"] is True and obj["tag_check_seconds"] == 42, obj
    assert "persist-deleted" not in names(br)


def test_a_port_another_repository_holds_is_refused_and_keeps_serving(br):
    """api.rs create/put: a failed call stops only a listener it started itself"""
    from harness.binaryrepo import ADMIN, basic
    from harness.util import free_port, request
    port = free_port()
    assert br.create_local("holder", port=port)
    ping = lambda: request("GET", f"http://127.0.0.1:{port}/v2/", headers={"Authorization": basic(*ADMIN)}, timeout=5)
    assert ping().status == 200
    r = br.api("POST", "/api/repositories", {"name": "taker", "type": "local", "format": "docker", "port": port})
    assert r.status == 409, r
    assert ping().status == 200, "the holder's listener still serves after a refused create"
    assert br.create_local("other")
    r = br.api("PUT", "/api/repositories/other", {"type": "local", "format": "docker", "port": port})
    assert r.status == 409, r
    assert ping().status == 200, "and after a refused replace"
    assert br.api("GET", "/api/repositories/taker").status == 404


def test_ready(br):
    """GET /api/ready: open to anyone, 200 when the data directory and the metadata store take writes"""
    r = br.api("GET", "/api/ready", auth=None)
    assert r.status == 200 and r.json() == {"status": "ready"}, r
    assert br.api("POST", "/api/ready").status == 405
