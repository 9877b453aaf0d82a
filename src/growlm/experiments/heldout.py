"""Held-out text: one public-domain text per language that no training source contains, shipped with growlm.

The texts, their packages and licences are listed in ``heldout_texts/SOURCES.md``; nothing is fetched at run
time. ``heldout_bpc`` scores them with the bits-per-character definition training validation uses (the token
stream ``growlm prepare`` writes, cut into non-overlapping windows of the validation length).
"""

from __future__ import annotations

from pathlib import Path

import torch

from growlm.evaluate.bpc import score_texts

TEXT_DIR = Path(__file__).resolve().parent / "heldout_texts"
LANGUAGES = ("en", "ru", "zh")


def heldout_text(lang: str, max_chars: int | None = None) -> str:
    """The shipped held-out text of ``lang`` (cut at a line end before ``max_chars`` characters, if given)."""
    path = TEXT_DIR / f"{lang}.txt"
    if not path.is_file():
        raise ValueError(f"no held-out text for language {lang!r}; there are: {', '.join(LANGUAGES)}")
    text = path.read_text(encoding="utf-8")
    if max_chars and len(text) > max_chars:
        cut = text.rfind("\n", 0, max_chars)
        text = text[:cut if cut > 0 else max_chars]
    return text


def heldout_bpc(model: torch.nn.Module, vocab: str, window: int, langs: tuple[str, ...] = LANGUAGES,
                max_chars: int | None = None) -> dict[str, float]:
    """Bits per character of ``model`` on each language's held-out text (``window``: the validation length)."""
    from growlm.substrate import Tokenizer

    tok = Tokenizer.load(vocab)
    out = {}
    for lang in langs:
        out[lang] = round(score_texts(model, tok, [heldout_text(lang, max_chars)], window).bits_per_char, 4)
    return out
