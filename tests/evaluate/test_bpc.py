"""Bits per character: one definition, the same number from training validation and `growlm eval --tasks ppl`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from growlm.data.documents import default_corpus_dir, load_documents
from growlm.data.prepare import prepare
from growlm.data.tokens import TokenData, heldout_texts
from growlm.evaluate import evaluate
from growlm.evaluate.bpc import bits_per_char, score_stream, score_texts, split_stream
from growlm.evaluate.perplexity import score_perplexity
from growlm.evaluate.scorer import Scorer
from growlm.training.plan import TrainSpec
from growlm.training.validation import validate

VAL_FRACTION = 0.4


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory) -> Path:
    """Short en/ru/zh documents (a few hundred tokens of validation per language: the tests stay fast)."""
    root = tmp_path_factory.mktemp("bpc-corpus")
    for lang in ("en", "ru", "zh"):
        docs = [text[:200] for _, (_, text) in zip(range(12), load_documents(default_corpus_dir(), lang))]
        (root / f"{lang}.jsonl").write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs),
                                            encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def small_data(small_corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bpc-tokens") / "data"
    prepare(small_corpus, out, vocab="compact", val_fraction=VAL_FRACTION)
    return out


class Uniform(nn.Module):
    """Every token has probability 1/V: the loss of n predicted tokens is n ln V, by hand."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, idx, targets=None):
        logits = torch.zeros(*idx.shape, self.vocab) + self.w
        return logits if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())


class TargetsOnly(nn.Module):
    """A model reachable only through forward(idx, targets) -> mean loss (the per-window fallback path)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, idx, targets=None):
        return self.inner(idx, targets)


def test_bits_per_char_hand_computed(tok):
    docs = ["abc", "de"]
    assert [len(tok.encode(d)) for d in docs] == [2, 1]  # "ab" is one compact token
    model = Uniform(tok.vocab_size)
    s = score_texts(model, tok, docs, window=2, batch=3)
    # predicted: ab c <eos> de <eos> (the leading <eos> is only context) = 5 tokens over 5 characters
    assert s.tokens == 5 and s.characters == 5 and s.documents == 2
    assert s.window_tokens == [2, 2, 1]
    assert s.bits_per_char == pytest.approx(5 * math.log2(tok.vocab_size) / 5, rel=1e-6)
    assert bits_per_char(math.log(2) * 10, 4) == pytest.approx(2.5)
    with pytest.raises(ValueError, match="at least one character"):
        bits_per_char(1.0, 0)


def test_windows_predict_every_token_once_from_its_own_window(tiny_model, tok):
    ids = [tok.eos_id] + tok.encode("hello world, this is held-out text. " * 4) + [tok.eos_id]
    nats, counts = score_stream(tiny_model, ids, window=16, batch=2)
    assert sum(counts) == len(ids) - 1 and counts[:-1] == [16] * (len(counts) - 1)
    with torch.no_grad():
        for w, (a, n) in enumerate(zip(nats, counts)):
            x, y = torch.tensor([ids[16 * w:16 * w + n]]), torch.tensor(ids[16 * w + 1:16 * w + n + 1])
            ref = F.cross_entropy(tiny_model(x)[0].float(), y, reduction="sum")
            assert a == pytest.approx(float(ref), rel=1e-4)
    # a model that only offers forward(idx, targets) gives the same numbers
    other, _ = score_stream(TargetsOnly(tiny_model), ids, window=16, batch=2)
    assert other == pytest.approx(nats, rel=1e-5)


def test_shares_of_a_stream_sum_to_the_whole(tiny_model, tok):
    """Processes split validation with ``share``: whole batches each, and the elementwise sum is the whole list."""
    ids = [tok.eos_id] + tok.encode("held-out text, scored in shares by several processes. " * 6) + [tok.eos_id]
    whole, counts = score_stream(tiny_model, ids, window=8, batch=2)
    parts = [score_stream(tiny_model, ids, window=8, batch=2, share=(i, 3)) for i in range(3)]
    assert all(c == counts for _, c in parts)  # every share knows every window's length
    assert [sum(col) for col in zip(*(n for n, _ in parts))] == whole  # exactly: one share scored each window
    assert [sum(1 for v in n if v) for n, _ in parts] == [sum(1 for k in range(len(whole)) if k // 2 % 3 == i)
                                                         for i in range(3)]  # batch k of 2 windows: share k % 3
    with pytest.raises(ValueError, match=r"share must be \(i, n\) with 0 <= i < n, got \(2, 2\)"):
        score_stream(tiny_model, ids, window=8, share=(2, 2))


def test_training_validation_equals_eval_ppl(tiny_model, tok, small_corpus, small_data):
    """The same model and split give one number, whichever path computes it (issue: 2.862 vs 3.372)."""
    data = TokenData.open(small_data)
    window = 24
    train = TrainSpec(seq_len=window, val_tokens=10**9, precision="fp32")
    val = validate(tiny_model, data, train, torch.device("cpu"))
    scorer = Scorer(tiny_model, tok, batch_size=5, max_length=window, progress=False)
    for lang in data.languages:
        docs = heldout_texts(small_corpus, lang, val_fraction=VAL_FRACTION)
        from_text = score_perplexity(scorer, docs)
        assert from_text["characters"] == data.characters(lang) and from_text["documents"] == len(docs)
        assert val["val_bpc"][lang] == pytest.approx(from_text["bits_per_char"], abs=1e-4)
    res = evaluate(tiny_model, tok, "ppl", ppl_data=small_data, max_length=window, progress=False)
    for lang in data.languages:
        assert res["results"][f"ppl_{lang}"]["bits_per_char"] == pytest.approx(val["val_bpc"][lang], abs=1e-4)


def test_capped_validation_is_the_first_whole_documents(tiny_model, tok, small_corpus, small_data):
    data = TokenData.open(small_data)
    docs = heldout_texts(small_corpus, "en", val_fraction=VAL_FRACTION)
    first_two = len(tok.encode(docs[0])) + len(tok.encode(docs[1])) + 2
    ids, chars, n_docs = split_stream(data, "en", max_tokens=first_two + 5)  # ends inside the third document
    assert n_docs == 2 and chars == len(docs[0]) + len(docs[1]) and len(ids) == first_two + 1
    train = TrainSpec(seq_len=16, val_tokens=first_two + 5, precision="fp32")
    val = validate(tiny_model, data, train, torch.device("cpu"))
    scorer = Scorer(tiny_model, tok, max_length=16, progress=False)
    assert val["val_bpc"]["en"] == pytest.approx(score_perplexity(scorer, docs[:2])["bits_per_char"], abs=1e-4)
    res = evaluate(tiny_model, tok, "ppl_en", ppl_data=small_data, limit=2, max_length=16, progress=False)
    assert res["results"]["ppl_en"]["bits_per_char"] == pytest.approx(val["val_bpc"]["en"], abs=1e-4)
    # a cap inside the first document keeps that many tokens and counts the characters they decode to
    ids, chars, n_docs = split_stream(data, "en", max_tokens=7)
    stream = np.asarray(data.tokens("en", "val")[:7])
    assert len(ids) == 8 and n_docs == 1 and chars == len(tok.decode(stream.tolist()))
