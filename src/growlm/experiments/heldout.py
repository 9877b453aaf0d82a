"""Held-out text: one public-domain text per language that no training source contains, shipped with growlm.

The texts, their packages and licences are listed in ``heldout_texts/SOURCES.md``; nothing is fetched at run
time. ``heldout_bpc`` scores them with the bits-per-character definition training validation uses (the token
stream ``growlm prepare`` writes, cut into non-overlapping windows of the validation length).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

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


def _score_texts(model: torch.nn.Module, tokenizer, docs: list[str], window: int) -> tuple[float, int]:
    """(summed nats, characters) of ``docs`` scored as a prepared stream in non-overlapping windows."""
    try:  # the package's one bits-per-character definition, where it exists
        from growlm.evaluate.bpc import score_texts
    except ImportError:
        score_texts = None
    if score_texts is not None:
        s = score_texts(model, tokenizer, docs, window)
        return s.nats, s.characters
    # the same definition: <|eos|> doc <|eos|> doc <|eos|> ..., every token after the first predicted once
    ids = [tokenizer.eos_id]
    for d in docs:
        ids += tokenizer.encode(d) + [tokenizer.eos_id]
    ids_t = torch.tensor(ids, dtype=torch.long)
    device = next(model.parameters()).device
    nats = 0.0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for lo in range(0, len(ids) - 1, window):
                x = ids_t[lo:lo + window][None].to(device)
                y = ids_t[lo + 1:lo + window + 1][None].to(device)
                x = x[:, :y.shape[1]]
                nats += float(model(x, y)) * y.shape[1]
    finally:
        model.train(was_training)
    return nats, sum(len(d) for d in docs)


def heldout_bpc(model: torch.nn.Module, vocab: str, window: int, langs: tuple[str, ...] = LANGUAGES,
                max_chars: int | None = None) -> dict[str, float]:
    """Bits per character of ``model`` on each language's held-out text (``window``: the validation length)."""
    from growlm.substrate import Tokenizer

    tok = Tokenizer.load(vocab)
    out = {}
    for lang in langs:
        nats, chars = _score_texts(model, tok, [heldout_text(lang, max_chars)], window)
        out[lang] = round(nats / math.log(2) / chars, 4)
    return out
