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
