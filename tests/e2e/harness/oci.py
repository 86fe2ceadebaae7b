"""Plain-HTTP OCI distribution client for the push tests (what the conformance suite does, by hand), and
small images built in memory.

`Oci(base_url, prefix)` talks to one registry namespace: names are "<prefix>/<image>" (binaryrepo's path
method: prefix "docker-local" -> /v2/docker-local/<image>/...), or the bare image name without a prefix
(a repository addressed by its own port, host name or /repo/<name>/ mount).
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import tarfile
import urllib.parse
from dataclasses import dataclass, field

from .images import OCI_INDEX, OCI_MANIFEST
from .util import Resp, request

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
EMPTY_JSON = b"{}"
ACCEPT_MANIFESTS = ", ".join([OCI_MANIFEST, OCI_INDEX, "application/vnd.docker.distribution.manifest.v2+json",
                              "application/vnd.docker.distribution.manifest.list.v2+json"])


def sha256(b: bytes) -> str:
    return "sha256:" + hashlib.sha256(b).hexdigest()


def sha512(b: bytes) -> str:
    return "sha512:" + hashlib.sha512(b).hexdigest()


def rand_bytes(size: int, seed: str) -> bytes:
    return random.Random(seed).randbytes(size)


def tar_gz_layer(size: int, seed: str) -> tuple[bytes, str]:
    """a gzip'd tar with one file of seeded random bytes: (blob bytes, diff_id)"""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo(f"data/{seed.replace('/', '_')}.bin")
        ti.size, ti.mode, ti.mtime = size, 0o644, 0
        tf.addfile(ti, io.BytesIO(rand_bytes(size, seed)))
    tar = raw.getvalue()
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=1) as gz:
        gz.write(tar)
    return out.getvalue(), sha256(tar)


@dataclass
class Built:
    """An image built in memory: its manifest bytes and every blob."""
    manifest: bytes
    media_type: str
    blobs: dict = field(default_factory=dict)     # digest -> bytes (config + layers)
    config: str = ""
    layers: list = field(default_factory=list)    # layer digests in order

    @property
    def digest(self) -> str:
        return sha256(self.manifest)

    def descriptor(self, **extra) -> dict:
        d = {"mediaType": self.media_type, "digest": self.digest, "size": len(self.manifest)}
        d.update(extra)
        return d


def build_image(seed: str, layer_sizes=(1024, 4096), shared_layers=(), arch="amd64", annotations=None,
                extra: dict | None = None) -> Built:
    """An OCI image manifest with real tar+gzip layers. shared_layers: (bytes, diff_id) pairs put first."""
    layers = list(shared_layers) + [tar_gz_layer(s, f"{seed}/{i}") for i, s in enumerate(layer_sizes)]
    cfg = {"architecture": arch, "os": "linux", "created": "2020-01-01T00:00:00Z",
           "config": {"Labels": {"binaryrepo.e2e.seed": seed}},
           "rootfs": {"type": "layers", "diff_ids": [diff for _, diff in layers]}}
    cfg_bytes = json.dumps(cfg, sort_keys=True).encode()
    man = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
           "config": {"mediaType": OCI_CONFIG, "digest": sha256(cfg_bytes), "size": len(cfg_bytes)},
           "layers": [{"mediaType": OCI_LAYER, "digest": sha256(b), "size": len(b)} for b, _ in layers]}
    if annotations:
        man["annotations"] = annotations
    if extra:
        man.update(extra)
    blobs = {sha256(cfg_bytes): cfg_bytes}
    blobs.update({sha256(b): b for b, _ in layers})
    return Built(json.dumps(man, indent=1).encode(), OCI_MANIFEST, blobs, sha256(cfg_bytes),
                 [sha256(b) for b, _ in layers])


def build_index(children: list[Built], platforms: list[str]) -> Built:
    idx = {"schemaVersion": 2, "mediaType": OCI_INDEX,
           "manifests": [c.descriptor(platform={"os": p.split("/")[0], "architecture": p.split("/")[1]})
                         for c, p in zip(children, platforms)]}
    return Built(json.dumps(idx).encode(), OCI_INDEX)


