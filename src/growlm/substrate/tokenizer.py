"""The tokenizer, expressed in HF ``tokenizers`` so the saved ``tokenizer.json`` runs anywhere.

``transformers.PreTrainedTokenizerFast`` on that file gives the same ids (with
``split_special_tokens=True``, see below). Two algorithms, chosen by the layout:

``bvv`` (the author's vocabularies): BPE, as the author's builder notebooks make it.
The merges are every (left, right) split of every n-gram, n-grams in id order
(longer first, then by string), splits left to right, kept when both halves are
tokens; no pre-tokenizer, so the whole text is one word. Where the author's
tokenizer gives ``<unk>`` (characters without an id: astral, private use, U+FFFF),
growlm gives the character's UTF-8 bytes as byte tokens (``byte_fallback``), so
encoding is lossless; every other id is the author's.

``bmp`` and ``compact`` (growlm's own): greedy longest match within pieces.

* pre-tokenizer: split into pieces (``PIECE_PATTERN``), isolate ``|`` (no n-gram
  holds one, so ids do not change, but a special's name ``<|eos|>`` can then never
  be matched in text), then the byte-level map (every UTF-8 byte becomes one
  printable character);
* model: WordPiece with an empty continuation prefix, which is exactly greedy
  longest-match. Every vocabulary token is keyed by its byte-level string; the
  128 byte tokens (0x80-0xFF) are single byte-level characters, so any piece
  can be matched and nothing ever becomes ``<unk>``: encoding is lossless;
* decoder: byte-level, which joins the bytes back into UTF-8 text.

Special tokens never come from text: ``encode("<|eos|>")`` or ``encode("</s>")`` gives
the characters. They come from the ids (``tok.eos_id``), document boundaries (``growlm
prepare``) or ``encode(text, allowed_special=...)``, which matches the named ones.
"""

from __future__ import annotations

import json
import operator
import re
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Literal

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from growlm.substrate.vocab import PIECE_PATTERN, Vocabulary
from growlm.util.fileio import atomic_write_text


@lru_cache(maxsize=1)
def byte_to_char() -> dict[int, str]:
    """The reversible byte -> printable character map used by byte-level tokenizers."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _byte_level(data: bytes) -> str:
    table = byte_to_char()
    return "".join(table[b] for b in data)


def check_text(text: str, where: str = "text") -> None:
    """Raise a clear error if ``text`` cannot be encoded as UTF-8 (e.g. a lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{where} is not valid Unicode: {e.reason} "
                         f"(U+{ord(text[e.start]):04X} at character {e.start})") from None


def bpe_merges(vocab: Vocabulary) -> list[tuple[str, str]]:
    """The bvv merges: each n-gram's (left, right) splits whose halves are both tokens, n-grams in id order."""
    keys = {t.text for t in vocab.tokens}
    return [(g[:i], g[i:]) for g in (t.text for t in vocab.tokens if t.kind == "ngram")
            for i in range(1, len(g)) if g[:i] in keys and g[i:] in keys]


def _bpe_model(vocab: Vocabulary) -> models.BPE:
    keys = {t.text: i for i, t in enumerate(vocab.tokens)}  # byte tokens are "<0x80>".."<0xFF>", as BPE wants
    if len(keys) != len(vocab):
        raise ValueError(f"vocabulary {vocab.name!r}: token texts are not unique")
    return models.BPE(vocab=keys, merges=bpe_merges(vocab), unk_token=vocab.roles["unk"], byte_fallback=True)


def _wordpiece_model(vocab: Vocabulary) -> models.WordPiece:
    keys = {_byte_level(tok.utf8): i for i, tok in enumerate(vocab.tokens)}
    return models.WordPiece(keys, unk_token=vocab.roles["unk"], continuing_subword_prefix="",
                            max_input_chars_per_word=1 << 20)


