"""TLS on the listeners (host server/tls.rs, the accept loop in server/mod.rs): a certificate from the
operator's own CA (tests/e2e/harness/tlscerts.py), verified by curl, Python and a real Docker Engine;
HTTP/2 by ALPN; blobs byte-exact over TLS (no sendfile there); the certificate files re-read when they
change or on SIGHUP, while connections opened before keep going."""
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import tempfile
import time
from pathlib import Path

import pytest

from harness.clients import Dockerd
from harness.tlscerts import CA, peer_cert_cn, write_pair
from harness.util import free_port, request, run, sha256_file, stream_get, tls_context, trust_ca, wait_until
from harness.binaryrepo import ADMIN

MIB = 1 << 20
FRAME = 4 * MIB  # body frame of a mapped blob (host server/body.rs MAPPED_CHUNK)


@pytest.fixture
def ca(tmp_path):
    return CA(tmp_path / "pki")


def peer_cn(br, cafile) -> str:
    """the CN of the certificate a new connection to `br` is given (verified against `cafile`)"""
    with socket.create_connection((br.ip, br.port), timeout=10) as raw:
        with tls_context(cafile).wrap_socket(raw, server_hostname=br.ip) as s:
            return peer_cert_cn(s.getpeercert(binary_form=True))


def curl(*args, check=True):
    return run(["curl", "-sS", *args], check=check, timeout=300)


def layer_bytes(image, digest) -> bytes:
    return (Path(image.layout) / "blobs" / "sha256" / digest.split(":")[1]).read_bytes()


def test_https_verified_h2_by_alpn_and_https_urls(make_binaryrepo, ca):
    sc = ca.server(cn="binaryrepo-a")
    br = make_binaryrepo(tls=sc)
    br.create_local("docker-local")
    v2 = f"{br.url}/v2/"

    # ALPN: h2 for a client that offers it, HTTP/1.1 for one that does not
    p = curl("--cacert", str(sc.ca), "--http2", "-o", "/dev/null", "-w", "%{http_version} %{http_code}", "-u", ":".join(ADMIN), v2)
    assert p.stdout == b"2 200", p.stdout
    p = curl("--cacert", str(sc.ca), "--http1.1", "-o", "/dev/null", "-w", "%{http_version} %{http_code}", "-u", ":".join(ADMIN), v2)
    assert p.stdout == b"1.1 200", p.stdout
    # the certificate really is checked: without the CA, curl and Python refuse it
    p = curl("-o", "/dev/null", v2, check=False)
    assert p.returncode == 60, (p.returncode, p.stderr)
    with pytest.raises(ssl.SSLCertVerificationError):
        with socket.create_connection((br.ip, br.port), timeout=10) as raw:
            ssl.create_default_context().wrap_socket(raw, server_hostname=br.ip)
    assert peer_cn(br, sc.ca) == "binaryrepo-a"

    # a repository's own port speaks TLS with the same certificate
    port = free_port()
    br.create_local("ported", port=port)
    trust_ca(f"127.0.0.1:{port}", sc.ca)
    p = curl("--cacert", str(sc.ca), "--http2", "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
             "-u", ":".join(ADMIN), f"https://127.0.0.1:{port}/v2/")
    assert p.stdout == b"2 200", p.stdout
    r = request("POST", f"https://127.0.0.1:{port}/v2/team/app/blobs/uploads/", host=f"127.0.0.1:{port}")
    assert r.status == 202 and r.header("Location", "").startswith(f"https://127.0.0.1:{port}/v2/team/app/"), r.headers

    # plain HTTP to the TLS port gets a 400 it can read (guards tls::refuse_plain_http), not TLS bytes
    r = request("GET", f"http://{br.host}/v2/")
    assert r.status == 400 and b"https://" in r.body, r

    # URLs handed out name https (guards the listener's scheme in server/resolve.rs `resolve`)
    r = request("POST", f"{br.url}/v2/docker-local/team/app/blobs/uploads/")
    assert r.status == 202, r
    assert r.header("Location", "").startswith(f"https://{br.host}/v2/docker-local/team/app/blobs/uploads/"), r.headers


