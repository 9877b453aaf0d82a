"""Held-out texts: shipped, documented, and in no training source."""

from __future__ import annotations

import math

import pytest

from growlm.experiments.heldout import LANGUAGES, TEXT_DIR, heldout_bpc, heldout_text


def test_texts_are_shipped_with_their_sources():
    sources = (TEXT_DIR / "SOURCES.md").read_text(encoding="utf-8")
    for lang in LANGUAGES:
        text = heldout_text(lang)
        assert len(text) > 2000 and f"{lang}.txt" in sources
    assert "public domain" in sources
    with pytest.raises(ValueError, match="no held-out text for language 'de'"):
        heldout_text("de")
    assert len(heldout_text("en", max_chars=300)) <= 300


def test_no_training_source_contains_them():
    from growlm.data.documents import default_corpus_dir, load_documents

    for lang in LANGUAGES:
        lines = [ln.strip() for ln in heldout_text(lang).splitlines() if len(ln.strip()) >= 40]
        probes = {ln[:30] for ln in lines}  # the opening of every paragraph
        corpus = "\n".join(text for _, text in load_documents(default_corpus_dir(), lang))
        assert not [p for p in probes if p in corpus], lang


def test_heldout_bpc_is_the_packages_bits_per_character():
    import torch

    from growlm.evaluate.bpc import score_texts
    from growlm.model import Config, GrowLM
    from growlm.substrate import Substrate, Tokenizer

    torch.manual_seed(0)
    sub = Substrate.build("glyph", "compact", 32)
    model = GrowLM(Config.from_preset("tiny", vocab_size=sub.vocab_size, d_model=32, n_layer=1, n_head=2), sub).eval()
    got = heldout_bpc(model, "compact", 16, langs=("ru",), max_chars=200)
    text = heldout_text("ru", 200)
    s = score_texts(model, Tokenizer.load("compact"), [text], 16)
    assert got["ru"] == pytest.approx(s.nats / math.log(2) / len(text), abs=1e-4)


def test_documents_are_split_and_the_earlier_passages_stay_readable():
    from growlm.experiments.heldout import SEPARATOR, heldout_documents

    for lang in ("en", "zh"):
        docs = heldout_documents(lang)
        assert len(docs) >= 10 and len(heldout_text(lang)) >= 50_000, lang
        assert not any(SEPARATOR.strip() == d.strip() or SEPARATOR in d for d in docs)
        assert sum(len(d) for d in docs) > 0.99 * len(heldout_text(lang)) - len(SEPARATOR) * len(docs)
    assert [len(heldout_text(k, version="v1")) for k in LANGUAGES] == [3888, 5193, 2394]
    assert len(heldout_documents("en", version="v1")) == 1
    with pytest.raises(ValueError, match="version 'v9'"):
        heldout_text("en", version="v9")


def test_documents_are_scored_one_by_one_and_bootstrapped_over_documents():
    import torch

    from growlm.evaluate.bpc import score_texts
    from growlm.experiments.heldout import HeldoutScore, document_halfwidth, heldout_documents, heldout_scores
    from growlm.model import Config, GrowLM
    from growlm.substrate import Substrate, Tokenizer

    torch.manual_seed(0)
    sub = Substrate.build("glyph", "compact", 32)
    model = GrowLM(Config.from_preset("tiny", vocab_size=sub.vocab_size, d_model=32, n_layer=1, n_head=2), sub).eval()
    cap = len(heldout_documents("zh")[0]) + 600  # the first document and the start of the second
    docs = heldout_documents("zh", max_chars=cap)
    assert len(docs) == 2
    got = heldout_scores(model, "compact", 16, langs=("zh",), max_chars=cap)["zh"]
    tok = Tokenizer.load("compact")
    each = [score_texts(model, tok, [d], 16) for d in docs]
    assert got.characters == tuple(len(d) for d in docs)
    assert got.nats == pytest.approx(tuple(s.nats for s in each))
    assert got.bpc == pytest.approx(sum(s.nats for s in each) / math.log(2) / sum(len(d) for d in docs))
    lo, hi = got.interval()
    assert lo <= got.bpc <= hi and lo < hi
    # documents of very different difficulty give a wide interval; identical documents none at all
    assert HeldoutScore((1.0, 1.0), (10, 10)).interval() == pytest.approx((1 / math.log(2) / 10,) * 2)
    spread = HeldoutScore((1.0, 9.0), (10, 10)).interval()
    assert spread[0] < 0.2 / math.log(2) < 0.8 / math.log(2) < spread[1] + 1e-9
    assert HeldoutScore((1.0,), (10,)).interval() is None
    assert document_halfwidth({"en": HeldoutScore((1.0, 1.0), (10, 10))}) == pytest.approx(0.0)
    assert document_halfwidth({"zh": got, "ru": HeldoutScore((1.0,), (3,))}) is None