def build_hf_tokenizer(vocab: Vocabulary) -> HFTokenizer:
    """Express ``vocab`` as a ``tokenizers.Tokenizer`` (see the module docstring)."""
    if vocab.layout == "bvv":
        hf = HFTokenizer(_bpe_model(vocab))
        hf.decoder = decoders.ByteFallback()
    else:
        hf = HFTokenizer(_wordpiece_model(vocab))
        hf.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(PIECE_PATTERN), behavior="isolated"),
            pre_tokenizers.Split("|", behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        hf.decoder = decoders.ByteLevel()
    # Specials are in the model's vocabulary under their names, so the added tokens keep
    # the layout's ids; registering them lets decode skip them and transformers know them.
    specials = [AddedToken(t.text, special=True, normalized=False) for t in vocab.tokens if t.kind == "special"]
    hf.add_special_tokens(specials)
    hf.encode_special_tokens = True  # never split a special's name out of text (not saved in tokenizer.json)
    for t in specials:  # added tokens must keep the ids the layout gives them
        assert hf.token_to_id(t.content) == vocab.special_id(t.content), t.content
    return hf


class Tokenizer:
    """Lossless text <-> id mapping for a growlm vocabulary."""

    def __init__(self, vocab: Vocabulary):
        self.vocab = vocab
        self.hf = build_hf_tokenizer(vocab)
        roles = {r: vocab.special_id(name) for r, name in vocab.roles.items()}
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = roles["pad"], roles["bos"], roles["eos"], roles["unk"]

    @classmethod
    def load(cls, name_or_path: str | Path = "compact") -> Tokenizer:
        """Load the tokenizer of a shipped vocabulary (``bvv241-2-3``, ``bmp65k``, ...) or a vocabulary file."""
        return _tokenizer_cached(str(name_or_path))

    @property
    def vocab_size(self) -> int:
        return self.vocab.size

    @property
    def name(self) -> str:
        return self.vocab.name

    def encode(self, text: str, allowed_special: Iterable[str] | Literal["all"] = ()) -> list[int]:
        """Token ids of ``text``. No special token is added, and none is read from the text unless
        its name is in ``allowed_special`` (``"all"``: every special), e.g. ``allowed_special={"</s>"}``."""
        check_text(text)
        if not allowed_special:
            return self.hf.encode(text, add_special_tokens=False).ids
        names = set(self.vocab.specials) if allowed_special == "all" else set(allowed_special)
        for n in names:
            self.vocab.special_id(n)  # a clear KeyError for a name that is not a special
        pattern = "(" + "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True)) + ")"
        parts = re.split(pattern, text)  # odd positions are the specials
        ids: list[int] = []
        for i, part in enumerate(parts):
            if i % 2:
                ids.append(self.vocab.special_id(part))
            elif part:
                ids += self.hf.encode(part, add_special_tokens=False).ids
        return ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of many texts, encoded in parallel (special names in the texts stay text)."""
        for i, t in enumerate(texts):
            check_text(t, f"text #{i}")
        return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def check_ids(self, ids: Iterable) -> list[int]:
        """``ids`` as a list of ints; a clear error for a non-integer or an id outside 0..V-1."""
        out = []
        for k, i in enumerate(ids):
            try:
                if isinstance(i, bool):
                    raise TypeError
                v = operator.index(i)  # ints, numpy and 0-d torch integers; refuses 1.5 and "3"
            except TypeError:
                raise TypeError(f"token id #{k} is {i!r} ({type(i).__name__}); token ids must be "
                                f"integers in 0..{self.vocab_size - 1}") from None
            if not 0 <= v < self.vocab_size:
                raise ValueError(f"token id #{k} is {v}, outside vocabulary {self.name!r} "
                                 f"(valid ids are 0..{self.vocab_size - 1})")
            out.append(v)
        return out

    def decode(self, ids: Iterable, skip_special_tokens: bool = False) -> str:
        """Text of ``ids``; with the defaults, ``decode(encode(s)) == s`` for every valid string.

        Raises ``TypeError`` for a non-integer id and ``ValueError`` for an id outside 0..V-1."""
        return self.hf.decode(self.check_ids(ids), skip_special_tokens=skip_special_tokens)

    def token_text(self, i: int) -> str:
        """Readable text of a single token id."""
        return self.vocab.tokens[self.check_ids([i])[0]].text

    def transformers_config(self) -> dict:
        """Settings for ``tokenizer_config.json`` so that transformers encodes as growlm does."""
        names = self.vocab.roles
        return {"bos_token": names["bos"], "eos_token": names["eos"], "pad_token": names["pad"],
                "unk_token": names["unk"], "split_special_tokens": True}

    def save(self, path: str | Path) -> Path:
        """Write ``tokenizer.json`` (loadable by ``tokenizers`` and ``transformers``) at ``path``.

        ``tokenizers`` does not save that special names in text stay text: load it with
        ``PreTrainedTokenizerFast(tokenizer_file=..., split_special_tokens=True)`` (``growlm export``
        writes that into ``tokenizer_config.json``) or set ``encode_special_tokens = True``."""
        path = Path(path)
        if path.is_dir() or not path.suffix:
            path.mkdir(parents=True, exist_ok=True)
            path = path / "tokenizer.json"
        atomic_write_text(path, self.hf.to_str(pretty=True))
        meta = {"growlm_vocab": self.vocab.name, "version": self.vocab.version, "sha256": self.vocab.sha256}
        atomic_write_text(path.with_name("growlm_vocab.json"), json.dumps(meta, indent=1))
        return path


@lru_cache(maxsize=4)
def _tokenizer_cached(name_or_path: str) -> Tokenizer:
    return Tokenizer(Vocabulary.load(name_or_path))
