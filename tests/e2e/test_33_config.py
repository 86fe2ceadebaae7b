"""Configuration from the environment and reloads: `BINARYREPO_<KEY>` overrides the file; SIGHUP (and a
change of the file, polled) re-reads it, changes live settings and reconciles the repositories the file
manages (`repositories_mode = "managed"`); `log_format = "json"` makes every line a JSON object whose
access lines carry the client and the user; the health and readiness gauges (host/src/config.rs,
host/src/reload.rs, host/src/logging.rs)."""
import json
import signal
import time

import pytest

from harness.binaryrepo import ADMIN, basic
from harness.util import request, wait_until


def log_text(br):
    return br.logfile.read_text(errors="replace")


def anon_metrics(br):
    return request("GET", br.url + "/metrics").status


def test_environment_overrides_the_file(make_binaryrepo, monkeypatch):
    # the file (the harness's open mode) says metrics are anonymous; the environment says no
    monkeypatch.setenv("BINARYREPO_METRICS_ANONYMOUS", "false")
    monkeypatch.setenv("BINARYREPO_UPLOAD_SESSIONS_TOTAL", "7")
    monkeypatch.setenv("BINARYREPO_REPOSITORIES", '[{name = "from-env", type = "local", format = "docker"}]')
    monkeypatch.setenv("BINARYREPO_NOT_A_KEY", "1")
    br = make_binaryrepo(repositories=[{"name": "from-file", "type": "local", "format": "docker"}])
    assert anon_metrics(br) == 401
    assert [r["name"] for r in br.repos()] == ["from-env"]
    wait_until(lambda: "BINARYREPO_NOT_A_KEY" in log_text(br), timeout=10, what="the unknown variable in the log")
    text = log_text(br)
    assert "not a configuration key" in text
    # the first admin's password is no key either, and not reported
    assert "variable=BINARYREPO_ADMIN_PASSWORD" not in text


def test_a_bad_environment_value_stops_the_start(make_binaryrepo, monkeypatch):
    monkeypatch.setenv("BINARYREPO_PLUGIN_CPU_MS", "lots")
    br = make_binaryrepo(start=False)
    with pytest.raises(Exception) as e:
        br.start(timeout=10)
    assert "plugin_cpu_ms" in str(e.value), str(e.value)


def managed(br):
    return {r["name"]: r for r in br.repos()}


def reload(br, how="SIGHUP"):
    br._write_config()
    if how == "SIGHUP":
        br.proc.send_signal(signal.SIGHUP)


@pytest.mark.parametrize("how", ["SIGHUP", "watch"])
def test_reload_reconciles_file_managed_repositories_and_live_settings(make_binaryrepo, how):
    br = make_binaryrepo(
        config={"repositories_mode": "managed", "config_watch_seconds": 1 if how == "watch" else 0},
        repositories=[{"name": "a", "type": "local", "format": "docker"}])
    repos = managed(br)
    assert repos["a"]["managed_by"] == "file"
    # the API may not change what the file manages: 409 and where to change it
    r = br.api("PUT", "/api/repositories/a", {"type": "local", "format": "docker", "tag_check_seconds": 5})
    assert r.status == 409 and "configuration file" in r.json()["error"]["message"], r
    assert br.api("DELETE", "/api/repositories/a").status == 409
    # repositories the file does not declare are the API's
    br.create_local("b")
    assert managed(br)["b"]["managed_by"] == "api"
    assert anon_metrics(br) == 200

    time.sleep(1.1)  # a new modification time for the watch
    br.repositories = [{"name": "a", "type": "local", "format": "docker", "tag_check_seconds": 77},
                       {"name": "c", "type": "remote", "format": "docker", "url": "http://127.0.0.1:9"}]
    br.config["metrics_anonymous"] = False
    br.config["plugin_memory_mib"] = 80
    reload(br, how)
    wait_until(lambda: "c" in managed(br), timeout=15, what="repository c from the reloaded file")
    repos = managed(br)
    assert repos["a"]["tag_check_seconds"] == 77 and repos["c"]["managed_by"] == "file"
    assert repos["b"]["managed_by"] == "api"
    wait_until(lambda: anon_metrics(br) == 401, timeout=10, what="metrics_anonymous = false to take effect")
    wait_until(lambda: "plugin_memory_mib" in log_text(br) and "after a restart" in log_text(br), timeout=5,
               what="the needs-a-restart warning")

    # dropped from the file: kept, said so, and the API's from now on
    time.sleep(1.1)
    br.repositories = [{"name": "a", "type": "local", "format": "docker", "tag_check_seconds": 77}]
    reload(br, how)
    wait_until(lambda: managed(br)["c"]["managed_by"] == "api", timeout=15, what="c to be released to the API")
    wait_until(lambda: "no longer declared" in log_text(br), timeout=5, what="the warning about c")
    assert br.api("DELETE", "/api/repositories/c").status == 204

    # a file that does not parse: logged, the running configuration stays
    time.sleep(1.1)
    br.conf.write_text(br.conf.read_text() + "\nthis is not toml\n")
    if how == "SIGHUP":
        br.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "not reloaded" in log_text(br), timeout=15, what="the bad file to be reported")
    assert br.running() and managed(br)["a"]["managed_by"] == "file"


