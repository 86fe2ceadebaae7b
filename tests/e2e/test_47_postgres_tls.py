"""TLS to the shared metadata store (host storage/postgres_tls.rs; docs/scale.md): libpq's `sslmode`,
`sslrootcert` in the connection URL, against Debian's PostgreSQL with `ssl=on` and a certificate from a
throw-away CA (harness/tlscerts.py), whose pg_hba.conf turns every clear-text connection away (`hostssl`
only) and asks for a SCRAM password. A node with `verify-full` and that CA pushes and pulls, and the server's
`pg_stat_ssl` shows its connections encrypted; the password is bound to the TLS channel; a certificate from
another CA, or one that does not name the host, stops the start with one line that says so; `require`
against a server without TLS (the session's clear-text server) refuses; a client certificate (`sslcert`,
`sslkey`) signs a node in without a password; the password is never in a log."""
import datetime
import os
import urllib.parse
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from harness.binaryrepo import BinaryRepo
from harness.oci import Oci, build_image, sha256
from harness.postgres import Postgres
from harness.tlscerts import CA
from harness.util import Fatal

LOCAL = "docker-local"
# The node's database password: it must never appear in a node's log, whatever goes wrong.
PASSWORD = "pg-Secret-71c3e9"
# Clear text is refused for everyone; over TLS the harness's own user (which creates databases) is
# trusted, the node's user gives a password.
HBA = """\
local     all all                      trust
hostnossl all all        0.0.0.0/0     reject
hostssl   all binaryrepo 127.0.0.1/32  trust
hostssl   all certnode   127.0.0.1/32  cert
hostssl   all all        127.0.0.1/32  scram-sha-256
"""


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return CA(tmp_path_factory.mktemp("pg-pki"), cn="postgres e2e CA")


@pytest.fixture(scope="module")
def tls_postgres(pki):
    """one TLS-only PostgreSQL server for this file's tests"""
    pg = Postgres(tls=pki.server(name="postgres", cn="postgres-e2e"), hba=HBA, client_ca=pki.path).start()
    pg.sql(f"CREATE ROLE node LOGIN PASSWORD '{PASSWORD}'")
    pg.sql("CREATE ROLE certnode LOGIN")
    yield pg
    pg.stop()


def database(pg: Postgres, owner: str = "node") -> str:
    name = "t" + uuid.uuid4().hex[:16]
    pg.sql(f"CREATE DATABASE {name} OWNER {owner}")
    return name


def url(pg: Postgres, db: str, host: str = "127.0.0.1", user: str = f"node:{PASSWORD}", **params) -> str:
    query = urllib.parse.urlencode(params, safe="/")
    return f"postgresql://{user}@{host}:{pg.port}/{db}" + (f"?{query}" if query else "")


def client_cert(ca: CA, cn: str) -> tuple[Path, Path]:
    """a client certificate for the database user `cn` (pg_hba's `cert` maps the CN to the user)"""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])).issuer_name(ca.cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca.key, hashes.SHA256()))
    cert_path, key_path = ca.dir / f"{cn}.crt", ca.dir / f"{cn}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    os.chmod(key_path, 0o600)
    return cert_path, key_path


def node(tmp_path, db_url: str, name: str = "node") -> BinaryRepo:
    return BinaryRepo(tmp_path, name, config={"metadata": {"backend": "postgres", "url": db_url}, "gc_interval_hours": 0})


def refused(n: BinaryRepo) -> str:
    """starts `n`, which must exit; its error line"""
    with pytest.raises(Fatal):
        n.start(timeout=60)
    assert n.proc.returncode not in (0, None)
    log = n.logfile.read_text()
    assert PASSWORD not in log, log
    assert "panicked" not in log, log
    errors = [line for line in log.splitlines() if line.startswith("binaryrepo: ")]
    assert len(errors) == 1, log
    print(errors[0])
    return errors[0]


def encrypted(pg: Postgres, db: str) -> list[str]:
    """ssl|version of every connection to `db`, as the server sees them"""
    out = pg.sql(f"SELECT s.ssl, s.version FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.datname = '{db}'")
    return out.split()


def test_verify_full_with_the_servers_ca_pushes_and_pulls_over_tls(tmp_path, tls_postgres, pki):
    db = database(tls_postgres)
    n = node(tmp_path, url(tls_postgres, db, sslmode="verify-full", sslrootcert=str(pki.path)))
    n.start(timeout=180)
    try:
        n.create_local(LOCAL)
        oci = Oci(n.url, LOCAL)
        image = build_image("pg-tls")
        assert oci.push_image("e2e/app", image, tag="v1").status == 201
        r = oci.get_manifest("e2e/app", "v1")
        assert r.status == 200 and sha256(r.body) == image.digest
        for d in image.blobs:
            got = oci.get_blob("e2e/app", d)
            assert got.status == 200 and sha256(got.body) == d
        # the tag is in PostgreSQL, not in the node
        assert tls_postgres.sql("SELECT count(*) FROM binaryrepo_meta", db=db).strip() != "0"
        seen = encrypted(tls_postgres, db)
        print("pg_stat_ssl of the node's connections:", seen)
        assert seen and all(s.startswith("t|TLSv1.") for s in seen), seen
    finally:
        n.stop()
    log = n.logfile.read_text()
    assert PASSWORD not in log and "panicked" not in log, log


