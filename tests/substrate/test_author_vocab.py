"""The author's vocabularies: growlm's bvv241-2-3 and bvv241-abs against the builder notebooks."""

from __future__ import annotations

import json
import random

import pytest
from author_reference import SPECIAL_TOKENS, author_tokenizer, bvv241_2_3, bvv241_abs

from growlm.substrate import Tokenizer
from growlm.substrate.tokenizer import bpe_merges
from growlm.substrate.vocab import BVV_BYTE_START

UNK = 0xE003
PROBES = [
    "hello the test",  # the notebook's own example: [104, 56035, 111, 32, 57811, 32, 116, 56117]
    "The quick brown fox jumps over the lazy dog. THE END; the-end, thethethe",
    "Съешь же ещё этих мягких французских булок, да выпей чаю. ПРИВЕТ привет",
    "天地玄黄，宇宙洪荒。日月盈昃，辰宿列张。中华人民共和国成立于1949年",
    "日本語のテキスト、ひらがなとカタカナ。한국어 문장입니다.",
    "Ελληνικά: η γρήγορη καφέ αλεπού. Ἀρχή",
    "العربية: مرحبا بالعالم، كيف حالك؟ فارسی: سلام دنیا",
    "עברית: שלום עולם. Հայերեն: Բարեւ. ქართული: გამარჯობა. हिन्दी: नमस्ते. বাংলা",
    "0123456789 3.14159 1,000,000 -42 +7 1e-9 2025-10-20",
    "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~ «»„“”‘’ — – … • ·",
    "   \t\t\n\n\r\n  \u3000\u00a0 x  ",
    "||基 |.| <개정 부칙< 다.<",  # n-grams that hold '|' and '<' (from the author's lists)
    "aaaaaaa ababab abcabc ththth ingingi tionation",
    "<s> </s> <unk> [INST] hi [/INST] <|eos|> <0x80> <special_token_57400>",  # special names as text
    "",
]


def expand_unk(ref, text: str) -> list[int]:
    """The author's ids with each <unk> replaced by growlm's byte tokens for that character."""
    enc = ref.encode(text)
    out = []
    for i, (a, b) in zip(enc.ids, enc.offsets):
        out += [BVV_BYTE_START - 0x80 + x for x in text[a:b].encode("utf-8")] if i == UNK else [i]
    return out


@pytest.fixture(scope="module")
def reference():
    vocab, merges = bvv241_2_3()
    tok = author_tokenizer(vocab, merges)
    tok.encode_special_tokens = True  # growlm reads special names in text as text; see the test below
    return vocab, merges, tok


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.load("bvv241-2-3")


def test_vocabulary_is_the_notebooks(reference, tok):
    vocab, merges, _ = reference
    assert len(tok.vocab) == len(vocab) == 65536
    by_id = {i: t for t, i in vocab.items()}
    for i, t in enumerate(tok.vocab.tokens):
        if BVV_BYTE_START <= i < 0xE100:  # growlm's byte fallback, in ids the author reserved
            assert by_id[i] == f"<special_token_{i}>" and t.kind == "byte" and t.byte == i - 0xE000
        else:
            assert t.text == by_id[i], hex(i)
    assert bpe_merges(tok.vocab) == merges and len(merges) == 12224  # the notebook prints 12224


def test_layout_facts(tok):
    v = tok.vocab
    kinds = [t.kind for t in v.tokens]
    assert kinds.count("ngram") == 8177 and kinds.count("byte") == 128
    assert all(v.tokens[c].text == chr(c) for c in [*range(0xD800), *range(0xF900, 0xFFFF)])
    assert [t.text for t in v.tokens[0xE000:0xE017]] == SPECIAL_TOKENS
    assert all(k == "ngram" for k in kinds[0xD800:0xE000] + kinds[0xE100:0xF8F1])
    assert [t.text for t in v.tokens[0xF8F1:0xF900]] == [f"<unused_{i}>" for i in range(0xF8F1, 0xF900)]
    assert v.tokens[0xFFFF].text == "<unused_65535>"
    lens = [len(t.text) for t in v.tokens if t.kind == "ngram"]
    assert lens == sorted(lens, reverse=True)  # longer first
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (0xE000, 0xE001, 0xE002, 0xE003)


@pytest.mark.parametrize("text", PROBES)
def test_ids_equal_the_authors(reference, tok, text):
    _, _, ref = reference
    assert tok.encode(text) == ref.encode(text).ids
    assert tok.decode(tok.encode(text)) == text