def test_seeded_repositories_changed_in_the_file_are_reported_not_applied(make_binaryrepo):
    br = make_binaryrepo(repositories=[{"name": "a", "type": "local", "format": "docker"}])
    assert managed(br)["a"]["managed_by"] == "api"
    br.repositories = [{"name": "z", "type": "local", "format": "docker"}]
    reload(br)
    wait_until(lambda: "not applied" in log_text(br), timeout=15, what="the seed-mode warning")
    assert set(managed(br)) == {"a"}
    # the API still owns it
    assert br.api("DELETE", "/api/repositories/a").status == 204


def test_json_log_lines_carry_client_and_user_and_log_level_changes_live(make_binaryrepo):
    br = make_binaryrepo(config={"log_format": "json", "log_level": "warn"},
                         repositories=[{"name": "a-local", "type": "local", "format": "docker"}])
    assert br.api("GET", "/api/repositories").status == 200
    time.sleep(0.5)
    assert '"served"' not in log_text(br), "log_level = warn writes no access lines"
    br.config["log_level"] = "info"
    reload(br)
    wait_until(lambda: "log level changed" in log_text(br), timeout=15, what="the new log level")
    assert br.api("GET", "/api/repositories").status == 200
    assert request("GET", br.url + "/v2/a-local/x/manifests/1").status in (401, 404)
    assert request("GET", br.url + "/api/users/me", headers={"Authorization": basic("admin", "wrong")}).status == 401

    def lines():
        out = []
        for ln in log_text(br).splitlines():
            if ln.startswith("=== start"):  # the harness's own marker
                continue
            out.append(json.loads(ln))  # every line is JSON
        return out

    def served(path):
        return [x for x in lines() if x.get("fields", {}).get("message") == "served" and x["span"]["path"] == path]

    wait_until(lambda: served("/api/users/me"), timeout=10, what="the access lines")
    admin = served("/api/repositories")[-1]
    assert admin["fields"]["user"] == ADMIN[0] and admin["fields"]["client"] == "127.0.0.1"
    assert admin["fields"]["status"] == 200 and admin["level"] == "INFO"
    anonymous = served("/v2/a-local/x/manifests/1")[-1]
    assert anonymous["fields"]["user"] is None and anonymous["span"]["repo"] == "a-local"
    refused = served("/api/users/me")[-1]
    assert refused["fields"]["user"] is None and refused["fields"]["status"] == 401
    # application lines are JSON too
    assert any(x.get("fields", {}).get("message") == "log level changed" for x in lines())


def test_health_and_readiness_gauges(make_binaryrepo):
    br = make_binaryrepo()
    text = request("GET", br.url + "/metrics").body.decode()
    assert "binaryrepo_health 1" in text and "binaryrepo_ready 1" in text
    for check in ("data_dir", "metadata", "plugins"):
        assert f'binaryrepo_ready_check{{check="{check}"}} 1' in text
    assert text.rstrip().endswith("# EOF")
    # the data directory's write check fails (its probe file's name taken by a directory, which stops
    # root too): not ready, in the gauges as in /api/ready
    probe = br.data_dir / ".ready-probe"
    probe.mkdir()
    try:
        text = request("GET", br.url + "/metrics").body.decode()
        assert "binaryrepo_ready 0" in text and 'binaryrepo_ready_check{check="data_dir"} 0' in text
        assert 'binaryrepo_ready_check{check="metadata"} 1' in text and "binaryrepo_health 1" in text
        r = request("GET", br.url + "/api/ready")
        assert r.status == 503 and any("data directory" in x for x in r.json()["reasons"])
    finally:
        probe.rmdir()
    assert "binaryrepo_ready 1" in request("GET", br.url + "/metrics").body.decode()
