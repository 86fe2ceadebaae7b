"""A chart repository upstream for the Helm tests: a static_upstream server on 127.0.0.1 serving a directory
(index.yaml and charts) with per-path hit counters, ETag/Last-Modified and conditional GETs, and an optional
delay on chart downloads (so that concurrent cold pulls overlap). Plus chart and index builders that need no
helm binary: charts are .tgz files with <name>/Chart.yaml, values.yaml and a template."""
from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

from .static_upstream import StaticUpstream


class ChartServer(StaticUpstream):
    """A chart repository directory with validators (conditional index GETs) and an optional chart delay."""
    delay_suffix = ".tgz"
    validators = True

    def __init__(self, root: Path, port: int | None = None, chart_delay: float = 0.0):
        super().__init__(root, port, delay=chart_delay)

    def content_type(self, path: str) -> str:
        return "application/x-yaml" if path.endswith(".yaml") else "application/gzip"


TEMPLATE = """apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-%(name)s
data:
  greeting: {{ .Values.greeting | quote }}
  chart: {{ .Chart.Name }}-{{ .Chart.Version }}
"""


def make_chart(name: str, version: str, greeting: str = "hello", chart_yaml: str | None = None,
               extra: dict | None = None) -> bytes:
    """A chart archive as `helm package` lays it out (gzip'd tar, <name>/Chart.yaml first)."""
    files = {
        f"{name}/Chart.yaml": chart_yaml if chart_yaml is not None else
        f"apiVersion: v2\nname: {name}\nversion: {version}\nappVersion: \"{version}\"\ndescription: e2e chart {name}\ntype: application\n",
        f"{name}/values.yaml": f"greeting: {greeting}\n",
        f"{name}/templates/configmap.yaml": TEMPLATE % {"name": name},
    }
    files.update(extra or {})
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for path, content in files.items():
            data = content.encode()
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mtime = 1_700_000_000
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def entry_yaml(name: str, version: str, url: str, digest: str | None, indent_lists: bool = False,
               quote_url: str = "") -> str:
    """One index entry as `helm repo index` writes it (lists not indented unless `indent_lists`)."""
    d = "  " if indent_lists else ""
    out = [f"  {d}- apiVersion: v2", f"  {d}  appVersion: \"{version}\"", f"  {d}  created: \"2024-01-01T00:00:00Z\"",
           f"  {d}  description: e2e chart {name}"]
    if digest:
        out.append(f"  {d}  digest: {digest}")
    out += [f"  {d}  name: {name}", f"  {d}  type: application", f"  {d}  urls:",
            f"  {d}  {d}- {quote_url}{url}{quote_url}", f"  {d}  version: {version}"]
    return "\n".join(out) + "\n"


def index_yaml(charts: dict[str, list[str]]) -> str:
    """charts: name -> [entry_yaml(...) texts]"""
    parts = ["apiVersion: v1\nentries:\n"]
    for name, entries in charts.items():
        parts.append(f"  {name}:\n")
        parts.extend(entries)
    parts.append("generated: \"2024-01-01T00:00:00Z\"\n")
    return "".join(parts)


def sha256_hex(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def big_index(min_bytes: int, url_base: str = "") -> str:
    """An index.yaml of at least `min_bytes`: many charts with many versions, every entry with a digest."""
    parts = ["apiVersion: v1\nentries:\n"]
    size, i = 0, 0
    while size < min_bytes:
        name = f"chart{i:05d}"
        parts.append(f"  {name}:\n")
        for v in range(40):
            digest = hashlib.sha256(f"{name}-{v}".encode()).hexdigest()
            e = entry_yaml(name, f"1.{v}.0", f"{url_base}charts/{name}-1.{v}.0.tgz", digest)
            parts.append(e)
            size += len(e)
        i += 1
    parts.append("generated: \"2024-01-01T00:00:00Z\"\n")
    return "".join(parts)
