"""Perplexity and bits per character on held-out text, in non-overlapping windows of the model's context."""

from __future__ import annotations

import json
import math
from pathlib import Path

from growlm.evaluate.scorer import Scorer
from growlm.evaluate.stats import bootstrap_ci


def read_texts(path: str | Path) -> list[str]:
    """Documents of a .txt file (one document), a .jsonl file (a 'text' field per line) or a folder of them."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".jsonl"))
        if not files:
            raise FileNotFoundError(f"no .txt or .jsonl file under {path}")
        return [t for f in files for t in read_texts(f)]
    if not path.exists():
        raise FileNotFoundError(f"perplexity data {path} does not exist; pass a .txt/.jsonl file or a folder")
    if path.suffix == ".jsonl":
        docs = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                row = json.loads(line)
                if "text" not in row:
                    raise ValueError(f"{path}:{n} has no 'text' field; keys are {sorted(row)}")
                docs.append(row["text"])
        return docs
    return [path.read_text(encoding="utf-8")]


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