def test_ids_equal_the_authors_on_random_ngram_soup(reference, tok):
    """Texts glued from n-gram fragments hit the merge-order boundary cases BPE is sensitive to."""
    _, _, ref = reference
    grams = [t.text for t in tok.vocab.tokens if t.kind == "ngram"]
    rng = random.Random(0)
    texts = ["".join(rng.choice(grams)[rng.randrange(2):] + rng.choice(["", "", "", " ", "\n"])
                     for _ in range(rng.randrange(1, 40))) for _ in range(400)]
    assert tok.encode_batch(texts) == [e.ids for e in ref.encode_batch(texts)]


def test_ids_equal_the_authors_on_the_default_corpus(reference, tok):
    from growlm.data.documents import default_corpus_dir, load_documents

    _, _, ref = reference
    docs = [t[:4000] for _, t in load_documents(default_corpus_dir())][::6]
    assert tok.encode_batch(docs) == [expand_unk(ref, d) for d in docs]


def test_fallback_where_the_author_gives_unk(reference, tok):
    _, _, ref = reference
    text = "a😀b\ue000c\uf8ff\uffff 𠀀 the"
    ids = tok.encode(text)
    assert ids == expand_unk(ref, text)
    assert ref.encode(text).ids.count(UNK) == 5
    assert UNK not in ids and tok.decode(ids) == text
    assert all(tok.vocab.tokens[i].kind == "byte" for i in ids if BVV_BYTE_START <= i < 0xE100)


def test_special_names_in_text_stay_text(reference, tok):
    """The author's tokenizer (as saved) reads "</s>" in text as the special; growlm does not."""
    vocab, merges, as_text = reference
    as_saved = author_tokenizer(vocab, merges)
    assert as_saved.encode("a</s>b").ids == [97, 0xE002, 98]
    assert tok.encode("a</s>b") == as_text.encode("a</s>b").ids
    assert all(t.kind != "special" for t in map(tok.vocab.tokens.__getitem__, tok.encode("a</s>b")))
    assert tok.encode("a</s>b", allowed_special={"</s>"}) == [97, 0xE002, 98]
    assert tok.decode([97, 0xE002, 98]) == "a</s>b"
    assert tok.decode([97, 0xE002, 98], skip_special_tokens=True) == "ab"


def test_saved_tokenizer_gives_the_same_ids_in_transformers(tok, tmp_path):
    transformers = pytest.importorskip("transformers")
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tok.save(tmp_path)), **tok.transformers_config())
    for text in PROBES + ["emoji 😀\ue000"]:
        assert fast.encode(text, add_special_tokens=False) == tok.encode(text)
        assert fast.decode(tok.encode(text)) == text
    assert (fast.eos_token_id, fast.pad_token_id) == (tok.eos_id, tok.pad_id)


def test_substrates_build_on_it():
    from growlm.substrate import Substrate

    sub = Substrate.build("binary", vocab="bvv241-2-3", d_model=32, cache=False)
    assert tuple(sub.matrix.shape) == (65536, 32) and sub.spec.vocab == "bvv241-2-3"


def test_cli_tokenize(capsys):
    from growlm.cli import main

    assert main(["tokenize", "--vocab", "bvv241-2-3", "hello the test"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ids"] == [104, 56035, 111, 32, 57811, 32, 116, 56117]


def test_abs_is_the_notebooks():
    vocab, merges = bvv241_abs()
    tok = Tokenizer.load("bvv241-abs")
    v = tok.vocab
    assert len(v) == len(vocab) == 131072 and len(merges) == 182678  # the notebook prints both
    by_id = {i: t for t, i in vocab.items()}
    assert all(t.text == by_id[i] for i, t in enumerate(v.tokens) if not BVV_BYTE_START <= i < 0xE100)
    assert bpe_merges(v) == merges
    assert [t.kind for t in v.tokens[0x10000:0x1FFFF]] == ["ngram"] * 0xFFFF
    assert v.tokens[0x1FFFF].text == "<unused_131071>"
    ref = author_tokenizer(vocab, merges)
    ref.encode_special_tokens = True
    texts = PROBES + [t.text[1:] + t.text + " " + t.text[:-1] for t in v.tokens[0xD800:0x20000:97] if t.kind == "ngram"]
    assert tok.encode_batch(texts) == [expand_unk(ref, t) for t in texts]


def test_export_writes_the_authors_special_names(tok, tmp_path):
    transformers = pytest.importorskip("transformers")
    from growlm.export.hf import write_tokenizer

    ids = write_tokenizer("bvv241-2-3", tmp_path, 1024)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert (hf.bos_token, hf.eos_token, hf.pad_token, hf.unk_token) == ("<s>", "</s>", "<pad>", "<unk>")
    assert ids == {"bos_token_id": 0xE001, "eos_token_id": 0xE002, "pad_token_id": 0xE000}
    assert len(hf) == 65536  # no special was appended as a new token
    for text in PROBES[:4] + ["a</s>b [INST] 😀"]:
        assert hf(text)["input_ids"] == tok.encode(text)
