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

from growlm.cli import main
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


# --------------------------------------------------------------------------- pinned to an independent computation

WINDOW = 12  # predicted tokens per window: short, so that documents cross window boundaries
TEXTS = {  # multi-character tokens, three scripts, and one document shorter than a window ("Hi.")
    "en": ["The quick brown fox jumps over the lazy dog, and then the dog sleeps again in the warm afternoon sun.",
           "Hi.", "Another sentence: there is nothing unusual about these words, which is the whole point."],
    "ru": ["Съешь же ещё этих мягких французских булок, да выпей чаю.", "Да.",
           "Москва — столица России, и в ней живёт очень много людей."],
    "zh": ["天地玄黄，宇宙洪荒。日月盈昃，辰宿列张。", "好。", "我们今天在学校学习中文，老师说我们的进步很大。"],
}


def pinned(text: str, val: bool) -> str:
    """``text`` with a numbered suffix, the first that ``prepare``'s hash split puts in validation (``val``) or not."""
    from growlm.data.prepare import is_validation

    for k in range(1000):
        t = f"{text} {k}" if k else text
        if is_validation(t, 0.5) == val:
            return t
    raise AssertionError("no suffix puts the document on the wanted side")


@pytest.fixture(scope="module")
def pinned_docs(tmp_path_factory) -> tuple[Path, dict[str, list[str]]]:
    """A corpus whose validation split is exactly ``TEXTS`` (suffixed where the split needs it), plus training
    documents; returns (corpus dir, validation documents per language)."""
    root = tmp_path_factory.mktemp("pinned-corpus")
    val = {lang: [pinned(t, True) for t in texts] for lang, texts in TEXTS.items()}
    for lang, docs in val.items():
        train = [pinned(f"Training text {i} of {lang}.", False) for i in range(3)]
        (root / f"{lang}.jsonl").write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n"
                                                    for d in train[:1] + docs[:2] + train[1:] + docs[2:]),
                                            encoding="utf-8")
    return root, val


def test_bits_per_char_matches_a_hand_computation_on_every_path(tiny_model, tok, pinned_docs, tmp_path,
                                                                 reference_bpc):
    """Training validation, ``growlm eval --tasks ppl`` (text and token directory) and held-out scoring all give
    summed nats / ln 2 / characters, on text where tokens != characters: dividing by tokens (or by bytes, or
    leaving out the <|eos|> losses) fails here."""
    from growlm.experiments.heldout import heldout_bpc, heldout_documents
    from growlm.model.saved import save_model

    corpus, val = pinned_docs
    ref = {}
    for lang, docs in val.items():
        ref[lang], n_tokens, chars = reference_bpc(tiny_model, tok, docs, WINDOW)
        assert n_tokens < 0.8 * chars or lang == "zh"  # multi-character tokens (Chinese: about one per character)
        assert n_tokens != chars and n_tokens > 2 * WINDOW  # several windows; documents cross their boundaries
        assert len(tok.encode(docs[1])) + 1 < WINDOW  # and one document shorter than a window
    assert len({round(v, 3) for v in ref.values()}) == 3
    data_dir = tmp_path / "data"
    prepare(corpus, data_dir, vocab="compact", val_fraction=0.5)
    data = TokenData.open(data_dir)
    for lang, docs in val.items():
        assert data.characters(lang) == sum(len(d) for d in docs)  # the split is exactly these documents
    # training validation (what a run logs as val_bpc)
    got = validate(tiny_model, data, TrainSpec(seq_len=WINDOW, val_tokens=10**9, precision="fp32"),
                   torch.device("cpu"))
    assert got["val_bpc"] == pytest.approx(ref, abs=1e-4)
    assert got["val_bpc_mean"] == pytest.approx(sum(ref.values()) / 3, abs=2e-4)
    # growlm eval --tasks ppl on a text file (one language at a time) and on the token directory
    model_dir = save_model(tiny_model, tmp_path / "model")
    for lang, docs in val.items():
        text = tmp_path / f"{lang}.jsonl"
        text.write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
        out = tmp_path / f"eval-{lang}.json"
        assert main(["eval", str(model_dir), "--tasks", "ppl", "--ppl-data", str(text), "--max-length", str(WINDOW),
                     "--out", str(out), "--quiet"]) == 0
        res = json.loads(out.read_text())["results"]["ppl"]
        assert res["bits_per_char"] == pytest.approx(ref[lang], rel=1e-5)
        assert res["characters"] == sum(len(d) for d in docs) and res["documents"] == len(docs)
    out = tmp_path / "eval-tokens.json"
    assert main(["eval", str(model_dir), "--tasks", "ppl", "--ppl-data", str(data_dir), "--max-length", str(WINDOW),
                 "--out", str(out), "--quiet"]) == 0
    res = json.loads(out.read_text())["results"]
    assert {lang: res[f"ppl_{lang}"]["bits_per_char"] for lang in val} == pytest.approx(ref, rel=1e-5)
    # held-out scoring (the studies' forgetting measure) on the shipped texts, cut short: each document its own
    # stream, the language's bpc their summed bits over their summed characters
    held = heldout_bpc(tiny_model, "compact", WINDOW, max_chars=300)
    for lang, v in held.items():
        per_doc = [reference_bpc(tiny_model, tok, [doc], WINDOW) for doc in heldout_documents(lang, 300)]
        assert all(n_tokens != chars for _, n_tokens, chars in per_doc)
        expected = sum(b * chars for b, _, chars in per_doc) / sum(chars for _, _, chars in per_doc)
        assert v == pytest.approx(expected, abs=1e-4)
