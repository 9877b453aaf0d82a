"""Corpus text: cleaning and loading (streaming, bounded memory).

Cleaning helpers (``clean_text``, ``split_document``, ...) are shared by the
source extractors in :mod:`growlm.data.sources`, which fetch text from package
registries; loading (``iter_documents``) reads a user's corpus: folders of
``.txt``, ``.jsonl`` (plain, ``.gz``, ``.zst``) and Parquet files.
"""

from __future__ import annotations

import gzip
import hashlib
import html
import io
import json
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "BadDocument",
    "Document",
    "TextSplit",
    "clean_text",
    "corpus_files",
    "dedupe",
    "default_corpus_dir",
    "iter_documents",
    "load_documents",
    "pack_records",
    "sha256_file",
    "split_document",
    "strip_escape_codes",
    "strip_format_marks",
    "strip_markup",
]

MAX_DOC_CHARS = 20_000
LANGS = ("en", "ru", "zh")


# ---------------------------------------------------------------- cleaning

_TAG_RE = re.compile(r"<[^<>\n]{0,200}>")
_ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")
_CTRL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


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


# ---------------------------------------------------------------- loading

TEXT_SUFFIXES = (".txt", ".txt.gz", ".txt.zst")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst")
PARQUET_SUFFIXES = (".parquet",)
ARROW_SUFFIXES = (".arrow",)  # Arrow IPC files, as Hugging Face ``datasets`` writes them (save_to_disk, its cache)
TABLE_SUFFIXES = PARQUET_SUFFIXES + ARROW_SUFFIXES
CORPUS_SUFFIXES = TEXT_SUFFIXES + JSONL_SUFFIXES + TABLE_SUFFIXES


class CorruptInput(ValueError):
    """A corpus file that cannot be read at all (a truncated archive, a corrupt Parquet file); names the file."""


class BadDocument(ValueError):
    """A document that cannot be read: not UTF-8, invalid JSON, no text field; names its file and line."""

    def __init__(self, where: str, reason: str):
        super().__init__(f"{where}: {reason}")
        self.where, self.reason = where, reason


@dataclass(frozen=True)
class Document:
    """One document of a corpus and where it came from (``line``: jsonl line, Parquet row + 1, the document's
    number within a .txt file)."""

    lang: str | None
    text: str
    file: int  # index into corpus_files(root)
    line: int


@dataclass(frozen=True)
class TextSplit:
    """How a .txt file becomes documents.

    ``separator`` None: blank-line paragraphs grouped into documents of about ``doc_chars`` characters (a
    stretch with no blank line is cut at a line break, else at a space); a file shorter than that stays one
    document. ``separator`` given: every occurrence ends a document (``<|endoftext|>``, ``\\f``, ...).
    ``doc_chars`` 0 with no separator: every file is one document. Text is read ``BLOCK`` bytes at a time, so
    memory is bounded by the longest document, which paragraph grouping bounds by ``2 * doc_chars``.
    """

    separator: str | None = None
    doc_chars: int = MAX_DOC_CHARS

    def __post_init__(self) -> None:
        if self.doc_chars < 0:
            raise ValueError(f"doc_chars must be >= 0 (0 = a file is one document), got {self.doc_chars}")
        if self.separator == "":
            raise ValueError("the document separator is empty; give a string such as '<|endoftext|>'")

    @property
    def whole_files(self) -> bool:
        return self.separator is None and self.doc_chars == 0

    def describe(self) -> str:
        """What the split does, in words (for the log and meta.json)."""
        if self.separator is not None:
            return f"at every {self.separator!r}"
        if self.whole_files:
            return "not split: one document per file"
        return f"at blank lines, grouped into documents of about {self.doc_chars:,} characters"


BLOCK = 1 << 20  # bytes of a .txt file decoded at a time


