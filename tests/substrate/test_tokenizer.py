"""Vocabulary layout and the lossless tokenizer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

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


@pytest.fixture(scope="module", params=["bmp65k", "compact", "bvv241-2-3"])
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
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path), **tok.transformers_config())
    for text in SAMPLES + [f"a{n}b" for n in tok.vocab.roles.values()]:
        assert fast.encode(text, add_special_tokens=False) == tok.encode(text)
    assert (fast.bos_token_id, fast.eos_token_id, fast.pad_token_id, fast.unk_token_id) == (
        tok.bos_id, tok.eos_id, tok.pad_id, tok.unk_id)


def test_special_names_in_text_are_text(tok):
    """Issue 12 §5.11: a special's name in user text is its characters, never the special token."""
    for name in tok.vocab.specials[:16]:
        text = f"x {name}y{name}"
        ids = tok.encode(text)
        assert all(tok.vocab.tokens[i].kind != "special" for i in ids), (name, ids)
        assert tok.decode(ids) == text
        assert all(tok.vocab.tokens[i].kind != "special" for b in tok.encode_batch([text, name]) for i in b)


def test_specials_only_when_asked(tok):
    eos = tok.vocab.roles["eos"]
    bos = tok.vocab.roles["bos"]
    text = f"{bos}ab{eos}cd{eos}{bos}"
    assert tok.encode(text, allowed_special={eos}) == tok.encode(bos + "ab") + [tok.eos_id] + tok.encode("cd") + [
        tok.eos_id] + tok.encode(bos)
    assert tok.encode(text, allowed_special="all") == [tok.bos_id, *tok.encode("ab"), tok.eos_id, *tok.encode("cd"),
                                                       tok.eos_id, tok.bos_id]
    with pytest.raises(KeyError, match="no special token 'nope'"):
        tok.encode("a", allowed_special={"nope"})


def test_prepare_keeps_special_names_in_documents_as_text(tmp_path):
    from growlm.data.prepare import prepare
    from growlm.data.tokens import TokenData

    docs = ["first <|eos|> still the first document", "second <|bos|><|pad|> one"]
    (tmp_path / "c" / "en").mkdir(parents=True)
    (tmp_path / "c" / "en" / "d.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    with pytest.warns(UserWarning, match="no validation document"):  # two documents, all for training
        prepare(tmp_path / "c", tmp_path / "out", vocab="compact", val_fraction=0.0)
    tok = Tokenizer.load("compact")
    ids = TokenData.open(tmp_path / "out").tokens("en", "train")[:].tolist()
    assert ids.count(tok.eos_id) == 2 and ids[-1] == tok.eos_id  # one per document, none from the text
    cut = ids.index(tok.eos_id)
    assert sorted([tok.decode(ids[:cut]), tok.decode(ids[cut + 1:-1])]) == sorted(docs)
    assert sum(tok.vocab.tokens[i].kind == "special" for i in ids) == 2


@pytest.mark.parametrize("bad", [[65536], [-1], [1.5], ["3"], [None], [True]])
def test_decode_refuses_bad_ids(bad):
    """Issue 12 §5.12: out-of-range and non-integer ids are a clear error, not '' or a silent cast."""
    tok = Tokenizer.load("bmp65k")
    with pytest.raises((ValueError, TypeError), match=r"token id #1 .*0\.\.65535"):
        tok.decode([104] + bad)


def test_decode_accepts_integer_types():
    tok = Tokenizer.load("compact")
    ids = tok.encode("abc")
    assert tok.decode(np.array(ids, dtype=np.int64)) == "abc"
    assert tok.decode(torch.tensor(ids)) == "abc"
    assert tok.decode([np.uint16(i) for i in ids]) == "abc"
    with pytest.raises(ValueError, match="16384, outside vocabulary 'compact'"):
        tok.decode([16384])
    with pytest.raises(TypeError, match="must be integers"):
        tok.decode(torch.tensor([1.0]))
