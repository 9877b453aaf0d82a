"""Bits per character: the one definition that training validation and ``growlm eval --tasks ppl`` share.

Text is scored as the token stream ``growlm prepare`` writes (each document's tokens, then ``<|eos|>``), with
one ``<|eos|>`` in front, so that every token of every document and every closing ``<|eos|>`` is predicted
exactly once. The stream is cut into consecutive, non-overlapping windows of ``window`` predicted tokens (the
last one shorter); a token is predicted from the tokens before it in its own window only, as in training.
Bits per character = the summed negative log-likelihood in bits / the characters (Unicode code points) of
the scored documents; ``<|eos|>`` adds its loss but no character. A cap on the tokens keeps whole documents
(those that end within it), so that a capped split is the same text as its first documents.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn as nn

from growlm.model.losses import chunked_cross_entropy
from growlm.substrate import Tokenizer


@dataclass
class TextScore:
    """Negative log-likelihood per window (nats, predicted tokens) and the characters they cover."""

    window_nats: list[float]
    window_tokens: list[int]
    characters: int
    documents: int

    @property
    def nats(self) -> float:
        return sum(self.window_nats)

    @property
    def tokens(self) -> int:
        return sum(self.window_tokens)

    @property
    def nats_per_token(self) -> float:
        return self.nats / self.tokens

    @property
    def bits_per_char(self) -> float:
        return bits_per_char(self.nats, self.characters)


def bits_per_char(nats: float, characters: int) -> float:
    """Summed negative log-likelihood (nats) in bits per character."""
    if characters <= 0:
        raise ValueError(f"bits per character need at least one character, got {characters}")
    return nats / math.log(2) / characters


def _row_nats(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """Summed NLL of each row of y [B, T] given x [B, T], the head's logits never held whole."""
    T = x.shape[1]
    head = getattr(model, "head", None)
    if hasattr(model, "hidden_states") and isinstance(getattr(head, "weight", None), torch.Tensor):
        h = model.hidden_states(x)  # [B, T, C]; the same head and loss as GrowLM.forward(x, y)
        return [float(chunked_cross_entropy(h[b], head.weight, head.bias, y[b])) * T for b in range(x.shape[0])]
    if hasattr(model, "token_nll"):  # a composed model: -log p per position, the whole batch at once
        return model.token_nll(x, y).sum(1).tolist()
    return [float(model(x[b:b + 1], y[b:b + 1])) * T for b in range(x.shape[0])]  # any model(x, y) -> mean loss


@torch.no_grad()
def score_stream(model: nn.Module, ids: Sequence[int] | np.ndarray | torch.Tensor, window: int, batch: int = 16,
                 device: torch.device | str | None = None,
                 precision: Callable[[], AbstractContextManager] | None = None,
                 share: tuple[int, int] = (0, 1)) -> tuple[list[float], list[int]]:
    """(nats, tokens) of each non-overlapping window of ``window`` predicted tokens over ``ids``.

    ``precision`` makes the context the forward runs in (training passes its autocast); the model is put in
    eval mode for the call and restored. ``share = (i, n)`` scores only the batches k with k % n == i and gives
    the other windows 0 nats: the elementwise sum of the n shares is the whole list, each window computed in the
    same batch as without shares (how processes split validation, ``growlm.training.validation.validate``)."""
    if window < 1 or batch < 1:
        raise ValueError(f"window and batch must be >= 1, got window={window}, batch={batch}")
    part, parts = share
    if not 0 <= part < parts:
        raise ValueError(f"share must be (i, n) with 0 <= i < n, got {share}")
    ids = torch.as_tensor(np.asarray(ids, dtype=np.int64))
    if ids.numel() < 2:
        raise ValueError(f"nothing to score: {ids.numel()} token(s), need at least 2")
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    n_full = (ids.numel() - 1) // window
    rows = [(ids[:n_full * window].view(n_full, window), ids[1:n_full * window + 1].view(n_full, window))]
    if n_full * window + 1 < ids.numel():  # the shorter last window
        rows.append((ids[n_full * window:-1][None], ids[n_full * window + 1:][None]))
    batches = [(xs[i:i + batch], ys[i:i + batch]) for xs, ys in rows for i in range(0, xs.shape[0], batch)]
    nats: list[float] = []
    tokens: list[int] = []
    was_training = model.training
    model.eval()
    try:
        for k, (x, y) in enumerate(batches):
            tokens += [y.shape[1]] * x.shape[0]
            if k % parts != part:
                nats += [0.0] * x.shape[0]
                continue
            with (precision or contextlib.nullcontext)():
                nats += _row_nats(model, x.to(device), y.to(device))
    finally:
        model.train(was_training)
    return nats, tokens