def _para_cut(text: str, target: int) -> int:
    """Where to end a document of about ``target`` characters in ``text`` (longer than 2 * target)."""
    i = text.rfind("\n\n", 0, target)
    if i >= target // 4:
        return i + 2
    i = text.find("\n\n", target, 2 * target)
    if i != -1:
        return i + 2
    for sep in ("\n", " "):  # a long stretch with no blank line: a line break, else a space
        i = text.rfind(sep, target // 4, target)
        if i != -1:
            return i + 1
    return target


def _txt_docs(f: BinaryIO, rel: str, file_lang: str | None, skip_to: int, split: TextSplit
              ) -> Iterator[tuple[int, object]]:
    """(document number, (lang, text) or BadDocument) of a .txt stream split by ``split``, after ``skip_to``."""
    buf, pending, consumed, lines, n = "", b"", 0, 1, 0
    first = True

    def emit(text: str, lead: bool, end: bool) -> Iterator[tuple[int, object]]:
        nonlocal n
        text = text if lead else text.lstrip()
        text = text if end else text.rstrip()
        if text.strip() or (lead and end):
            n += 1
            if n > skip_to:
                yield n, (file_lang, text)

    while True:
        block = f.read(BLOCK)
        data = pending + block
        cut = len(data)
        if block:  # keep an incomplete UTF-8 sequence at the end for the next block
            for k in range(1, min(4, len(data)) + 1):
                b = data[-k]
                if b & 0xC0 != 0x80:  # a lead byte (or ASCII): is its sequence complete?
                    need = 1 if b < 0x80 else 2 if b >> 5 == 6 else 3 if b >> 4 == 14 else 4 if b >> 3 == 30 else 1
                    cut = len(data) - k if need > k else len(data)
                    break
        try:
            buf += data[:cut].decode("utf-8")
        except UnicodeDecodeError as e:
            line = lines + data.count(b"\n", 0, e.start)
            yield n + 1, BadDocument(f"{rel}:{line}", f"not UTF-8 at byte offset {consumed + e.start} of the file")
            return
        lines += data.count(b"\n", 0, cut)
        consumed += cut
        pending = data[cut:]
        if split.separator is not None:
            parts = buf.split(split.separator)
            for p in parts[:-1]:
                yield from emit(p, first, False)
                first = False
            buf = parts[-1]
        elif not split.whole_files:
            while len(buf) > 2 * split.doc_chars:
                c = _para_cut(buf, split.doc_chars)
                yield from emit(buf[:c], first, False)
                first, buf = False, buf[c:]
        if not block:
            break
    if pending:
        yield n + 1, BadDocument(f"{rel}:{lines}", f"not UTF-8 at byte offset {consumed} of the file (cut short)")
        return
    if split.separator is None and not split.whole_files:
        while len(buf) > split.doc_chars:
            c = _para_cut(buf, split.doc_chars)
            yield from emit(buf[:c], first, False)
            first, buf = False, buf[c:]
    yield from emit(buf, first, True)


def default_corpus_dir() -> Path:
    """Directory of the small multilingual corpus shipped with the package."""
    return Path(__file__).resolve().parent / "default_corpus"


def corpus_files(path_or_dir: str | Path, files: list[Path] | None = None) -> list[Path]:
    """The corpus files under a directory (sorted), or the file itself; ``files`` given: those."""
    if files is not None:
        return list(files)
    root = Path(path_or_dir)
    if root.is_dir():
        return sorted(p for p in root.rglob("*") if p.is_file() and p.name.endswith(CORPUS_SUFFIXES))
    if root.is_file():  # a file named explicitly is read as text unless it is .jsonl or .parquet
        return [root]
    raise FileNotFoundError(f"corpus path {root} does not exist")


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


def _open_binary(path: Path, hasher=None, on_read: Callable[[int], None] | None = None
                 ) -> tuple[BinaryIO, _HashingReader | None]:
    """A decompressing binary stream over ``path`` (.gz, .zst or plain), and the reader that hashes its raw bytes
    (and reports how many were read to ``on_read``)."""
    raw: BinaryIO = open(path, "rb")
    hashing = None
    if hasher is not None:
        hashing = _HashingReader(raw, hasher, on_read)
        raw = io.BufferedReader(hashing, 1 << 20)  # type: ignore[assignment]
    if path.name.endswith(".gz"):
        return gzip.GzipFile(fileobj=raw), hashing  # type: ignore[return-value]
    if path.name.endswith(".zst"):
        try:
            import zstandard  # deferred: optional, for .zst files only
        except ImportError:
            raw.close()
            raise ImportError(f"{path}: reading .zst files needs zstandard: pip install 'growlm[data]'") from None
        reader = zstandard.ZstdDecompressor().stream_reader(raw, closefd=True, read_across_frames=True)
        return io.BufferedReader(reader, 1 << 20), hashing  # type: ignore[return-value]
    return raw, hashing


class _HashingReader(io.RawIOBase):
    """Passes reads through, hashing every byte (so a file is read once for its tokens and its checksum)."""

    def __init__(self, f: BinaryIO, hasher, on_read: Callable[[int], None] | None = None):
        self.f, self.hasher, self.on_read = f, hasher, on_read

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = self.f.readinto(b)
        if n:
            self.hasher.update(memoryview(b)[:n])
            if self.on_read is not None:
                self.on_read(n)
        return n

    def close(self) -> None:
        self.f.close()
        super().close()


def _decode_utf8(data: bytes, where: str, line_base: int | None = None) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        if line_base is None:
            raise BadDocument(where, f"not UTF-8 at byte {e.start} of the line") from None
        line = line_base + data.count(b"\n", 0, e.start)
        raise BadDocument(f"{where}:{line}", f"not UTF-8 at byte offset {e.start} of the file") from None


def _jsonl_docs(f: BinaryIO, rel: str, file_lang: str | None, skip_to: int, text_field: str = "text"
                ) -> Iterator[tuple[int, object]]:
    """(line, (lang, text) or BadDocument) for every non-blank line after line ``skip_to``."""
    for i, raw in enumerate(f, 1):
        if i <= skip_to or not raw.strip():
            continue
        try:
            escapes = b"\\ud" in raw or b"\\uD" in raw
            obj = json.loads(_decode_utf8(raw, f"{rel}:{i}"))
            del raw  # a long line: keep only the parsed text, not its bytes too
            if not isinstance(obj, dict) or not isinstance(obj.get(text_field), str):
                raise BadDocument(f"{rel}:{i}", f"expected a JSON object with a {text_field!r} string (name the "
                                  "field holding the text with --text-field)")
            text = obj.pop(text_field)
            if escapes:  # a JSON escape can encode a lone surrogate: not text
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError as e:
                    raise BadDocument(f"{rel}:{i}", f"not valid Unicode ({e.reason} at character {e.start})") from None
            yield i, (obj.get("lang") or file_lang, text)
        except json.JSONDecodeError as e:
            yield i, BadDocument(f"{rel}:{i}", f"invalid JSON ({e.msg})")
        except BadDocument as e:
            yield i, e


def _arrow_batches(path: Path, rel: str, columns: Callable[[list[str]], list[str]]) -> Iterator:
    """Record batches of the chosen columns of a Parquet file, or of an Arrow IPC stream or file (memory-mapped)."""
    try:
        import pyarrow as pa  # deferred: optional, for Parquet and Arrow files only
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError(f"{rel}: reading Parquet and Arrow files needs pyarrow: pip install 'growlm[data]'") from None
    if path.name.endswith(PARQUET_SUFFIXES):
        pf = pq.ParquetFile(path)
        yield from pf.iter_batches(batch_size=1024, columns=columns(pf.schema_arrow.names))
        return
    with pa.memory_map(str(path)) as source:
        try:
            reader = pa.ipc.open_stream(source)
            batches = iter(reader)
        except pa.ArrowInvalid:
            source.seek(0)
            f = pa.ipc.open_file(source)
            reader, batches = f, (f.get_batch(i) for i in range(f.num_record_batches))
        cols = columns(reader.schema.names)
        for batch in batches:
            for start in range(0, batch.num_rows, 1024):
                yield batch.slice(start, 1024).select(cols)


def _parquet_docs(path: Path, rel: str, file_lang: str | None, text_field: str, skip_to: int
                  ) -> Iterator[tuple[int, object]]:
    """(row, (lang, text) or BadDocument) of a Parquet or Arrow file's ``text_field`` column after row ``skip_to``."""

    def columns(names: list[str]) -> list[str]:
        if text_field not in names:
            raise ValueError(f"{rel}: no column {text_field!r} (it has {names}); name the text column with "
                             "--text-field")
        return [text_field] + (["lang"] if "lang" in names else [])

    row = 0
    for batch in _arrow_batches(path, rel, columns):
        d = batch.to_pydict()
        for j, text in enumerate(d[text_field]):
            row += 1
            if row <= skip_to:
                continue
            if text is None:
                continue
            if not isinstance(text, str):
                yield row, BadDocument(f"{rel}:row {row}", f"column {text_field!r} is not a string")
                continue
            yield row, ((d["lang"][j] if "lang" in d else None) or file_lang, text)


def iter_documents(path_or_dir: str | Path, lang: str | None = None, *, text_field: str = "text",
                   on_error: str = "raise", skipped: list[BadDocument] | None = None,
                   start: tuple[int, int] = (0, 0), hashes: dict[int, str] | None = None,
                   split: TextSplit | None = None, txt_documents: dict[int, int] | None = None,
                   on_read: Callable[[int], None] | None = None, files: list[Path] | None = None
                   ) -> Iterator[Document]:
    """Stream the documents of a corpus file or folder (.txt, .jsonl, optionally .gz/.zst, and .parquet).

    A .txt file is one document, or with ``split`` is cut into documents (``txt_documents`` receives how
    many, by file index); a .jsonl line is ``{"text": ..., "lang": ...}`` (lang optional; the text under
    ``text_field``); a Parquet file gives one document per row of the column ``text_field``. The language comes from the
    document, else from the file name (``en.jsonl``) or an ``en/``, ``ru/``, ``zh/`` folder.
    A bad document raises :class:`BadDocument` naming file and line, or with ``on_error="skip"``
    is appended to ``skipped`` and left out. ``start=(file, line)`` resumes after that document;
    ``hashes`` receives the SHA-256 of every file read whole (by index); with ``hashes``, ``on_read`` is told
    the number of input bytes read as they are read (for a progress bar).
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    root = Path(path_or_dir)
    files = corpus_files(root, files)
    base = root if root.is_dir() else root.parent
    rel = str(root)
    try:
        for fi, path in enumerate(files):
            if fi < start[0]:
                continue
            skip_to = start[1] if fi == start[0] else 0
            rel = str(path)
            file_lang = _lang_of(path, base)
            hasher = hashlib.sha256() if hashes is not None else None
            jsonl = path.name.endswith(JSONL_SUFFIXES)
            streamed = not path.name.endswith(TABLE_SUFFIXES) and (jsonl or (split is not None
                                                                             and not split.whole_files))
            if path.name.endswith(TABLE_SUFFIXES):
                items: Iterator[tuple[int, object]] = _parquet_docs(path, rel, file_lang, text_field, skip_to)
            elif path.name.endswith(JSONL_SUFFIXES):
                f, hashing = _open_binary(path, hasher, on_read)
                items = _jsonl_docs(f, rel, file_lang, skip_to, text_field)
            elif split is not None and not split.whole_files:
                f, hashing = _open_binary(path, hasher, on_read)
                items = _txt_docs(f, rel, file_lang, skip_to, split)
            else:
                f, hashing = _open_binary(path, hasher, on_read)
                with f:
                    data = f.read()
                    if hashing is not None:
                        while hashing.read(1 << 20):  # bytes after the compressed stream: hash the whole file
                            pass
                try:
                    item: object = (file_lang, _decode_utf8(data, rel, line_base=1))
                except BadDocument as e:
                    item = e
                items = iter([(1, item)] if skip_to < 1 else [])
            try:
                for line, item in items:
                    if isinstance(item, BadDocument):
                        if on_error == "raise":
                            raise item
                        if skipped is not None:
                            skipped.append(item)
                        continue
                    doc_lang, text = item  # type: ignore[misc]
                    del item
                    if txt_documents is not None and streamed and not jsonl:
                        txt_documents[fi] = line
                    if text and (lang is None or doc_lang == lang):
                        yield Document(doc_lang, text, fi, line)
                    del text
                if streamed and hashing is not None:
                    while hashing.read(1 << 20):
                        pass
            finally:
                if streamed:
                    f.close()
            if hashes is not None:
                hashes[fi] = sha256_file(path) if hasher is None or path.name.endswith(TABLE_SUFFIXES) \
                    else hasher.hexdigest()
                if on_read is not None and path.name.endswith(TABLE_SUFFIXES):
                    on_read(path.stat().st_size)

    except (BadDocument, ImportError):
        raise
    except Exception as e:  # a truncated .gz, a corrupt .parquet: say which file, whatever the library said
        if rel in str(e):
            raise
        raise CorruptInput(f"{rel} cannot be read: {type(e).__name__}: {e}; is it truncated or corrupt? Replace "
                           "it (or move it out of the corpus) and run again") from None

def load_documents(path_or_dir: str | Path, lang: str | None = None) -> Iterator[tuple[str | None, str]]:
    """Yield (lang, text) for every document of a corpus file or folder (see :func:`iter_documents`)."""
    root = Path(path_or_dir)
    count = 0
    for doc in iter_documents(root, lang):
        count += 1
        yield doc.lang, doc.text
    if count == 0:
        what = f" in language {lang!r}" if lang else ""
        raise ValueError(f"corpus {root} has no documents{what}")


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
