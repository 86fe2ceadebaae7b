"""Users, tokens and permissions with real clients (skopeo, podman, a real Docker Engine) against a server
with its secure defaults (`open=False`): remotes readable by anyone, local repositories by signed-in
users, writes only where granted, the management API for admins. Each test names the guard it checks
(host/src/server/gate.rs `allowed`, api.rs `who_may`, auth/ for credentials and tokens)."""
import base64
import json
import os
import re
import stat
import time

import pytest

from harness.binaryrepo import ADMIN, basic
from harness.clients import skopeo_copy, skopeo_raw
from harness.images import skopeo
from harness.util import request, run

LOCAL = "team-local"
REMOTE = "hub-remote"
ALICE = ("alice", "alice-password-1")
BOB = ("bob", "bob-password-22")


def creds(user):
    return f"{user[0]}:{user[1]}"


def push(image, ref, user=None, check=True):
    extra = ["--dest-creds", creds(user)] if user else []
    return run(["skopeo", "--insecure-policy", "copy", "--dest-tls-verify=false", *extra,
                f"oci:{image.layout}:{image.tag}", f"docker://{ref}"], timeout=300, check=check)


@pytest.fixture
def secure(make_binaryrepo, upstream):
    """a server with its defaults: alice may write to team-local, bob is only signed in"""
    br = make_binaryrepo(open=False)
    assert br.api("POST", "/api/users", {"name": ALICE[0], "password": ALICE[1]}).status == 201
    assert br.api("POST", "/api/users", {"name": BOB[0], "password": BOB[1], "groups": ["readers"]}).status == 201
    r = br.create_local(LOCAL, access=[{"who": "user:alice", "allow": ["write", "delete"]},
                                       {"who": "authenticated", "allow": ["read"]}])
    assert r, r
    br.create_remote(REMOTE, upstream.url)
    return br


def test_management_api_needs_an_admin(secure):
    """api.rs who_may: anonymous 401 with a Basic challenge, a user 403, the admin 200; nothing changes"""
    r = secure.api("POST", "/api/repositories", {"name": "x-repo", "type": "local", "format": "docker"}, auth=None)
    assert r.status == 401 and "Basic" in r.header("WWW-Authenticate")
    r = secure.api("POST", "/api/repositories", {"name": "x-repo", "type": "local", "format": "docker"}, auth=BOB)
    assert r.status == 403 and r.json()["error"]["code"] == "DENIED"
    assert secure.api("GET", "/api/repositories/x-repo").status == 404, "a refused call created nothing"
    assert secure.api("GET", "/api/repositories", auth=("admin", "wrong-password")).status == 401
    assert secure.api("GET", "/api/repositories").status == 200
    assert secure.api("POST", "/api/gc", auth=ALICE).status == 403
    assert secure.api("GET", "/metrics", auth=None).status == 401, "metrics are for admins by default"
    assert secure.api("GET", "/metrics").status == 200
    assert secure.api("GET", "/api/health", auth=None).status == 200
    me = secure.api("GET", "/api/users/me", auth=ALICE)
    assert me.status == 200 and me.json()["name"] == "alice" and me.json()["admin"] is False
    users = secure.api("GET", "/api/users").json()
    assert {u["name"] for u in users} >= {"admin", "alice", "bob"}
    assert "password" not in json.dumps(users) and "$2" not in json.dumps(users), "no hashes in the API"


def test_token_flow_challenge_and_anonymous_pull(secure, images, tmp_path):
    """the /v2/ ping sends anonymous clients to the token service; remotes are readable anonymously
    (gate.rs allowed with the remote default grant); a local repository is not"""
    r = request("GET", secure.url + "/v2/")
    assert r.status == 401
    chal = r.header("WWW-Authenticate")
    assert chal.startswith("Bearer ") and f'realm="{secure.url}/api/token"' in chal and 'service="binaryrepo"' in chal
    assert r.json()["errors"][0]["code"] == "UNAUTHORIZED"
    t = request("GET", secure.url + "/api/token?service=binaryrepo&scope=repository:hub/library/small:pull")
    assert t.status == 200 and t.json()["token"] and t.json()["expires_in"] > 0
    assert request("GET", secure.url + "/api/token", headers={"Authorization": basic("alice", "nope-nope")}).status == 401
    small = images["small"]
    skopeo_copy(small.ref(secure.prefix(REMOTE)), tmp_path / "anon")  # anonymous pull through the remote
    # a local repository: anonymous gets the challenge with the scope it needs, in the OCI shape
    r = request("GET", secure.v2(LOCAL, f"{small.repo}/manifests/{small.tag}"))
    assert r.status == 401 and r.json()["errors"][0]["code"] == "UNAUTHORIZED"
    assert f'scope="repository:{LOCAL}/{small.repo}:pull"' in r.header("WWW-Authenticate")


