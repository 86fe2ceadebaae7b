"""A bearer-token service for CNCF distribution's `auth: token` (Docker Registry v2 token auth).

Runs in the test process (a thread). Tokens are JWTs signed RS256 with a key the test makes; the header
carries the self-signed certificate as `x5c`, and distribution verifies it against `rootcertbundle`.

GET /token?service=S&scope=repository:library/small:pull[&scope=...]   (Authorization: Basic ... optional)
POST /token (OAuth2 form: grant_type=password&username=..&password=..&scope=..&service=..)
  - valid Basic credentials: the requested pull/push actions are granted
  - no credentials: granted only when `anonymous` is true, else a token with empty access (as Docker Hub
    does for a private repository) so that the registry answers 401 insufficient_scope
  - wrong credentials: 401
Every request is recorded in `requests` (user, scopes, service) for the tests to count.
With `tls=` (a harness.testca.TestCA) it serves https, and the realm is an https URL.
"""
from __future__ import annotations

import base64
import datetime
import json
import os
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from .util import free_port


def b64url(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


class TokenServer:
    def __init__(self, workdir: Path, users: dict | None = None, anonymous: bool = True, ttl: int = 300,
                 service: str = "binaryrepo-e2e-registry", issuer: str = "binaryrepo-e2e-token-issuer", tls=None):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.users = dict(users or {})
        self.anonymous = anonymous
        self.ttl = ttl
        self.service = service
        self.issuer = issuer
        self.tls = tls
        self.port = free_port()
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "binaryrepo e2e token signer")])
        now = datetime.datetime.now(datetime.timezone.utc)
        self._cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                      .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
                      .not_valid_before(now - datetime.timedelta(days=1))
                      .not_valid_after(now + datetime.timedelta(days=2))
                      .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                      .sign(self._key, hashes.SHA256()))
        self.certfile = self.dir / "token-cert.pem"
        self.certfile.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))
        self._x5c = base64.b64encode(self._cert.public_bytes(serialization.Encoding.DER)).decode()
        self._httpd = None
        self._thread = None

    @property
    def realm(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/token"

    def registry_auth(self) -> dict:
        """the `auth:` section for a distribution config"""
        return {"token": {"realm": self.realm, "service": self.service, "issuer": self.issuer,
                          "rootcertbundle": str(self.certfile)}}

    def make_token(self, subject: str, access: list) -> str:
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self._x5c]}
        claims = {"iss": self.issuer, "sub": subject, "aud": self.service, "exp": now + self.ttl,
                  "nbf": now - 30, "iat": now, "jti": uuid.uuid4().hex, "access": access}
        signing_input = (b64url(json.dumps(header, separators=(",", ":")).encode()) + "." +
                         b64url(json.dumps(claims, separators=(",", ":")).encode()))
        sig = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return signing_input + "." + b64url(sig)

    def count(self, user: str | None | type(...) = ...) -> int:
        """requests so far; user=None counts anonymous ones, a name counts that user's"""
        with self._lock:
            if user is ...:
                return len(self.requests)
            return sum(1 for r in self.requests if r["user"] == user)

    def _handle(self, h: BaseHTTPRequestHandler, method: str):
        u = urllib.parse.urlsplit(h.path)
        if u.path != "/token":
            h.send_response(404)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        q = urllib.parse.parse_qs(u.query)
        user = password = None
        auth = h.headers.get("Authorization")
        if method == "POST":
            n = int(h.headers.get("Content-Length") or 0)
            form = urllib.parse.parse_qs(h.rfile.read(n).decode())
            for k, v in form.items():
                q.setdefault(k, []).extend(v)
            if "username" in form:
                user, password = form["username"][0], form.get("password", [""])[0]
        if auth and auth.lower().startswith("basic "):
            try:
                user, _, password = base64.b64decode(auth[6:].strip()).decode().partition(":")
            except Exception:  # noqa: BLE001
                user, password = "(undecodable)", None
        scopes = q.get("scope", [])
        rec = {"time": time.time(), "method": method, "user": user, "authorization": auth,
               "scopes": scopes, "service": q.get("service", [None])[0], "account": q.get("account", [None])[0]}
        with self._lock:
            self.requests.append(rec)
        if user is not None and self.users.get(user) != password:
            body = json.dumps({"details": "incorrect username or password"}).encode()
            h.send_response(401)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
            return
        granted = user is not None or self.anonymous
        access = []
        for s in scopes:
            for one in s.split(" "):
                parts = one.split(":")
                if len(parts) < 3:
                    continue
                typ, name, actions = parts[0], ":".join(parts[1:-1]), parts[-1].split(",")
                ok = [a for a in actions if a in ("pull", "push") and granted]
                access.append({"type": typ, "name": name, "actions": ok})
        tok = self.make_token(user or "", access)
        body = json.dumps({"token": tok, "access_token": tok, "expires_in": self.ttl,
                           "issued_at": datetime.datetime.now(datetime.timezone.utc).isoformat()}).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def start(self):
        srv = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                srv._handle(self, "GET")

            def do_POST(self):
                srv._handle(self, "POST")

            def log_message(self, *a):
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), H)
        self._httpd.daemon_threads = True
        if self.tls:
            self._httpd.socket = self.tls.server_context().wrap_socket(self._httpd.socket, server_side=True)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None


def htpasswd_file(path: Path, user: str, password: str) -> Path:
    """bcrypt htpasswd line (distribution only accepts bcrypt) via `htpasswd -Bbn` (apache2-utils)."""
    import subprocess
    out = subprocess.run(["htpasswd", "-Bbn", user, password], capture_output=True, check=True).stdout
    Path(path).write_bytes(out)
    os.chmod(path, 0o644)
    return Path(path)
