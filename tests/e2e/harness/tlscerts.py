"""A throw-away certificate authority and server certificates for 127.0.0.1 and ::1 (IP SANs), made with
`cryptography`: what an operator would get from their own CA, written as PEM files."""
from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

LOOPBACK_IPS = ("127.0.0.1", "::1")


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


@dataclass
class ServerCert:
    cert: Path   # PEM: the server certificate then the CA's (a chain, as servers are given)
    key: Path    # PEM: PKCS#8 private key
    ca: Path     # PEM: the CA certificate clients trust
    cn: str
    serial: int
    pem: bytes   # the server certificate alone
    key_pem: bytes
    ca_pem: bytes

    @property
    def der(self) -> bytes:
        return x509.load_pem_x509_certificate(self.pem).public_bytes(serialization.Encoding.DER)


class CA:
    def __init__(self, directory: Path, cn: str = "binaryrepo e2e CA"):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (x509.CertificateBuilder()
                     .subject_name(_name(cn)).issuer_name(_name(cn))
                     .public_key(self.key.public_key())
                     .serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(minutes=5))
                     .not_valid_after(now + datetime.timedelta(days=1))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                     .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                  content_commitment=False, key_encipherment=False,
                                                  data_encipherment=False, key_agreement=False,
                                                  encipher_only=False, decipher_only=False), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM)
        self.path = self.dir / "ca.crt"
        self.path.write_bytes(self.pem)

    def issue(self, cn: str, serial: int | None = None, ips=LOOPBACK_IPS, dns=()) -> tuple[bytes, bytes, int]:
        """(certificate PEM, key PEM, serial) for a server answering on `ips` and the names `dns`."""
        key = ec.generate_private_key(ec.SECP256R1())
        serial = serial or x509.random_serial_number()
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder()
                .subject_name(_name(cn)).issuer_name(self.cert.subject)
                .public_key(key.public_key())
                .serial_number(serial)
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
                                                            + [x509.DNSName(d) for d in dns]),
                               critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                .sign(self.key, hashes.SHA256()))
        return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key), serial

    def server(self, name: str = "server", cn: str = "binaryrepo-a", serial: int | None = None, dns=()) -> ServerCert:
        """Writes <dir>/<name>.crt (chain) and <name>.key."""
        pem, key_pem, serial = self.issue(cn, serial, dns=dns)
        sc = ServerCert(cert=self.dir / f"{name}.crt", key=self.dir / f"{name}.key", ca=self.path, cn=cn,
                        serial=serial, pem=pem, key_pem=key_pem, ca_pem=self.pem)
        write_pair(sc, pem, key_pem)
        return sc


def write_pair(sc: ServerCert, pem: bytes, key_pem: bytes) -> None:
    """Replaces the files the server reads, each by a rename (as certbot and the like do), key first: a server
    that looks between the two renames sees a key that does not match its certificate."""
    for path, data in ((sc.key, key_pem), (sc.cert, pem + sc.ca_pem)):
        tmp = path.with_name(path.name + ".new")
        tmp.write_bytes(data)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    sc.pem, sc.key_pem = pem, key_pem


def peer_cert_cn(der: bytes) -> str:
    cert = x509.load_der_x509_certificate(der)
    return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
