"""Vocabulary layout and the lossless tokenizer."""

from __future__ import annotations

import pytest

from growlm.substrate import Tokenizer, Vocabulary
from growlm.substrate.vocab import BMP_N_NGRAMS, is_own_id_char

SAMPLES = [
    "The quick brown fox jumps over the lazy dog.",
    "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "天地玄黄，宇宙洪荒。日月盈昃，辰宿列张。",
    "emoji 😀🚀👩‍👩‍👧 and CJK Extension B 𠀀𠀁",
    "combining: e\u0301 a\u0308 \u0915\u094d\u0937",
    "right-to-left: שלום עולם, مرحبا بالعالم",
    "tabs\tand\nnew\r\nlines   spaces  ",
    "",
    "<|eos|> looks like a special token",
]


@pytest.fixture(scope="module", params=["bmp65k", "compact"])
def tok(request) -> Tokenizer:
    return Tokenizer.load(request.param)


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_round_trip_one_megabyte_line(tok):
    line = ("abc Привет 世界 " * 70000)[:1_000_000]
    ids = tok.encode(line)
    assert tok.decode(ids) == line
    assert len(ids) < len(line)  # n-grams compress


def test_bmp_character_is_its_own_id():
    tok = Tokenizer.load("bmp65k")
    for ch in "aZ~Жж世界é\u0301\uff01\ufffd":
        assert is_own_id_char(ord(ch))
        assert tok.encode(ch) == [ord(ch)]


def test_astral_characters_fall_back_to_bytes(tok):
    ids = tok.encode("😀")
    assert len(ids) == 4  # four UTF-8 bytes, four byte tokens
    assert all(tok.vocab.tokens[i].kind == "byte" for i in ids)


def test_longest_match_wins(tok):
    ngrams = {t.text for t in tok.vocab.tokens if t.kind == "ngram"}
    tri = next(g for g in sorted(ngrams) if len(g) == 3 and g[:2] in ngrams and not g[0].isspace())
    ids = tok.encode(tri)
    assert len(ids) == 1 and tok.vocab.tokens[ids[0]].text == tri


def test_bmp_layout_counts():
    v = Vocabulary.load("bmp65k")
    assert len(v) == 65536
    kinds = [t.kind for t in v.tokens]
    assert kinds.count("ngram") == BMP_N_NGRAMS == 8304
    assert kinds.count("byte") == 128
    assert v.tokens[0xE000].text == "<|pad|>" and v.tokens[0xFFFF].kind == "special"
    assert all(v.tokens[i].kind == "ngram" for i in range(0xD800, 0xE000))


def test_compact_layout():
    v = Vocabulary.load("compact")
    assert len(v) == 16384
    assert [t.text for t in v.tokens[144:272]] == [chr(i) for i in range(128)]


def test_lone_surrogate_is_a_clear_error(tok):
    with pytest.raises(ValueError, match="U\\+D800 at character 3"):
        tok.encode("abc\ud800def")


def test_unknown_vocabulary_names_the_shipped_ones():
    with pytest.raises(FileNotFoundError, match="bmp65k"):
        Vocabulary.load("nope")


def test_saved_tokenizer_loads_in_transformers(tok, tmp_path):
    transformers = pytest.importorskip("transformers")
    path = tok.save(tmp_path)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path))
    for text in SAMPLES:
        assert fast.encode(text, add_special_tokens=False) == tok.encode(text)
