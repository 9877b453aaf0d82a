"""Write the author's vocabularies (bvv241-2-3, bvv241-abs) from the author's n-gram lists.

Run once; the JSON it writes is committed and never re-derived at run time:

    python scripts/build_author_vocab.py --out src/growlm/substrate/vocabs

Input: the author's files as shipped in ``src/growlm/substrate/vocabs/pgt/`` (from the public
repository AVBochkov/PGT, Apache-2.0; see SOURCES.md). The selection is the one the author's
builder notebooks make: for each of the 32 languages, the first ``top`` n-grams of every
length (the lists are ordered by count); their union (bvv241-abs adds every entry of at
least 2 characters of ``_n-gramms-intersection.txt``); ordered longer first, then by the
string (code point order); the first ones fill the layout's n-gram ids, the rest are dropped.
"""

from __future__ import annotations

import argparse
import ast
import gzip
import hashlib
import json
from pathlib import Path

PGT = Path(__file__).resolve().parents[1] / "src" / "growlm" / "substrate" / "vocabs" / "pgt"
COMMIT = "6b618a27b455f012bc873f3dd4d1ca51d8323669"
LANGUAGES = ("en", "ru", "fr", "de", "zh", "he", "it", "es", "ar", "pt", "ko", "hu", "sa", "la", "ja", "el",
             "sv", "nl", "pl", "vi", "fa", "no", "tr", "fi", "cs", "hy", "da", "bn", "az", "ka", "hi", "id")
SPECIALS = ("<pad>", "<s>", "</s>", "<unk>", "<think>", "</think>", "<emotions>", "</emotions>", "<tool_call>",
            "</tool_call>", "<tool_response>", "</tool_response>", "[INST]", "[/INST]", "[EOT]", "[USER]",
            "[ASSISTANT]", "[FIM_PREFIX]", "[FIM_MIDDLE]", "[FIM_SUFFIX]", "[FIM_PAD]", "[REPO_NAME]", "[FILE_SEP]")
# name: (n-gram file, top per length and language, extra list or None, V, n-gram ids, builder notebook)
VOCABS = {
    "bvv241-2-3": ("_n-gramms-2-3.txt", 338, None, 65536, 2048 + 6144, "_tokenizer-builder-bvv241-2-3.ipynb"),
    "bvv241-abs": ("_n-gramms-2-3-4-5.txt", 906, "_n-gramms-intersection.txt", 131072, 2048 + 6144 + 65535,
                   "_tokenizer-builder-bvv241-abs.ipynb"),
}
VERSION = "1"


def read_source(name: str) -> tuple[str, str]:
    """Text of a shipped author file and the SHA-256 of its uncompressed bytes."""
    raw = gzip.decompress((PGT / f"{name}.gz").read_bytes())
    return raw.decode("utf-8"), hashlib.sha256(raw).hexdigest()


def select(per_language: list[dict], top: int, extra: set[str]) -> list[str]:
    """Union of each language's ``top`` n-grams per length and ``extra``, longer first, then by string."""
    chosen = set(extra)
    for entry in per_language:
        if entry["lang"] in LANGUAGES:
            for grams in entry["top_ngrams"].values():
                chosen.update(g for g, _count in grams[:top])
    return sorted(chosen, key=lambda g: (-len(g), g))


def build(name: str) -> dict:
    file, top, extra_file, size, slots, notebook = VOCABS[name]
    text, sha = read_source(file)
    sources = {file: sha}
    extra: set[str] = set()
    if extra_file:
        extra_text, sources[extra_file] = read_source(extra_file)
        extra = {line.strip() for line in extra_text.splitlines()} - {""}
        extra = {g for g in extra if len(g) > 1}
    ordered = select(ast.literal_eval(text), top, extra)
    return {"name": name, "version": VERSION, "layout": "bvv", "size": size, "specials": list(SPECIALS),
            "ngrams": ordered[:slots],
            "source": {"repository": "AVBochkov/PGT", "commit": COMMIT, "notebook": notebook, "licence": "Apache-2.0",
                       "files_sha256": sources, "top_per_length": top, "languages": list(LANGUAGES),
                       "selected": len(ordered), "dropped": max(0, len(ordered) - slots)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=PGT.parent)
    args = ap.parse_args()
    for name in VOCABS:
        blob = json.dumps(build(name), ensure_ascii=False, indent=0).encode("utf-8")
        if name == "bvv241-abs":  # 74k n-grams: shipped compressed
            path = args.out / f"{name}.json.gz"
            path.write_bytes(gzip.compress(blob, compresslevel=9, mtime=0))
        else:
            path = args.out / f"{name}.json"
            path.write_bytes(blob)
        print(f"{path}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
