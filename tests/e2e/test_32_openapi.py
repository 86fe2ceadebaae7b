"""The OpenAPI description (`GET /api/openapi.json`) is kept true by schemathesis: every documented operation,
called as the admin against a live server with generated inputs, answers no 5xx, a status the description
lists and a body its schema allows; afterwards nothing is half-created (every repository listed is
served and survives a restart, and users alike)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.binaryrepo import ADMIN, basic
from harness.util import request

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
# schemathesis signs in as an admin declared in the configuration file, which the API cannot change: it
# changes and deletes the users it finds, and one that changed its own password would only get 401s
FUZZER = ("fuzz-admin", "fuzz-admin-password-77")


def bcrypt(password):
    out = subprocess.run(["htpasswd", "-nbBC", "4", "x", password], capture_output=True, text=True, check=True).stdout
    return out.strip().split(":", 1)[1]


def concrete(path):
    return path.replace("{name}", "probe-local").replace("{id}", "no-such-token")


def missing_operations(br, spec):
    """operations another part of the server provides that this build does not (yet): they answer
    "no API" (404) or 405; excluded from the run, listed in its output"""
    out = []
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method == "parameters":
                continue
            r = request(method.upper(), br.url + concrete(path), headers={"Authorization": basic(*FUZZER)},
                        json_body={} if method in ("post", "put", "patch") else None)
            text = r.body.decode(errors="replace")
            if r.status == 405 or (r.status == 404 and "no API" in text):
                out.append(op["operationId"])
    return out


def test_the_description_holds_for_every_operation(make_binaryrepo, tmp_path):
    br = make_binaryrepo(open=False, repositories=[{"name": "probe-local", "type": "local", "format": "docker"}],
                         config={"users": [{"name": FUZZER[0], "password_hash": bcrypt(FUZZER[1]), "admin": True}]})
    r = request("GET", br.url + "/api/openapi.json")
    assert r.status == 200 and r.header("content-type") == "application/json"
    spec = r.json()
    assert spec["openapi"].startswith("3.1")
    # every route the server answers is described (health, metrics, repositories, users, tokens, gc, plugins)
    for path in ("/api/health", "/api/ready", "/api/repositories", "/api/repositories/{name}", "/api/users",
                 "/api/users/me", "/api/tokens", "/api/tokens/{id}", "/api/gc", "/api/plugins", "/metrics"):
        assert path in spec["paths"], path
    skipped = missing_operations(br, spec)
    print("operations this build does not serve (excluded):", skipped)
    cmd = [str(SCHEMATHESIS), "run", br.url + "/api/openapi.json", "--url", br.url,
           "--checks", "not_a_server_error,response_schema_conformance,status_code_conformance",
           "--max-examples", os.environ.get("BINARYREPO_E2E_OPENAPI_EXAMPLES", "25"),
           "--phases", "examples,coverage,fuzzing",
           "--auth", f"{FUZZER[0]}:{FUZZER[1]}", "--request-timeout", "30", "--workers", "1",
           "--max-time", "120", "--suppress-health-check", "all", "--continue-on-failure", "--warnings", "off"]
    for op in skipped:
        cmd += ["--exclude-operation-id", op]
    env = {**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_HOOKS": ""}
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path, env=env)
    print(p.stdout[-2500:])
    assert p.returncode == 0, f"schemathesis found problems:\n{p.stdout[-12000:]}\n{p.stderr[-3000:]}\n{br.log_tail(20)}"

    # nothing half-created: what the API lists it serves, and the same survives a restart
    repos = br.api("GET", "/api/repositories", auth=FUZZER).json()
    assert isinstance(repos, list), repos
    for repo in repos:
        got = br.api("GET", f"/api/repositories/{repo['name']}", auth=FUZZER)
        assert got.status == 200 and got.json() == repo, repo
    users = br.api("GET", "/api/users", auth=FUZZER).json()
    for user in users:
        assert br.api("GET", f"/api/users/{user['name']}", auth=FUZZER).json() == user
    br.restart()
    assert br.api("GET", "/api/repositories", auth=FUZZER).json() == repos
    assert br.api("GET", "/api/users", auth=FUZZER).json() == users