def test_push_needs_a_grant(secure, images, tmp_path):
    """gate.rs allowed: alice (granted write) pushes; bob (signed in, read only) gets 403 DENIED;
    anonymous gets 401; bob can pull what alice pushed, anonymous cannot"""
    small = images["small"]
    ref = small.ref(secure.prefix(LOCAL))
    out = push(small, ref, check=False)
    assert out.returncode != 0 and b"unauthorized" in out.stderr.lower() + out.stdout.lower()
    out = push(small, ref, user=BOB, check=False)
    assert out.returncode != 0 and b"denied" in out.stderr.lower() + out.stdout.lower()
    push(small, ref, user=ALICE)
    assert skopeo_raw(ref, creds=creds(BOB)) == small.manifest
    assert skopeo_raw(ref, check=False) != small.manifest
    # a direct PUT with Basic credentials: the host answers before the plugin, in the OCI shape
    r = request("PUT", secure.v2(LOCAL, "e2e/small/manifests/x-repo"), body=b"{}",
                headers={"Authorization": basic(*BOB), "Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    assert r.status == 403 and r.json()["errors"][0]["code"] == "DENIED"
    # the audit trail names who did what
    log = open(secure.logfile, errors="replace").read()
    assert re.search(r'audit.*user="?bob"?.*repository="?team-local"?.*outcome="?denied', log), log[-3000:]
    assert re.search(r'audit.*user="?alice"?.*repository="?team-local"?.*outcome="?ok', log)


def test_api_tokens_revoked_and_expired(secure, images):
    """auth/ API tokens: usable as a password by skopeo; revoked and expired ones are refused"""
    small = images["small"]
    ref = small.ref(secure.prefix(LOCAL))
    r = secure.api("POST", "/api/tokens", {"name": "ci-repo"}, auth=ALICE)
    assert r.status == 201, r
    token, token_id = r.json()["token"], r.json()["id"]
    assert token.startswith("brt_")
    assert token not in json.dumps(secure.api("GET", "/api/tokens", auth=ALICE).json()), "shown once"
    push(small, ref, user=(ALICE[0], token))
    r = request("GET", secure.v2(LOCAL, f"{small.repo}/manifests/{small.tag}"), headers={"Authorization": f"Bearer {token}"})
    assert r.status == 200, "an API token is a bearer credential too"
    assert secure.api("DELETE", f"/api/tokens/{token_id}", auth=BOB).status == 404, "not bob's to revoke"
    assert secure.api("DELETE", f"/api/tokens/{token_id}", auth=ALICE).status == 204
    out = push(small, ref, user=(ALICE[0], token), check=False)
    assert out.returncode != 0
    r = request("GET", secure.v2(LOCAL, f"{small.repo}/manifests/{small.tag}"), headers={"Authorization": f"Bearer {token}"})
    assert r.status == 401
    short = secure.api("POST", "/api/tokens", {"name": "short-repo", "expires_in_seconds": 1}, auth=ALICE).json()["token"]
    time.sleep(2.2)
    r = request("GET", secure.v2(LOCAL, f"{small.repo}/manifests/{small.tag}"), headers={"Authorization": basic("alice", short)})
    assert r.status == 401 and r.json()["errors"][0]["code"] == "UNAUTHORIZED"


def test_signing_key_and_first_admin(secure):
    """auth/files.rs: the signing key is private to the server; the first admin came from the environment"""
    key = secure.data_dir / "auth" / "signing.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((secure.data_dir / "auth").stat().st_mode) == 0o700
    log = open(secure.logfile, errors="replace").read()
    assert ADMIN[1] not in log, "the admin password from the environment is never logged"


def test_basic_mode_without_token_service(make_binaryrepo, images, upstream, tmp_path):
    """token_service = false: challenges ask for Basic; anonymous pulls of a remote need no login"""
    br = make_binaryrepo(open=False, config={"token_service": False})
    br.api("POST", "/api/users", {"name": ALICE[0], "password": ALICE[1]})
    br.create_local(LOCAL, access=[{"who": "user:alice", "allow": ["write"]}])
    br.create_remote(REMOTE, upstream.url)
    small = images["small"]
    r = request("GET", br.v2(LOCAL, f"{small.repo}/manifests/{small.tag}"))
    assert r.status == 401 and r.header("WWW-Authenticate").startswith("Basic ")
    r = request("GET", br.url + "/v2/")
    assert r.status == 401 and r.header("WWW-Authenticate") == 'Basic realm="binaryrepo"', "clients learn to send Basic"
    push(small, small.ref(br.prefix(LOCAL)), user=ALICE)
    skopeo_copy(small.ref(br.prefix(REMOTE)), tmp_path / "anon")
    r = request("GET", br.v2(LOCAL, f"{small.repo}/manifests/{small.tag}"), headers={"Authorization": basic(*ALICE)})
    assert r.status == 200


def test_podman_login_push_pull(secure, images, podman, tmp_path):
    small = images["small"]
    podman("login", "--tls-verify=false", "-u", ALICE[0], "-p", ALICE[1], secure.host)
    try:
        image_id = podman("pull", "-q", small.podman_oci(tmp_path)).stdout.decode().split()[-1]
        ref = f"{secure.prefix(LOCAL)}/e2e/podman:1"
        podman("tag", image_id, ref)
        podman("push", "-q", "--tls-verify=false", ref)
        assert skopeo_raw(ref, creds=creds(BOB))
    finally:
        podman("logout", secure.host, check=False)
    out = podman("login", "--tls-verify=false", "-u", ALICE[0], "-p", "wrong-password", secure.host, check=False)
    assert out.returncode != 0


@pytest.fixture
def docker_clean(dockerd):
    dockerd.remove_all_images()
    yield dockerd
    dockerd.remove_all_images()


def test_docker_login_push_pull(secure, images, docker_clean, upstream):
    """a real Docker Engine: a wrong password fails `docker login`; after login it pushes to the local
    repository through the token flow; an anonymous pull of the remote works without login"""
    d = docker_clean
    small = images["small"]
    bad = run(["docker", "login", "-u", ALICE[0], "-p", "wrong-password", secure.host], env=d.env, check=False)
    assert bad.returncode != 0
    ok = run(["docker", "login", "-u", ALICE[0], "-p", ALICE[1], secure.host], env=d.env, check=False)
    assert ok.returncode == 0, ok.stderr
    try:
        remote_ref = small.ref(secure.prefix(REMOTE))
        d.docker("pull", "-q", remote_ref)
        local_ref = f"{secure.prefix(LOCAL)}/e2e/fromdocker:1"
        d.docker("tag", remote_ref, local_ref)
        d.docker("push", local_ref)
        pushed = json.loads(skopeo_raw(local_ref, creds=creds(BOB)))
        assert pushed["schemaVersion"] == 2 and len(pushed["layers"]) == len(json.loads(small.manifest)["layers"])
    finally:
        run(["docker", "logout", secure.host], env=d.env, check=False)


def test_plugin_built_for_0_2_1_still_serves(make_binaryrepo, images, tmp_path):
    """plugins/compat.rs: the Docker plugin as built against contract 0.2.1 loads and serves push and pull"""
    from pathlib import Path
    import shutil
    plugdir = tmp_path / "plugins-0.2.1"
    plugdir.mkdir()
    root = Path(__file__).resolve().parents[2]
    shutil.copy(root / "plugins" / "testdata" / "prebuilt" / "docker-0.2.1.wasm", plugdir / "docker.wasm")
    br = make_binaryrepo(config={"plugin_dir": str(plugdir)})
    plugins = br.api("GET", "/api/plugins").json()["plugins"]
    assert [(p["format"], p["contract"]) for p in plugins] == [("docker", "0.2.1")]
    br.create_local(LOCAL)
    small = images["small"]
    ref = small.ref(br.prefix(LOCAL))
    push(small, ref)
    skopeo_copy(ref, tmp_path / "back")
    assert skopeo_raw(ref) == small.manifest


def test_ctr_push_with_user(secure, images, containerd, upstream):
    """containerd's ctr: `--user` through the token flow (its POST grant_type=password request)"""
    small = images["small"]
    remote_ref = small.ref(secure.prefix(REMOTE))
    containerd.ctr("images", "pull", "--plain-http", remote_ref)  # anonymous pull of the remote
    local_ref = f"{secure.prefix(LOCAL)}/e2e/fromctr:1"
    try:
        containerd.ctr("images", "tag", remote_ref, local_ref)
        out = containerd.ctr("images", "push", "--plain-http", "--user", creds(BOB), local_ref, check=False)
        assert out.returncode != 0, "bob may not write"
        containerd.ctr("images", "push", "--plain-http", "--user", creds(ALICE), local_ref)
        assert json.loads(skopeo_raw(local_ref, creds=creds(BOB)))["schemaVersion"] == 2
    finally:
        containerd.ctr("images", "rm", remote_ref, local_ref, check=False)


@pytest.mark.parametrize("major", [3, 4])
def test_helm_registry_login(secure, major, tmp_path):
    """helm registry login checks the password; after it, helm pushes an OCI chart where it may write"""
    from harness.helm import Helm
    try:
        helm = Helm(major, tmp_path / f"helm{major}")
    except RuntimeError as e:
        pytest.skip(f"helm {major} could not be fetched: {e}")
    plain = ["--insecure"] + (["--plain-http"] if major >= 4 else [])
    out = helm("registry", "login", secure.host, *plain, "-u", ALICE[0], "-p", "wrong-password", check=False)
    assert out.returncode != 0
    helm("registry", "login", secure.host, *plain, "-u", ALICE[0], "-p", ALICE[1])
    src = tmp_path / "src"
    src.mkdir()
    helm("create", "authchart", cwd=src)
    helm("package", str(src / "authchart"), "--version", "0.1.0", "-d", str(tmp_path))
    helm("push", str(tmp_path / "authchart-0.1.0.tgz"), f"oci://{secure.prefix(LOCAL)}/charts", "--plain-http")
    r = request("GET", secure.v2(LOCAL, "charts/authchart/manifests/0.1.0"),
                headers={"Authorization": basic(*BOB), "Accept": "application/vnd.oci.image.manifest.v1+json"})
    assert r.status == 200


def test_failed_logins_are_slowed_and_logged(secure):
    """auth/throttle.rs: past 5 failures from one address, each further failure waits (1 s, 2 s ...)"""
    bad = {"Authorization": basic("alice", "not-her-password")}
    for _ in range(5):
        assert request("GET", secure.url + "/api/users/me", headers=bad).status == 401
    started = time.monotonic()
    assert request("GET", secure.url + "/api/users/me", headers=bad).status == 401
    assert time.monotonic() - started >= 0.9, "the sixth failure in a row is answered after a delay"
    log = open(secure.logfile, errors="replace").read()
    assert len(re.findall(r'audit.*user="?alice"?.*action="?login"?.*outcome="?failed', log)) >= 6


def test_repository_admin_grant(secure):
    """api.rs may_administer: a user with `admin` on one repository may show and change it (not its
    port), nothing else of the server"""
    grants = [{"who": "user:bob", "allow": ["admin"]}, {"who": "authenticated", "allow": ["read"]}]
    assert secure.api("PUT", f"/api/repositories/{LOCAL}",
                      {"type": "local", "format": "docker", "access": grants}).status == 200
    assert secure.api("GET", f"/api/repositories/{LOCAL}", auth=BOB).status == 200
    assert secure.api("GET", f"/api/repositories/{REMOTE}", auth=BOB).status == 403
    r = secure.api("PUT", f"/api/repositories/{LOCAL}", {"type": "local", "format": "docker", "access": grants,
                                                          "delete_enabled": False}, auth=BOB)
    assert r.status == 200 and r.json()["delete_enabled"] is False
    r = secure.api("PUT", f"/api/repositories/{LOCAL}", {"type": "local", "format": "docker", "access": grants,
                                                          "port": 1}, auth=BOB)
    assert r.status == 403
    assert secure.api("PUT", "/api/repositories/bobs-new", {"type": "local", "format": "docker"}, auth=BOB).status == 403
    assert secure.api("GET", "/api/repositories", auth=BOB).status == 403