def test_blobs_byte_exact_over_tls_whole_ranged_h1_h2(upstream, make_binaryrepo, images, ca, tmp_path):
    """Over TLS the connection is not a plain socket, so mapped blob slices are encrypted from memory rather
    than sent with sendfile (server/zero_copy.rs is for plain TCP only): the bytes must still be the blob's,
    cold and warm, whole and in ranges, over HTTP/1.1 and HTTP/2, with memory flat."""
    big = images["big"]
    layer, size = big.largest_layer()
    data = layer_bytes(big, layer)
    assert size > 3 * FRAME
    sc = ca.server()
    br = make_binaryrepo(tls=sc)
    br.create_remote("docker-remote", upstream.url)
    url = br.v2("docker-remote", f"{big.repo}/blobs/{layer}")
    before = br.memory()

    cold = stream_get(url)  # Python's TLS, HTTP/1.1, while the fill streams from upstream
    assert cold.status == 200 and cold.complete and cold.nbytes == size and cold.digest == layer, cold
    warm = stream_get(url)
    assert warm.status == 200 and warm.complete and warm.nbytes == size and warm.digest == layer, warm

    out = tmp_path / "h2.bin"
    p = curl("--cacert", str(sc.ca), "--http2", "-o", str(out), "-w", "%{http_version} %{http_code}", url)
    assert p.stdout == b"2 200", p.stdout
    assert out.stat().st_size == size and sha256_file(out) == layer

    for start, end in [(0, 1), (size - 1, size), (FRAME - 10, FRAME + 10), (3 * MIB, 5 * MIB + 1),
                       (size - FRAME - 3, size)]:
        r = request("GET", url, headers={"Range": f"bytes={start}-{end - 1}"})
        assert r.status == 206 and r.body == data[start:end], (start, end, r.status, len(r.body))
        assert r.header("Content-Range") == f"bytes {start}-{end - 1}/{size}", r.headers
        p = curl("--cacert", str(sc.ca), "--http2", "-r", f"{start}-{end - 1}", "-o", str(out),
                 "-w", "%{http_version} %{http_code}", url)
        assert p.stdout == b"2 206" and out.read_bytes() == data[start:end], (start, end, p.stdout)

    # small documents too: the manifest, over HTTP/2
    p = curl("--cacert", str(sc.ca), "--http2", "-H", "Accept: application/vnd.oci.image.manifest.v1+json",
             "-o", str(out), "-w", "%{http_version} %{http_code}", br.v2("docker-remote", f"{big.repo}/manifests/1"))
    assert p.stdout == b"2 200" and out.read_bytes() == big.manifest

    # encryption works on the body's frames as they come, never on the whole blob
    grown = br.memory()["VmHWM"] - before["VmHWM"]
    assert grown < 64 * 1024, f"peak RSS grew by {grown // 1024} MiB over three {size // MIB} MiB GETs"


def open_slow_get(br, path, cafile):
    """an HTTPS GET whose body is read only as the test asks: the server blocks on the full socket"""
    conn = http.client.HTTPSConnection(br.ip, br.port, timeout=60, context=tls_context(cafile))
    conn.request("GET", path)
    return conn, conn.getresponse()


