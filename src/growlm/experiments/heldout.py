"""Held-out text: public-domain texts per language that no training source contains, shipped with growlm.

The texts, their packages and licences are listed in ``heldout_texts/SOURCES.md``; nothing is fetched at run
time. A file holds several documents (chapters, stories) separated by ``SEPARATOR``. ``heldout_scores`` scores
each document with the bits-per-character definition training validation uses (``growlm.evaluate.bpc``: the
document as a prepared stream, in non-overlapping windows of the validation length) and keeps the per-document
totals, so the sampling error over documents can be bootstrapped (``HeldoutScore.interval``) beside the interval
over seeds. ``version="v1"`` reads the short single-passage texts the earlier raw data were measured on.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch

from growlm.evaluate.bpc import bits_per_char, score_texts
from growlm.substrate import Tokenizer

TEXT_DIR = Path(__file__).resolve().parent / "heldout_texts"
LANGUAGES = ("en", "ru", "zh")
SEPARATOR = "\n\n---\n\n"  # between two documents of one file
VERSIONS = ("v2", "v1")  # v2: the current texts (several documents); v1: the earlier single passages
CURRENT = VERSIONS[0]  # what a run scores (recorded in each study summary as heldout_texts)


def _path(lang: str, version: str) -> Path:
    if version not in VERSIONS:
        raise ValueError(f"no held-out texts version {version!r}; there are: {', '.join(VERSIONS)}")
    path = (TEXT_DIR / "v1" if version == "v1" else TEXT_DIR) / f"{lang}.txt"
    if not path.is_file():
        raise ValueError(f"no held-out text for language {lang!r}; there are: {', '.join(LANGUAGES)}")
    return path


def heldout_text(lang: str, max_chars: int | None = None, version: str = CURRENT) -> str:
    """The shipped held-out text of ``lang`` (cut at a line end before ``max_chars`` characters, if given)."""
    text = _path(lang, version).read_text(encoding="utf-8")
    if max_chars and len(text) > max_chars:
        cut = text.rfind("\n", 0, max_chars)
        text = text[:cut if cut > 0 else max_chars]
    return text


def heldout_documents(lang: str, max_chars: int | None = None, version: str = CURRENT) -> list[str]:
    """The documents of ``lang``'s held-out text (the text cut to ``max_chars`` first, if given)."""
    docs = [d.strip("\n") for d in heldout_text(lang, max_chars, version).split(SEPARATOR)]
    return [d for d in docs if d.strip() and d.strip() != "---"]


@dataclass(frozen=True)
class HeldoutScore:
    """One language's held-out score: summed nats and characters per document."""

    nats: tuple[float, ...]
    characters: tuple[int, ...]

    @property
    def bpc(self) -> float:
        """Bits per character over all documents (characters weigh, not documents)."""
        return bits_per_char(sum(self.nats), sum(self.characters))

    def interval(self, n_boot: int = 2000, seed: int = 0) -> tuple[float, float] | None:
        """95% percentile bootstrap interval of ``bpc`` over documents (None with a single document)."""
        n = len(self.nats)
        if n < 2:
            return None
        rng = random.Random(seed)
        draws = []
        for _ in range(n_boot):
            pick = [rng.randrange(n) for _ in range(n)]
            draws.append(bits_per_char(sum(self.nats[i] for i in pick), sum(self.characters[i] for i in pick)))
        draws.sort()
        return draws[int(0.025 * (n_boot - 1))], draws[int(0.975 * (n_boot - 1))]


def heldout_scores(model: torch.nn.Module, vocab: str, window: int, langs: tuple[str, ...] = LANGUAGES,
                   max_chars: int | None = None, version: str = CURRENT) -> dict[str, HeldoutScore]:
    """Each language's held-out documents scored one by one (``window``: the validation length)."""
    tok = Tokenizer.load(vocab)
    out = {}
    for lang in langs:
        scores = [score_texts(model, tok, [doc], window) for doc in heldout_documents(lang, max_chars, version)]
        out[lang] = HeldoutScore(tuple(s.nats for s in scores), tuple(s.characters for s in scores))
    return out


def heldout_bpc(model: torch.nn.Module, vocab: str, window: int, langs: tuple[str, ...] = LANGUAGES,
                max_chars: int | None = None, version: str = CURRENT) -> dict[str, float]:
    """Bits per character of ``model`` on each language's held-out text (``window``: the validation length)."""
    return {k: round(s.bpc, 4) for k, s in heldout_scores(model, vocab, window, langs, max_chars, version).items()}


def document_halfwidth(scores: dict[str, HeldoutScore], n_boot: int = 2000, seed: int = 0) -> float | None:
    """Half-width of the 95% bootstrap interval (documents resampled within each language) of the language mean of
    held-out bpc: the sampling error of the texts, beside the interval over seeds. None if a language has one
    document."""
    rng = random.Random(seed)
    if any(len(s.nats) < 2 for s in scores.values()):
        return None
    draws = []
    for _ in range(n_boot):
        total = 0.0
        for s in scores.values():
            pick = [rng.randrange(len(s.nats)) for _ in s.nats]
            total += bits_per_char(sum(s.nats[i] for i in pick), sum(s.characters[i] for i in pick))
        draws.append(total / len(scores))
    draws.sort()
    return (draws[int(0.975 * (n_boot - 1))] - draws[int(0.025 * (n_boot - 1))]) / 2
