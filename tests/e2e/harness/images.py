"""Test images built without an engine or network, pushed once into a seed registry storage.

Each layer is a tar holding one file of seeded random bytes, gzip level 1, mtime 0: the same code gives
the same digests on every machine. The session pushes every image with `skopeo copy` into a throw-away
distribution instance; its storage dir then serves as the template every test upstream starts from
(see registry.clone_storage). Everything is cached under $BINARYREPO_E2E_CACHE
(default /tmp/binaryrepo-e2e-cache/<KEY>) and rebuilt when KEY changes.

Images (repository:tag in the upstream):
  small        library/small:1        OCI manifest, layers 1 KiB + 2 MiB
  small2       library/small:2        OCI manifest, layers 2 KiB + 300 KiB (same repo, other blobs)
  big          library/big:1          OCI manifest, layers 5 MiB + 100 MiB
  multi        library/multi:1        OCI index: linux/amd64 + linux/arm64, layers 4 KiB + 512 KiB each
  small-v2s2   library/small-v2s2:1   `small` converted to Docker schema 2 by skopeo --format v2s2
  busybox      library/busybox:1      runnable: /bin/busybox (busybox-static) + /bin/sh link, v2s2
"""
from __future__ import annotations

import fcntl
import gzip
import hashlib
import io
import json
import os
import random
import shutil
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from .util import request, run

KEY = "images-v1"
CHUNK = 1 << 20

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
ACCEPT_ALL = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST]
ACCEPT_HEADER = ", ".join(ACCEPT_ALL)

KIB, MIB = 1 << 10, 1 << 20

# name -> (repo, tag, layer sizes, platforms, format)
SPECS = {
    "small": ("library/small", "1", [1 * KIB, 2 * MIB], ["linux/amd64"], "oci"),
    "small2": ("library/small", "2", [2 * KIB, 300 * KIB], ["linux/amd64"], "oci"),
    "big": ("library/big", "1", [5 * MIB, 100 * MIB], ["linux/amd64"], "oci"),
    "multi": ("library/multi", "1", [4 * KIB, 512 * KIB], ["linux/amd64", "linux/arm64"], "oci"),
    "small-v2s2": ("library/small-v2s2", "1", None, None, "v2s2-of:small"),
    "busybox": ("library/busybox", "1", None, ["linux/amd64"], "busybox"),
}


@dataclass
class Image:
    name: str
    repo: str
    tag: str
    digest: str                   # top-level manifest (or index) digest as the upstream serves it
    media_type: str
    manifest: bytes               # raw bytes of that manifest
    blobs: dict                   # digest -> size: config + layers (all platforms for an index)
    platforms: dict = field(default_factory=dict)  # "linux/arm64" -> {"digest", "manifest", "blobs"}
    config: str | None = None     # config digest (single-platform images)
    layout: str | None = None     # OCI layout dir (not for small-v2s2)

    @property
    def total_bytes(self) -> int:
        return sum(self.blobs.values())

    def ref(self, prefix: str, by_digest: bool = False) -> str:
        """prefix like "127.0.0.1:8081/docker-remote" -> "127.0.0.1:8081/docker-remote/library/small:1" """
        sep = "@" + self.digest if by_digest else ":" + self.tag
        return f"{prefix.rstrip('/')}/{self.repo}{sep}"

    def podman_oci(self, link_dir: Path) -> str:
        """`oci:<layout>:<tag>` for podman, which names the image after the path and refuses upper case
        in it (a test cache under e.g. /tmp/ci.AbCd): through a lower-case symlink in `link_dir` then."""
        layout = str(self.layout)
        if layout != layout.lower():
            link = Path(link_dir) / f"oci-{self.name.lower()}"
            if not link.is_symlink():
                link.symlink_to(layout)
            layout = str(link)
        return f"oci:{layout}:{self.tag}"

    def largest_layer(self) -> tuple[str, int]:
        d = max(self.blobs, key=lambda k: self.blobs[k])
        return d, self.blobs[d]

    @classmethod
    def from_json(cls, d):
        return cls(**d)


class _HashWriter:
    def __init__(self, f):
        self.f, self.h, self.n = f, hashlib.sha256(), 0

    def write(self, b):
        self.f.write(b)
        self.h.update(b)
        self.n += len(b)
        return len(b)

    def flush(self):
        self.f.flush()


class _RandReader:
    def __init__(self, size, seed):
        self.left, self.rng = size, random.Random(seed)

    def read(self, n=-1):
        if n < 0 or n > self.left:
            n = self.left
        self.left -= n
        out = []
        while n > 0:
            k = min(n, CHUNK)
            out.append(self.rng.randbytes(k))
            n -= k
        return b"".join(out)


