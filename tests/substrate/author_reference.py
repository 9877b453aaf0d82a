"""Test-only: the author's tokenizers rebuilt as the builder notebooks build them, cell by cell.

``_tokenizer-builder-bvv241-2-3.ipynb`` and ``_tokenizer-builder-bvv241-abs.ipynb`` in the
public repository AVBochkov/PGT (commit 6b618a27b455f012bc873f3dd4d1ca51d8323669). The
constants, the loops and their break conditions below follow those cells literally; nothing
here is shared with growlm's own construction (``growlm.substrate.vocab``), so a test that
compares the two checks growlm against the notebooks, not against itself. Input: the author's
raw n-gram files as shipped under ``growlm/substrate/vocabs/pgt/``.
"""

from __future__ import annotations

import ast
import gzip
from pathlib import Path

from tokenizers import Tokenizer, decoders
from tokenizers.models import BPE

PGT_DIR = Path(__file__).resolve().parents[2] / "src" / "growlm" / "substrate" / "vocabs" / "pgt"

LANGUAGES = ["en", "ru", "fr", "de", "zh", "he", "it", "es", "ar", "pt", "ko", "hu", "sa", "la", "ja", "el",
             "sv", "nl", "pl", "vi", "fa", "no", "tr", "fi", "cs", "hy", "da", "bn", "az", "ka", "hi", "id"]
SPECIAL_TOKENS = [
    "<pad>", "<s>", "</s>", "<unk>", "<think>", "</think>", "<emotions>", "</emotions>", "<tool_call>",
    "</tool_call>", "<tool_response>", "</tool_response>", "[INST]", "[/INST]", "[EOT]", "[USER]", "[ASSISTANT]",
    "[FIM_PREFIX]", "[FIM_MIDDLE]", "[FIM_SUFFIX]", "[FIM_PAD]", "[REPO_NAME]", "[FILE_SEP]",
]

UNICODE_LIMIT = 0xD800
SURROGATE_START = 0xD800
SURROGATE_END = 0xE000
SPECIAL_TOKENS_START = 0xE000
SPECIAL_TOKENS_LIMIT = SPECIAL_TOKENS_START + 256
NGRAM_START = SPECIAL_TOKENS_LIMIT
NGRAM_LIMIT = 0xF900
NGRAM_START_EXT = 0x10000
NGRAM_LIMIT_EXT = 0x1FFFF


def _read(name: str) -> str:
    with gzip.open(PGT_DIR / f"{name}.gz", "rt", encoding="utf-8") as f:
        return f.read()


def _base_vocab() -> dict[str, int]:
    """Cell 8/9: characters 0..D7FF, the specials, reserved special ids, characters F900..FFFE."""
    vocab = {}
    for cp in range(0x0000, UNICODE_LIMIT):
        ch = chr(cp)
        if ch not in vocab:
            vocab[ch] = cp
    for i, tok in enumerate(SPECIAL_TOKENS):
        vocab[tok] = SPECIAL_TOKENS_START + i
    for cp in range(SPECIAL_TOKENS_START + len(SPECIAL_TOKENS), SPECIAL_TOKENS_LIMIT):
        vocab[f"<special_token_{cp}>"] = cp
    for cp in range(NGRAM_LIMIT, 0xFFFF):
        ch = chr(cp)
        if ch not in vocab:
            vocab[ch] = cp
    return vocab


def _ngram_set(ngram_data, top_cnt: int) -> set[str]:
    ngram_set = set()
    for entry in ngram_data:
        if entry["lang"] not in LANGUAGES:
            continue
        top_ngrams = entry["top_ngrams"]
        for n in sorted(top_ngrams.keys(), reverse=True):
            for gram, _ in top_ngrams[n][:top_cnt]:
                ngram_set.add(gram)
    return ngram_set


def _place(vocab: dict[str, int], ngram_set: set[str], extended: bool) -> None:
    next_id = SURROGATE_START
    added_ng = []
    for ng in sorted(ngram_set, key=lambda x: (-len(x), x)):
        vocab[ng] = next_id
        added_ng.append(ng)
        next_id += 1
        if next_id >= SURROGATE_END:
            break
    added = set(added_ng)  # the notebook tests `ng not in added_ng` on the list; same answer, faster
    next_id = NGRAM_START
    for ng in sorted(ngram_set, key=lambda x: (-len(x), x)):
        if ng not in added:
            vocab[ng] = next_id
            added.add(ng)
            next_id += 1
            if next_id >= NGRAM_LIMIT:
                break
    if extended:
        next_id = NGRAM_START_EXT
        for ng in sorted(ngram_set, key=lambda x: (-len(x), x)):
            if ng not in added:
                vocab[ng] = next_id
                added.add(ng)
                next_id += 1
                if next_id >= NGRAM_LIMIT_EXT:
                    break


def _fill_unused(vocab: dict[str, int], size: int) -> None:
    used_ids = set(vocab.values())
    for fill_id in range(0, size):
        if fill_id not in used_ids:
            vocab[f"<unused_{fill_id}>"] = fill_id


def generate_merges_from_ngrams(vocab: dict[str, int], ngram_set: set[str]) -> list[tuple[str, str]]:
    merges = []
    for piece in sorted(ngram_set, key=lambda x: (-len(x), x)):
        if piece not in vocab:
            continue
        i = 1
        while i <= len(piece):
            left = piece[:i]
            right = piece[i:]
            if left in vocab and right in vocab:
                merges.append((left, right))
            i += 1
    return merges


def bvv241_2_3() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The vocabulary dict and merges of ``_tokenizer-builder-bvv241-2-3.ipynb``."""
    ngram_data = ast.literal_eval(_read("_n-gramms-2-3.txt"))
    vocab = _base_vocab()
    ngram_set = _ngram_set(ngram_data, 338)
    _place(vocab, ngram_set, extended=False)
    _fill_unused(vocab, 65536)
    return vocab, generate_merges_from_ngrams(vocab, ngram_set)


def bvv241_abs() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The vocabulary dict and merges of ``_tokenizer-builder-bvv241-abs.ipynb``."""
    ngram_data = ast.literal_eval(_read("_n-gramms-2-3-4-5.txt"))
    intersection = {line.strip() for line in _read("_n-gramms-intersection.txt").splitlines()}
    vocab = _base_vocab()
    ngram_set = _ngram_set(ngram_data, 906)
    ngram_list = [ng for ng in intersection if len(ng) > 1]
    ngram_list_sorted = sorted(ngram_list, key=len)
    # The notebook keeps the 65,536 shortest; there are fewer, so all are kept and set order cannot matter.
    assert len(ngram_list_sorted) <= 65536
    ngram_set = ngram_set.union(set(ngram_list_sorted[0:65536]))
    _place(vocab, ngram_set, extended=True)
    _fill_unused(vocab, 2 * 65536)
    return vocab, generate_merges_from_ngrams(vocab, ngram_set)


def author_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]]) -> Tokenizer:
    """Cell 24: BPE with those merges, ``<unk>``, no pre-tokenizer, the 23 specials added."""
    tokenizer = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
    tokenizer.pre_tokenizer = None
    tokenizer.decoder = decoders.Sequence([])
    tokenizer.post_processor = None
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    return tokenizer
