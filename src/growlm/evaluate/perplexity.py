"""Perplexity and bits per character on held-out text (``growlm.evaluate.bpc`` defines how they are counted)."""

from __future__ import annotations

import math
from pathlib import Path

from growlm.data.documents import load_documents
from growlm.evaluate.bpc import TextScore, score_split, score_texts
from growlm.evaluate.scorer import Scorer
from growlm.evaluate.stats import bootstrap_ci


def read_texts(path: str | Path) -> list[str]:
    """Documents of a .txt/.jsonl file (optionally .gz) or a folder of them
    (``growlm.data.documents.load_documents``)."""
    return [text for _, text in load_documents(path)]


def is_token_dir(path: str | Path) -> bool:
    """A directory written by ``growlm prepare`` (scored on its validation split, as training validates)."""
    return (Path(path) / "meta.json").is_file()


def summarise(score: TextScore, window: int, seed: int = 0) -> dict:
    """nats/token, perplexity and bits per character with bootstrap 95 % intervals over windows."""
    per_tok = score.nats_per_token
    lo, hi = bootstrap_ci([a / c for a, c in zip(score.window_nats, score.window_tokens)],
                          weights=score.window_tokens, seed=seed)
    tok_per_char = score.tokens / score.characters
    return {"nats_per_token": per_tok, "nats_per_token_ci95": [lo, hi], "perplexity": math.exp(per_tok),
            "perplexity_ci95": [math.exp(lo), math.exp(hi)], "bits_per_char": score.bits_per_char,
            "bits_per_char_ci95": [lo * tok_per_char / math.log(2), hi * tok_per_char / math.log(2)],
            "tokens": score.tokens, "characters": score.characters, "documents": score.documents, "window": window,
            "ci_method": "bootstrap over windows, 1000 resamples"}


def score_perplexity(scorer: Scorer, docs: list[str], seed: int = 0) -> dict:
    """Perplexity and bits per character of documents, in windows of the scorer's ``max_length``."""
    if not docs:
        raise ValueError("no documents to score perplexity on")
    score = score_texts(scorer.model, scorer.tok, docs, scorer.max_length, scorer.batch_size, scorer.device)
    return summarise(score, scorer.max_length, seed)


def score_token_split(scorer: Scorer, data, lang: str, max_documents: int | None = None, seed: int = 0) -> dict:
    """The same on ``lang``'s validation split of prepared token files (its first ``max_documents``): what
    training validation logs when its ``seq_len`` equals the window and ``val_tokens`` covers those documents."""
    score = score_split(scorer.model, data, lang, scorer.max_length, None, scorer.batch_size, scorer.device,
                        max_documents=max_documents)
    return summarise(score, scorer.max_length, seed)
