"""Perplexity and bits per character on held-out text, in non-overlapping windows of the model's context."""

from __future__ import annotations

import math
from pathlib import Path

from growlm.corpus import load_documents
from growlm.evaluate.scorer import Scorer
from growlm.evaluate.stats import bootstrap_ci


def read_texts(path: str | Path) -> list[str]:
    """Documents of a .txt/.jsonl file (optionally .gz) or a folder of them (``growlm.corpus.load_documents``)."""
    return [text for _, text in load_documents(path)]


def score_perplexity(scorer: Scorer, docs: list[str], seed: int = 0) -> dict:
    """nats/token, perplexity and bits per character over documents joined by <|eos|> (as training data is).

    Every token after the first is predicted once; bits per character divide by the documents' characters, so
    they compare across vocabularies. Intervals: bootstrap over windows (1,000 resamples)."""
    if not docs:
        raise ValueError("no documents to score perplexity on")
    tok = scorer.tok
    ids: list[int] = []
    for t in docs:
        ids += tok.encode(t) + [tok.eos_id]
    chars = sum(len(t) for t in docs)
    windows = scorer.rolling_nll(ids)
    nats = [w[0] for w in windows]
    counts = [w[1] for w in windows]
    total, n_tok = sum(nats), sum(counts)
    per_tok = total / n_tok
    lo, hi = bootstrap_ci([a / c for a, c in zip(nats, counts)], weights=counts, seed=seed)
    tok_per_char = n_tok / chars
    return {"nats_per_token": per_tok, "nats_per_token_ci95": [lo, hi], "perplexity": math.exp(per_tok),
            "perplexity_ci95": [math.exp(lo), math.exp(hi)], "bits_per_char": total / math.log(2) / chars,
            "bits_per_char_ci95": [lo * tok_per_char / math.log(2), hi * tok_per_char / math.log(2)],
            "tokens": n_tok, "characters": chars, "documents": len(docs), "window": scorer.max_length,
            "ci_method": "bootstrap over windows, 1000 resamples"}