def test_certificate_files_reloaded_when_they_change_open_connections_finish(upstream, make_binaryrepo, images, ca):
    """Guards the polling reload in server/tls.rs `Tls::watch` (and `Tls::reload`): replaced files reach new
    handshakes within seconds, while a blob GET opened before the swap completes byte-exact on its old
    session; a broken file keeps the certificate in use."""
    big = images["big"]
    layer, size = big.largest_layer()
    sc = ca.server(cn="binaryrepo-a", serial=1001)
    br = make_binaryrepo(tls=sc)
    br.create_remote("docker-remote", upstream.url)
    url = br.v2("docker-remote", f"{big.repo}/blobs/{layer}")
    assert stream_get(url).digest == layer  # stored: the slow GET below is served from the file

    conn, resp = open_slow_get(br, f"/v2/docker-remote/{big.repo}/blobs/{layer}", sc.ca)
    try:
        assert resp.status == 200
        assert peer_cert_cn(conn.sock.getpeercert(binary_form=True)) == "binaryrepo-a"
        import hashlib
        h = hashlib.sha256()
        head = resp.read(MIB)
        h.update(head)
        n = len(head)

        pem, key_pem, _ = ca.issue("binaryrepo-b", serial=1002)
        write_pair(sc, pem, key_pem)
        wait_until(lambda: peer_cn(br, sc.ca) == "binaryrepo-b", timeout=15, interval=0.2,
                   what="new connections to get the new certificate")
        fresh = stream_get(url)  # a whole request on the new certificate
        assert fresh.status == 200 and fresh.digest == layer, fresh

        # the connection from before the swap is still on its session: the rest of its body arrives
        while True:
            b = resp.read1(MIB)
            if not b:
                break
            h.update(b)
            n += len(b)
        assert n == size and "sha256:" + h.hexdigest() == layer, (n, size)
        assert peer_cert_cn(conn.sock.getpeercert(binary_form=True)) == "binaryrepo-a"
    finally:
        conn.close()

    # a certificate file that is not one: the error is logged, the certificate in use stays
    mark = br.log_mark()
    sc.cert.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    wait_until(lambda: "TLS certificate not reloaded" in br.logfile.read_text()[mark:], timeout=15,
               what="the failed reload to be logged")
    assert peer_cn(br, sc.ca) == "binaryrepo-b"
    assert stream_get(url).digest == layer
    # and when it is fixed, it is taken
    pem, key_pem, _ = ca.issue("binaryrepo-c", serial=1003)
    write_pair(sc, pem, key_pem)
    wait_until(lambda: peer_cn(br, sc.ca) == "binaryrepo-c", timeout=15, interval=0.2, what="the fixed file")


def test_sighup_reloads_and_a_mismatched_key_is_refused(make_binaryrepo, ca):
    """Guards the SIGHUP branch of server/tls.rs `Tls::watch` (polling is off here: tls_reload_seconds = 0)
    and the key check of `load_pair` (CertifiedKey::from_der): a key that is not the certificate's is
    refused and the previous pair stays."""
    sc = ca.server(cn="binaryrepo-a")
    br = make_binaryrepo(tls=sc, config={"tls_reload_seconds": 0})
    pem, key_pem, _ = ca.issue("binaryrepo-b")
    write_pair(sc, pem, key_pem)
    time.sleep(3)
    assert peer_cn(br, sc.ca) == "binaryrepo-a", "reloaded without SIGHUP though polling is off"
    os.kill(br.pid, signal.SIGHUP)
    wait_until(lambda: peer_cn(br, sc.ca) == "binaryrepo-b", timeout=10, interval=0.2, what="the reload on SIGHUP")
    assert br.running()

    other_pem, _, _ = ca.issue("binaryrepo-c")
    write_pair(sc, other_pem, key_pem)  # c's certificate with b's key
    mark = br.log_mark()
    os.kill(br.pid, signal.SIGHUP)
    wait_until(lambda: "TLS certificate not reloaded" in br.logfile.read_text()[mark:], timeout=10,
               what="the refused reload to be logged")
    assert peer_cn(br, sc.ca) == "binaryrepo-b"
    assert request("GET", f"{br.url}/api/health").status == 200


def test_bad_certificate_stops_the_start(make_binaryrepo, ca, tmp_path):
    """A certificate that does not load is a start-up error naming the file, not a plain-HTTP fallback."""
    sc = ca.server()
    sc.key.write_bytes(b"")
    br = make_binaryrepo(tls=sc, start=False)
    with pytest.raises(Exception) as e:
        br.start(timeout=90)
    assert "tls_key" in str(e.value) and str(sc.key) in str(e.value), str(e.value)[-2000:]


