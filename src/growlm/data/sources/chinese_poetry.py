"""Classical Chinese poetry (npm chinese-poetry)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

from growlm.data.documents import clean_text, dedupe, pack_records
from growlm.data.sources.archives import archive_members, natural_key
from growlm.data.sources.source import Source

_POETRY_FILES = (
    r"package/dist/(quantangshi/poet\.tang\.\d+|songci/ci\.song\.\d+|shijing/shijing|chuci/chuci"
    r"|lunyu/lunyu|sishuwujing/\w+|yuanqu/yuanqu|wudaishici/\w+/\w+|caocaoshiji/caocao"
    r"|nalanxingde/[^/]+|shuimotangshi/shuimotangshi|youmengying/youmengying)\.json$"
)


def _poem_text(obj: dict[str, object]) -> str:
    title = str(obj.get("title") or obj.get("rhythmic") or obj.get("chapter") or "")
    author = str(obj.get("author") or "")
    body = obj.get("paragraphs") or obj.get("content") or obj.get("para") or []
    if isinstance(body, str):
        body = [body]
    lines = [str(x) for x in body] if isinstance(body, list) else []
    head = "\n".join(x for x in (title, author) if x)
    return clean_text(head + "\n" + "\n".join(lines)) if lines else ""


def _walk_poems(obj: object) -> Iterator[dict[str, object]]:
    if isinstance(obj, list):
        for x in obj:
            yield from _walk_poems(x)
    elif isinstance(obj, dict):
        if any(k in obj for k in ("paragraphs", "content", "para")):
            yield obj
        else:
            for v in obj.values():
                yield from _walk_poems(v)


def extract(path: Path) -> list[str]:
    rx = re.compile(_POETRY_FILES)
    members = sorted(((n, d) for n, d in archive_members(path) if rx.search(n)), key=lambda x: natural_key(x[0]))
    docs = []
    for _, data in members:
        poems = [_poem_text(p) for p in _walk_poems(json.loads(data.decode("utf-8")))]
        # "□" marks a character missing from the source edition: drop such poems.
        poems = dedupe(p for p in poems if p and "□" not in p)
        docs.extend(pack_records(poems, 4000))
    return docs


SOURCE = Source(
    "chinese_poetry",
    "zh",
    "npm",
    "chinese-poetry",
    "2.0.1",
    "MIT (LICENSE, package.json); classical poems are public domain",
    extract,
    True,
)