def _write_blob(layout: Path, data: bytes):
    d = hashlib.sha256(data).hexdigest()
    p = layout / "blobs" / "sha256" / d
    if not p.exists():
        p.write_bytes(data)
    return "sha256:" + d, len(data)


def _layer(layout: Path, entries):
    """entries: list of (TarInfo, fileobj|None). Returns (blob digest, size, diff_id)."""
    tmp = layout / "blobs" / "sha256" / ".tmp-layer"
    with open(tmp, "wb") as raw:
        outer = _HashWriter(raw)
        gz = gzip.GzipFile(filename="", mode="wb", fileobj=outer, mtime=0, compresslevel=1)
        inner = _HashWriter(gz)
        with tarfile.open(fileobj=inner, mode="w|", format=tarfile.PAX_FORMAT) as tf:
            for ti, fo in entries:
                tf.addfile(ti, fo)
        gz.close()
    digest = outer.h.hexdigest()
    os.replace(tmp, layout / "blobs" / "sha256" / digest)
    return "sha256:" + digest, outer.n, "sha256:" + inner.h.hexdigest()


def _dir(name, mode=0o755):
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, mode, 0
    return ti, None


def _random_layer(layout, size, seed, fname):
    ti = tarfile.TarInfo("data/" + fname)
    ti.size, ti.mode, ti.mtime = size, 0o644, 0
    return _layer(layout, [_dir("data"), (ti, _RandReader(size, seed))])


def _busybox_layer(layout):
    bb = Path("/bin/busybox")
    if not bb.exists():
        raise RuntimeError("busybox-static is needed for the runnable test image (apt-get install busybox-static)")
    data = bb.read_bytes()
    ti = tarfile.TarInfo("bin/busybox")
    ti.size, ti.mode, ti.mtime = len(data), 0o755, 0
    entries = [_dir("bin"), (ti, io.BytesIO(data))]
    for tool in ("sh", "echo", "cat", "ls", "true", "uname"):
        li = tarfile.TarInfo("bin/" + tool)
        li.type, li.linkname, li.mode, li.mtime = tarfile.SYMTYPE, "busybox", 0o777, 0
        entries.append((li, None))
    entries += [_dir("tmp", 0o1777), _dir("etc"), _dir("proc"), _dir("sys"), _dir("dev")]
    return _layer(layout, entries)


def build_layout(layout: Path, tag: str, seed: str, sizes, platforms, busybox=False) -> str:
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    manifests = []
    for plat in platforms:
        os_, arch = plat.split("/")[:2]
        layers, diff_ids = [], []
        if busybox:
            dg, n, diff = _busybox_layer(layout)
            layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": dg, "size": n})
            diff_ids.append(diff)
        else:
            for i, size in enumerate(sizes):
                dg, n, diff = _random_layer(layout, size, f"{seed}/{plat}/{i}/{size}", f"layer{i}-{size}.bin")
                layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": dg, "size": n})
                diff_ids.append(diff)
        cfg = {"created": "2020-01-01T00:00:00Z", "architecture": arch, "os": os_,
               "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                          "Cmd": ["/bin/sh"], "Labels": {"binaryrepo.e2e.seed": seed}},
               "rootfs": {"type": "layers", "diff_ids": diff_ids},
               "history": [{"created": "2020-01-01T00:00:00Z", "created_by": f"binaryrepo e2e {seed} layer {i}"}
                           for i in range(len(layers))]}
        cdg, clen = _write_blob(layout, json.dumps(cfg, sort_keys=True).encode())
        man = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
               "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cdg, "size": clen},
               "layers": layers}
        mdg, mlen = _write_blob(layout, json.dumps(man, sort_keys=True).encode())
        manifests.append({"mediaType": OCI_MANIFEST, "digest": mdg, "size": mlen,
                          "platform": {"os": os_, "architecture": arch}})
    if len(manifests) == 1:
        top = dict(manifests[0])
        top.pop("platform")
    else:
        idx = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
        idg, ilen = _write_blob(layout, json.dumps(idx, sort_keys=True).encode())
        top = {"mediaType": OCI_INDEX, "digest": idg, "size": ilen}
    top["annotations"] = {"org.opencontainers.image.ref.name": tag}
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [top]}))
    return top["digest"]


def fetch_manifest(base_url: str, repo: str, ref: str):
    r = request("GET", f"{base_url}/v2/{repo}/manifests/{ref}", headers=[("Accept", ACCEPT_HEADER)])
    assert r.status == 200, f"GET {repo}/manifests/{ref} from {base_url}: {r!r}"
    return r.body, r.header("Content-Type"), r.header("Docker-Content-Digest")