# --- a real Docker Engine -------------------------------------------------------------------------------------

CERTS_D = Path("/etc/docker/certs.d")
# Resolves to ::1 for the Engine below only (its own /etc/hosts); under .localhost so that the harness's
# NO_PROXY=localhost keeps it off the egress trap.
REGISTRY_NAME = "brtls.localhost"


@pytest.fixture
def verifying_dockerd(tmp_path, egress_trap):
    """A Docker Engine for which REGISTRY_NAME is [::1]. dockerd puts 127.0.0.0/8 on its insecure list by
    default, and for an insecure registry it skips certificate verification altogether (certs.d is not even
    read), so a registry on 127.0.0.1 would pass with any certificate. A name that resolves to ::1 is not in
    that range: the Engine verifies it like any registry on the network. (dockerd 20.10 does not take an IPv6
    literal in an image reference, hence the name.)"""
    hosts = tmp_path / "hosts"
    hosts.write_text(f"127.0.0.1 localhost\n::1 {REGISTRY_NAME}\n")
    d = Dockerd(Path(tempfile.mkdtemp(prefix="brtls-", dir="/tmp")), egress_trap, hosts=hosts).start()
    yield d
    d.remove_all_images()
    d.stop()
    shutil.rmtree(d.dir.parent, ignore_errors=True)


def test_docker_pull_and_push_verify_the_certificate(upstream, make_binaryrepo, images, verifying_dockerd, ca,
                                                     egress_trap):
    """docker pull and docker push over TLS, with the CA in /etc/docker/certs.d/HOST:PORT/ca.crt and no
    insecure-registries entry; without the CA the Engine refuses the certificate."""
    dockerd = verifying_dockerd
    small = images["small"]
    sc = ca.server(cn="binaryrepo-docker", dns=(REGISTRY_NAME,))
    br = make_binaryrepo(tls=sc, ip="::1")
    br.create_remote("docker-remote", upstream.url)
    br.create_local("docker-local")
    host = f"{REGISTRY_NAME}:{br.port}"
    info = json.loads(dockerd.docker("info", "--format", "{{json .RegistryConfig}}").stdout)
    assert host not in (info.get("IndexConfigs") or {}), info
    assert info.get("InsecureRegistryCIDRs") == ["127.0.0.0/8"], info

    certs = CERTS_D / host
    assert not certs.exists()
    trap_before = len(egress_trap.lines)
    ref = small.ref(f"{host}/docker-remote")
    try:
        # not trusted yet: the Engine refuses the certificate (so the pulls below are verified ones)
        p = dockerd.docker("pull", "-q", ref, check=False)
        assert p.returncode != 0 and b"x509" in p.stderr, p.stderr

        certs.mkdir(parents=True)
        shutil.copy(sc.ca, certs / "ca.crt")
        dockerd.docker("pull", "-q", ref)
        assert dockerd.image_id(ref) == small.config
        assert f"{host}/docker-remote/{small.repo}@{small.digest}" in dockerd.repo_digests(ref)

        pushed = f"{host}/docker-local/team/small:1"
        dockerd.docker("tag", ref, pushed)
        dockerd.docker("push", "-q", pushed)
        r = request("GET", br.v2("docker-local", "team/small/manifests/1"),
                    headers={"Accept": "application/vnd.oci.image.manifest.v1+json, "
                                       "application/vnd.docker.distribution.manifest.v2+json"})
        assert r.status == 200, r
        config = json.loads(r.body)["config"]["digest"]
        assert config == small.config
        r = request("HEAD", br.v2("docker-local", f"team/small/blobs/{config}"))
        assert r.status == 200, r

        dockerd.remove_all_images()
        dockerd.docker("pull", "-q", pushed)
        assert dockerd.image_id(pushed) == small.config
    finally:
        shutil.rmtree(certs, ignore_errors=True)
    assert egress_trap.lines[trap_before:] == []
