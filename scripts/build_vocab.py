"""Choose the shipped vocabularies' characters and n-grams from an assembled corpus.

Run once; the JSON it writes is committed and never re-derived at run time:

    python scripts/build_vocab.py --corpus CORPUS_DIR --out src/growlm/substrate/vocabs

CORPUS_DIR is the output of ``growlm.data.sources.assemble_corpus`` (``<lang>/<source>.jsonl``).
N-grams (2 and 3 characters) are counted within pieces (``PIECE_PATTERN``) so none
crosses a piece boundary; score = frequency x (len - 1) with each language's counts
divided by its character total, summed over languages; ties broken by the string.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
import unicodedata
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
load_documents = importlib.import_module("growlm.data.documents").load_documents

PIECE_PATTERN = r" ?[^\s]{1,23}|\s{1,24}"
LANGS = ("en", "ru", "zh")
N_SPECIAL = 16
N_BYTES = 128
BMP_N_NGRAMS = (0xE000 - 0xD800) + (0xF900 - (0xE000 + N_SPECIAL + N_BYTES))  # 8304
COMPACT_SIZE = 16384
VERSION = "1.0"


def is_own_id_char(ch: str) -> bool:
    """True when the character has its own id in the bmp layout."""
    cp = ord(ch)
    return cp < 0xD800 or 0xF900 <= cp <= 0xFFFE


def allowed_char(ch: str) -> bool:
    """True for characters an n-gram or compact char may contain (no controls but \\n \\t, no Cs/Co/Cn)."""
    if ch in "\n\t":
        return True
    cat = unicodedata.category(ch)
    return is_own_id_char(ch) and cat not in ("Cc", "Cs", "Co", "Cn")


def count_corpus(corpus: Path) -> tuple[dict[str, Counter[str]], dict[str, Counter[str]], list[str]]:
    """Count pieces and characters per language; also return the source names found."""
    rx = re.compile(PIECE_PATTERN)
    pieces = {lang: Counter[str]() for lang in LANGS}
    chars = {lang: Counter[str]() for lang in LANGS}
    for lang in LANGS:
        if not (corpus / lang).is_dir():
            raise SystemExit(f"{corpus / lang}: missing; run growlm.data.sources.assemble_corpus first")
        for _, text in load_documents(corpus / lang):
            pieces[lang].update(rx.findall(text))
            chars[lang].update(text)
    sources = sorted(p.stem for p in corpus.glob("*/*.jsonl"))
    return pieces, chars, sources


def ngram_counts(pieces: Counter[str], allowed: set[str] | None) -> Counter[str]:
    """Count 2- and 3-grams inside pieces (weighted by piece count), skipping disallowed chars."""
    out: Counter[str] = Counter()
    for piece, n in pieces.items():
        for k in (2, 3):
            for i in range(len(piece) - k + 1):
                g = piece[i : i + k]
                out[g] += n
    bad = {g for g in out if not all(allowed_char(c) and (allowed is None or c in allowed) for c in g)}
    for g in bad:
        del out[g]
    return out


def choose_ngrams(
    counts: dict[str, Counter[str]], totals: dict[str, int], n: int, min_share: float = 0.0
) -> tuple[list[str], dict[str, int]]:
    """Pick n n-grams by summed per-language normalised savings; return them and each language's share.

    Each language first gets its own best floor(min_share * n) n-grams; the rest go by summed score.
    """
    score: dict[str, float] = {}
    best: dict[str, tuple[float, str]] = {}
    own: dict[str, dict[str, float]] = {lang: {} for lang in counts}
    for lang, c in counts.items():
        for g, f in c.items():
            s = f * (len(g) - 1) / totals[lang]
            own[lang][g] = s
            score[g] = score.get(g, 0.0) + s
            if s > best.get(g, (0.0, ""))[0]:
                best[g] = (s, lang)
    if len(score) < n:
        raise SystemExit(f"only {len(score)} candidate n-grams, need {n}")
    taken: set[str] = set()
    quota = int(min_share * n)
    for lang in sorted(own):
        taken.update(sorted(own[lang], key=lambda g, d=own[lang]: (-d[g], g))[:quota])
    for g in sorted(score, key=lambda g: (-score[g], g)):
        if len(taken) >= n:
            break
        taken.add(g)
    chosen = sorted(taken, key=lambda g: (-score[g], g))
    share = Counter(best[g][1] for g in chosen)
    return chosen, {lang: share.get(lang, 0) for lang in LANGS}


def choose_chars(chars: dict[str, Counter[str]], totals: dict[str, int], cover: float, min_freq: float) -> list[str]:
    """ASCII in order, then non-ASCII chars covering `cover` of each language or of frequency >= min_freq."""
    picked: set[str] = set()
    for lang, c in chars.items():
        picked.update(ch for ch, f in c.items() if ord(ch) >= 128 and allowed_char(ch) and f >= min_freq * totals[lang])
        need = cover * totals[lang]
        got = sum(f for ch, f in c.items() if ord(ch) < 128)
        for ch, f in sorted(c.items(), key=lambda x: (-x[1], x[0])):
            if got >= need:
                break
            if ord(ch) >= 128 and allowed_char(ch):
                picked.add(ch)
                got += f
    freq = {ch: sum(chars[lang][ch] / totals[lang] for lang in LANGS) for ch in picked}
    rest = sorted(picked, key=lambda ch: (-freq[ch], ch))
    return [chr(i) for i in range(128)] + rest


def compression(pieces: Counter[str], ngrams: set[str], char_ok: set[str] | None) -> float:
    """Characters per token of greedy longest-match within pieces (byte fallback for unknown chars)."""
    n_chars = n_tokens = 0
    for piece, n in pieces.items():
        i, toks = 0, 0
        while i < len(piece):
            if piece[i : i + 3] in ngrams and i + 3 <= len(piece):
                i += 3
            elif piece[i : i + 2] in ngrams and i + 2 <= len(piece):
                i += 2
            else:
                ch = piece[i]
                ok = is_own_id_char(ch) if char_ok is None else ch in char_ok
                toks += 1 if ok else len(ch.encode("utf-8"))
                i += 1
                continue
            toks += 1
        n_chars += len(piece) * n
        n_tokens += toks * n
    return n_chars / max(n_tokens, 1)


def coverage(chars: Counter[str], charset: set[str]) -> float:
    """Fraction of character occurrences covered by charset."""
    total = sum(chars.values())
    return sum(f for ch, f in chars.items() if ch in charset) / max(total, 1)


def dump(obj: dict[str, object], path: Path) -> None:
    """Write compact JSON: one list item per line, UTF-8."""
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    """Build bmp65k.json and compact.json from an assembled corpus."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, required=True, help="output dir of assemble_corpus")
    ap.add_argument("--out", type=Path, required=True, help="where to write bmp65k.json and compact.json")
    ap.add_argument(
        "--char-coverage",
        type=float,
        default=0.995,
        help="compact: fraction of each language's character occurrences the chars must cover",
    )
    ap.add_argument(
        "--char-min-freq",
        type=float,
        default=1e-5,
        help="compact: also keep every character at least this frequent in some language",
    )
    ap.add_argument(
        "--min-share",
        type=float,
        default=0.25,
        help="each language's guaranteed share of the n-grams (its own top n-grams)",
    )
    args = ap.parse_args(argv)

    pieces, chars, sources = count_corpus(args.corpus)
    totals = {lang: sum(chars[lang].values()) for lang in LANGS}
    print("characters per language:", totals)

    # bmp65k
    counts = {lang: ngram_counts(pieces[lang], None) for lang in LANGS}
    bmp, bmp_share = choose_ngrams(counts, totals, BMP_N_NGRAMS, args.min_share)
    # compact
    char_list = choose_chars(chars, totals, args.char_coverage, args.char_min_freq)
    charset = set(char_list)
    n_compact = COMPACT_SIZE - N_SPECIAL - N_BYTES - len(char_list)
    ccounts = {lang: Counter({g: f for g, f in counts[lang].items() if all(c in charset for c in g)}) for lang in LANGS}
    compact, compact_share = choose_ngrams(ccounts, totals, n_compact, args.min_share)

    args.out.mkdir(parents=True, exist_ok=True)
    built_by = "scripts/build_vocab.py"
    dump(
        {
            "name": "bmp65k",
            "version": VERSION,
            "layout": "bmp",
            "ngrams": bmp,
            "sources": sources,
            "built_by": built_by,
        },
        args.out / "bmp65k.json",
    )
    dump(
        {
            "name": "compact",
            "version": VERSION,
            "layout": "compact",
            "chars": char_list,
            "ngrams": compact,
            "sources": sources,
            "built_by": built_by,
        },
        args.out / "compact.json",
    )

    summary = {
        "sources": sources,
        "char_coverage_target": args.char_coverage,
        "char_min_freq": args.char_min_freq,
        "min_share": args.min_share,
        "characters": totals,
        "bmp65k": {
            "ngrams": len(bmp),
            "share": bmp_share,
            "chars_per_token": {lang: round(compression(pieces[lang], set(bmp), None), 3) for lang in LANGS},
            "chars_only_chars_per_token": {lang: round(compression(pieces[lang], set(), None), 3) for lang in LANGS},
        },
        "compact": {
            "chars": len(char_list),
            "ngrams": len(compact),
            "share": compact_share,
            "char_coverage": {lang: round(coverage(chars[lang], charset), 5) for lang in LANGS},
            "chars_per_token": {lang: round(compression(pieces[lang], set(compact), charset), 3) for lang in LANGS},
        },
    }
    print(json.dumps(summary, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main()
