"""Reading registry archives in place: tar, zip and Debian (ar + tar) packages."""

from __future__ import annotations

import gzip
import io
import json
import lzma
import re
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

from growlm.data.sources.source import SourceError


def archive_members(path: Path) -> Iterator[tuple[str, bytes]]:
    """Yield (member name, bytes) for regular files in a tar, zip or deb archive."""
    name = path.name
    if name.endswith((".tgz", ".tar.gz")):
        with tarfile.open(path, "r:gz") as tf:
            for m in tf.getmembers():
                if m.isfile():
                    f = tf.extractfile(m)
                    if f is not None:
                        yield m.name, f.read()
    elif name.endswith((".whl", ".zip")):
        with zipfile.ZipFile(path) as zf:
            for n in zf.namelist():
                if not n.endswith("/"):
                    yield n, zf.read(n)
    elif name.endswith(".deb"):
        data = deb_data_tar(path.read_bytes(), path)
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
            for m in tf.getmembers():
                if m.isfile():
                    f = tf.extractfile(m)
                    if f is not None:
                        yield m.name, f.read()
    else:
        raise SourceError(f"{path}: unknown archive type")


def deb_data_tar(raw: bytes, path: Path) -> bytes:
    """Return the uncompressed data.tar of a Debian package (an ar archive)."""
    if not raw.startswith(b"!<arch>\n"):
        raise SourceError(f"{path}: not a Debian package (ar archive)")
    pos = 8
    while pos + 60 <= len(raw):
        header = raw[pos : pos + 60]
        member = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        body = raw[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size % 2)
        if member.startswith("data.tar"):
            if member.endswith(".xz"):
                return lzma.decompress(body)
            if member.endswith(".gz"):
                return gzip.decompress(body)
            if member == "data.tar":
                return body
            raise SourceError(f"{path}: unsupported compression {member}")
    raise SourceError(f"{path}: no data.tar member")


def json_members(path: Path, pattern: str) -> Iterator[tuple[str, object]]:
    rx = re.compile(pattern)
    for name, data in sorted(archive_members(path)):
        if rx.search(name):
            yield name, json.loads(data.decode("utf-8"))


def natural_key(s: str) -> list[object]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]