def test_prefer_by_default_takes_tls_and_binds_the_password_to_it(tmp_path, tls_postgres):
    """no sslmode: TLS because the server offers it (pg_hba allows nothing else); channel_binding=require:
    SCRAM-SHA-256-PLUS, the password exchange bound to the server's certificate (tls-server-end-point)"""
    db = database(tls_postgres)
    n = node(tmp_path, url(tls_postgres, db, channel_binding="require"))
    n.start(timeout=180)
    try:
        n.create_local(LOCAL)
        assert any(r["name"] == LOCAL for r in n.repos())
        seen = encrypted(tls_postgres, db)
        assert seen and all(s.startswith("t|") for s in seen), seen
    finally:
        n.stop()


def test_a_client_certificate_signs_the_node_in(tmp_path, tls_postgres, pki):
    """pg_hba's `cert`: no password, the node is the user its certificate names"""
    db = database(tls_postgres, owner="certnode")
    cert, key = client_cert(pki, "certnode")
    base = dict(user="certnode", sslmode="verify-full", sslrootcert=str(pki.path))
    line = refused(node(tmp_path, url(tls_postgres, db, **base), name="no-cert"))
    assert "cannot connect" in line and "certificate" in line, line
    n = node(tmp_path, url(tls_postgres, db, **base, sslcert=str(cert), sslkey=str(key)))
    n.start(timeout=180)
    try:
        n.create_local(LOCAL)
        out = tls_postgres.sql("SELECT DISTINCT s.client_dn FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
                               f"WHERE a.datname = '{db}'")
        assert out.split() == ["/CN=certnode"], out
    finally:
        n.stop()


def test_a_hostssl_only_server_turns_clear_text_away(tmp_path, tls_postgres):
    db = database(tls_postgres)
    line = refused(node(tmp_path, url(tls_postgres, db, sslmode="disable")))
    assert "cannot connect" in line and "pg_hba.conf rejects connection" in line and "no encryption" in line, line


@pytest.mark.parametrize("case", ["other-ca", "wrong-name", "missing-ca-file", "verify-without-ca"])
def test_a_certificate_that_cannot_be_verified_stops_the_start(tmp_path, tls_postgres, pki, case):
    db = database(tls_postgres)
    if case == "other-ca":
        other = CA(tmp_path / "other-pki", cn="someone else's CA")
        line = refused(node(tmp_path, url(tls_postgres, db, sslmode="verify-full", sslrootcert=str(other.path))))
        assert f"presented a certificate that does not verify against sslrootcert {other.path}" in line, line
        assert "not signed by a CA in that file" in line, line
    elif case == "wrong-name":
        # reached at 127.0.0.1 under the name db.internal (libpq's hostaddr), which the certificate does
        # not name (it names 127.0.0.1 and ::1): verify-full refuses, verify-ca (the chain only) takes it
        line = refused(node(tmp_path, url(tls_postgres, db, host="db.internal", hostaddr="127.0.0.1", sslmode="verify-full",
                                          sslrootcert=str(pki.path))))
        assert f"the PostgreSQL server db.internal:{tls_postgres.port} presented a certificate that does not verify" in line, line
        assert "does not name the host connected to" in line, line
        n = node(tmp_path, url(tls_postgres, db, host="db.internal", hostaddr="127.0.0.1", sslmode="verify-ca",
                               sslrootcert=str(pki.path)), name="chain-only")
        n.start(timeout=180)
        n.stop()
    elif case == "missing-ca-file":
        missing = tmp_path / "nowhere" / "ca.pem"
        line = refused(node(tmp_path, url(tls_postgres, db, sslmode="verify-full", sslrootcert=str(missing))))
        assert line == f"binaryrepo: shared metadata store: sslrootcert {missing}: cannot read: No such file or directory (os error 2)", line
    else:
        line = refused(node(tmp_path, url(tls_postgres, db, sslmode="verify-full")))
        assert "sslmode=verify-full verifies the server's certificate and needs sslrootcert=" in line, line


@pytest.mark.parametrize("mode", ["require", "verify-full"])
def test_tls_required_of_a_server_without_it_refuses(tmp_path, postgres, pki, mode):
    """the session's PostgreSQL has ssl off"""
    params = {"sslmode": mode} | ({"sslrootcert": str(pki.path)} if mode == "verify-full" else {})
    db_url = postgres.database() + "?" + urllib.parse.urlencode(params, safe="/")
    line = refused(node(tmp_path, db_url))
    assert f"the PostgreSQL server 127.0.0.1:{postgres.port} does not offer TLS, and sslmode={mode} requires it" in line, line