def describe(base_url: str, name: str, repo: str, tag: str, layout=None) -> Image:
    """Read an image back from a registry: the digests and bytes a client will see."""
    body, ctype, _ = fetch_manifest(base_url, repo, tag)
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    doc = json.loads(body)
    blobs, platforms, config = {}, {}, None
    if ctype in (OCI_INDEX, DOCKER_LIST):
        for m in doc["manifests"]:
            sub, _, _ = fetch_manifest(base_url, repo, m["digest"])
            sd = json.loads(sub)
            pb = {sd["config"]["digest"]: sd["config"]["size"]}
            pb.update({lay["digest"]: lay["size"] for lay in sd["layers"]})
            blobs.update(pb)
            p = m["platform"]
            platforms[f"{p['os']}/{p['architecture']}"] = {"digest": m["digest"], "manifest": sub.decode(),
                                                         "blobs": pb, "config": sd["config"]["digest"]}
    else:
        config = doc["config"]["digest"]
        blobs[config] = doc["config"]["size"]
        blobs.update({lay["digest"]: lay["size"] for lay in doc["layers"]})
    return Image(name=name, repo=repo, tag=tag, digest=digest, media_type=ctype, manifest=body,
                 blobs=blobs, platforms=platforms, config=config, layout=str(layout) if layout else None)


def skopeo(*args, timeout=600, env=None):
    return run(["skopeo", "--insecure-policy", *args], timeout=timeout, env=env)


def cache_root() -> Path:
    return Path(os.environ.get("BINARYREPO_E2E_CACHE", "/tmp/binaryrepo-e2e-cache")) / KEY


def _save(root: Path, images: dict):
    meta = {}
    for n, im in images.items():
        d = dict(im.__dict__)
        d["manifest"] = im.manifest.decode()
        meta[n] = d
    (root / "images.json.tmp").write_text(json.dumps(meta, indent=1))
    os.replace(root / "images.json.tmp", root / "images.json")


def _load(root: Path) -> dict:
    meta = json.loads((root / "images.json").read_text())
    out = {}
    for n, d in meta.items():
        d["manifest"] = d["manifest"].encode()
        out[n] = Image.from_json(d)
    return out


class ImageSet:
    """The session's images plus the seed storage dir holding all of them."""

    def __init__(self, root: Path, images: dict):
        self.root = root
        self.images = images
        self.seed_storage = root / "seed-storage"

    def __getitem__(self, name) -> Image:
        return self.images[name]


def ensure_images(workdir: Path) -> ImageSet:
    from .registry import Registry  # local import: registry imports nothing from here

    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lockf:
        fcntl.flock(lockf, fcntl.LOCK_EX)
        if (root / "images.json").exists() and (root / "seed-storage").is_dir():
            return ImageSet(root, _load(root))
        for p in ("layouts", "seed-storage", "seed"):
            shutil.rmtree(root / p, ignore_errors=True)
        layouts = root / "layouts"
        for name, (repo, tag, sizes, plats, fmt) in SPECS.items():
            if fmt == "oci":
                build_layout(layouts / name, tag, f"e2e-{name}", sizes, plats)
            elif fmt == "busybox":
                build_layout(layouts / name, tag, "e2e-busybox", None, plats, busybox=True)
        seed = Registry(root, "seed")
        seed.start()
        try:
            images = {}
            for name, (repo, tag, sizes, plats, fmt) in SPECS.items():
                dest = f"docker://{seed.host}/{repo}:{tag}"
                if fmt == "oci":
                    extra = ["--all"] if len(plats) > 1 else []
                    skopeo("copy", *extra, "--dest-tls-verify=false", f"oci:{layouts / name}:{tag}", dest)
                    images[name] = describe(seed.url, name, repo, tag, layouts / name)
                elif fmt == "busybox":
                    skopeo("copy", "--format", "v2s2", "--dest-tls-verify=false", f"oci:{layouts / name}:{tag}", dest)
                    images[name] = describe(seed.url, name, repo, tag, layouts / name)
                else:
                    src = fmt.split(":", 1)[1]
                    skopeo("copy", "--format", "v2s2", "--dest-tls-verify=false",
                           f"oci:{layouts / src}:{SPECS[src][1]}", dest)
                    images[name] = describe(seed.url, name, repo, tag)
        finally:
            seed.stop()
        os.replace(seed.storage, root / "seed-storage")
        shutil.rmtree(root / "seed", ignore_errors=True)
        _save(root, images)
        return ImageSet(root, images)
