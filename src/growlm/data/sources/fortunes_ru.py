"""Russian aphorisms (Debian fortunes-ru)."""

from __future__ import annotations

import re
from pathlib import Path

from growlm.data.documents import clean_text, dedupe, pack_records
from growlm.data.sources.archives import archive_members
from growlm.data.sources.source import Source


def extract(path: Path) -> list[str]:
    docs = []
    members = sorted(archive_members(path))
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


SOURCE = Source(
    "fortunes_ru",
    "ru",
    "debian",
    "fortunes-ru",
    "1.52-3.1",
    "GPL-2 (debian/copyright: upstream fortune-mod-ru, 2003 Pavel Maryanov); aphorism "
    "collection quoting many third-party authors",
    extract,
    True,
    "copyleft: redistributed under GPL-2 as a separate data file (ru.jsonl.gz); 'polyakov' (novel excerpts) excluded",
)