def errors_of(r: Resp) -> list:
    """the codes of an OCI error body {"errors": [{"code": ...}]}; fails (AssertionError) on any other body"""
    try:
        body = r.json()
    except ValueError:
        raise AssertionError(f"error body is not JSON: {r!r}") from None
    errs = body.get("errors") if isinstance(body, dict) else None
    assert isinstance(errs, list) and errs and all(isinstance(e, dict) and e.get("code") for e in errs), \
        f"not an OCI error body {{'errors': [{{'code': ...}}]}}: {r!r}"
    return [e["code"] for e in errs]


class Oci:
    def __init__(self, base_url: str, prefix: str = ""):
        self.base = base_url.rstrip("/")
        self.prefix = prefix.strip("/")

    def name(self, image: str) -> str:
        return f"{self.prefix}/{image}" if self.prefix else image

    def url(self, image: str, rest: str) -> str:
        """/v2/<name>/<rest>"""
        return f"{self.base}/v2/{self.name(image)}/{rest}"

    def abs(self, location: str) -> str:
        """a Location header made absolute (the spec allows relative ones)"""
        assert location, "no Location header"
        return urllib.parse.urljoin(self.base + "/", location)

    @staticmethod
    def with_query(url: str, **params) -> str:
        sep = "&" if "?" in url else "?"
        return url + sep + urllib.parse.urlencode(params)

    def req(self, method: str, url: str, body=None, headers=None, timeout: float = 60) -> Resp:
        return request(method, url, body=body, headers=headers, timeout=timeout)

    # --- blobs ----------------------------------------------------------------------------------
    def start_upload(self, image: str, query: str = "", body: bytes | None = b"", headers=None) -> Resp:
        url = self.url(image, "blobs/uploads/") + (("?" + query) if query else "")
        return self.req("POST", url, body=body, headers=headers)

    def upload_url(self, image: str) -> str:
        r = self.start_upload(image)
        assert r.status == 202, f"POST {self.url(image, 'blobs/uploads/')}: expected 202, got {r!r}"
        return self.abs(r.header("Location"))

    def push_blob(self, image: str, data: bytes, digest: str | None = None) -> str:
        """POST then PUT (monolithic); returns the digest"""
        digest = digest or sha256(data)
        loc = self.upload_url(image)
        r = self.req("PUT", self.with_query(loc, digest=digest), body=data,
                     headers={"Content-Type": "application/octet-stream"})
        assert r.status == 201, f"PUT {loc}?digest={digest} ({len(data)} bytes): expected 201, got {r!r}"
        return digest

    def head_blob(self, image: str, digest: str) -> Resp:
        return self.req("HEAD", self.url(image, f"blobs/{digest}"))

    def get_blob(self, image: str, digest: str) -> Resp:
        return self.req("GET", self.url(image, f"blobs/{digest}"))

    # --- manifests ------------------------------------------------------------------------------
    def put_manifest(self, image: str, ref: str, body: bytes, media_type: str | None = OCI_MANIFEST) -> Resp:
        headers = {"Content-Type": media_type} if media_type else None
        return self.req("PUT", self.url(image, f"manifests/{ref}"), body=body, headers=headers)

    def get_manifest(self, image: str, ref: str, method: str = "GET", accept: str = ACCEPT_MANIFESTS) -> Resp:
        return self.req(method, self.url(image, f"manifests/{ref}"), headers={"Accept": accept})

    def push_image(self, image: str, built: Built, tag: str | None = None) -> Resp:
        """every blob, then the manifest by tag (or by digest without one); returns the manifest PUT's answer"""
        for d, b in built.blobs.items():
            if self.head_blob(image, d).status != 200:
                self.push_blob(image, b, d)
        r = self.put_manifest(image, tag or built.digest, built.manifest, built.media_type)
        assert r.status == 201, f"PUT {self.url(image, 'manifests/' + (tag or built.digest))}: expected 201, got {r!r}"
        return r

    def tags(self, image: str, query: str = "") -> Resp:
        return self.req("GET", self.url(image, "tags/list") + (("?" + query) if query else ""))