def document_stream(docs: list[list[int]], eos: int) -> list[int]:
    """``<|eos|>`` followed by each document's tokens and its closing ``<|eos|>``."""
    ids = [eos]
    for d in docs:
        ids += list(d) + [eos]
    return ids


def score_texts(model: nn.Module, tokenizer, docs: list[str], window: int, batch: int = 16,
                device: torch.device | str | None = None) -> TextScore:
    """Score documents given as text (``growlm eval --tasks ppl``)."""
    if not docs:
        raise ValueError("no documents to score")
    ids = document_stream([tokenizer.encode(t) for t in docs], tokenizer.eos_id)
    nats, tokens = score_stream(model, ids, window, batch, device)
    return TextScore(nats, tokens, sum(len(t) for t in docs), len(docs))


@lru_cache(maxsize=64)
def _decoded_characters(vocab: str, ids: bytes, dtype: str) -> int:
    return len(Tokenizer.load(vocab).decode(np.frombuffer(ids, dtype=dtype).tolist(), skip_special_tokens=True))


def split_stream(data, lang: str, max_tokens: int | None = None, max_documents: int | None = None
                 ) -> tuple[np.ndarray, int, int]:
    """(ids with the leading ``<|eos|>``, characters, documents) of ``lang``'s validation split in ``data``
    (a ``growlm.data.prepare.TokenData``), cut to the whole documents that end within ``max_tokens`` tokens (the
    first ``max_tokens`` tokens if the first document is longer), and to at most ``max_documents``."""
    stream = data.tokens(lang, "val")
    if stream.size == 0:
        raise ValueError(f"{lang!r} has an empty validation split in {data.root}; nothing to score")
    eos = data.meta.get("eos_id")
    if eos is None:
        eos = Tokenizer.load(data.meta["vocab"]).eos_id
    cut = stream.size
    if max_tokens and max_tokens < stream.size:
        ends = np.flatnonzero(np.asarray(stream[:max_tokens]) == eos)
        cut = int(ends[-1]) + 1 if ends.size else int(max_tokens)
    if max_documents:
        ends = np.flatnonzero(np.asarray(stream[:cut]) == eos)
        if ends.size > max_documents:
            cut = int(ends[max_documents - 1]) + 1
    body = np.asarray(stream[:cut])
    if cut == stream.size:
        chars = data.characters(lang, "val")
    else:  # characters of the kept documents: decoding is lossless (tokenizer round trip)
        chars = _decoded_characters(data.meta["vocab"], body.tobytes(), str(body.dtype))
    docs = int((body == eos).sum()) + int(body[-1] != eos)
    return np.concatenate([np.array([eos], dtype=np.int64), body.astype(np.int64)]), chars, docs


def score_split(model: nn.Module, data, lang: str, window: int, max_tokens: int | None = None, batch: int = 16,
                device: torch.device | str | None = None,
                precision: Callable[[], AbstractContextManager] | None = None,
                max_documents: int | None = None, share: tuple[int, int] = (0, 1)) -> TextScore:
    """Score ``lang``'s validation split of prepared token files (training validation, ``growlm eval --data DIR``);
    ``share`` as in ``score_stream``."""
    ids, chars, docs = split_stream(data, lang, max_tokens, max_documents)
    nats, tokens = score_stream(model, ids, window, batch, device, precision, share)
    return TextScore(nats, tokens, chars, docs)
