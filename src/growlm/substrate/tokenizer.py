"""The tokenizer: greedy longest match within pieces, with byte fallback, on HF ``tokenizers``.

How it maps onto ``tokenizers`` components, so that the saved ``tokenizer.json``
runs anywhere (``transformers.PreTrainedTokenizerFast`` gives the same ids):

* pre-tokenizer: split into pieces (``PIECE_PATTERN``), then the byte-level
  map (every UTF-8 byte becomes one printable character);
* model: WordPiece with an empty continuation prefix, which is exactly greedy
  longest-match. Every vocabulary token is keyed by its byte-level string; the
  128 byte tokens (0x80-0xFF) are single byte-level characters, so any piece
  can be matched and nothing ever becomes ``<unk>``: encoding is lossless;
* decoder: byte-level, which joins the bytes back into UTF-8 text.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from growlm.substrate.vocab import PIECE_PATTERN, Vocabulary


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


def build_hf_tokenizer(vocab: Vocabulary) -> HFTokenizer:
    """Express ``vocab`` as a ``tokenizers.Tokenizer`` (see the module docstring)."""
    # Specials are ASCII, so their byte-level key is their name; having them in
    # the model's vocabulary makes the added tokens below keep the layout's ids.
    keys = {_byte_level(tok.utf8): i for i, tok in enumerate(vocab.tokens)}
    model = models.WordPiece(keys, unk_token="<|unk|>", continuing_subword_prefix="",
                             max_input_chars_per_word=1 << 20)
    hf = HFTokenizer(model)
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PIECE_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    hf.decoder = decoders.ByteLevel()
    specials = [AddedToken(t.text, special=True, normalized=False) for t in vocab.tokens if t.kind == "special"]
    hf.add_special_tokens(specials)
    for t in specials:  # added tokens must keep the ids the layout gives them
        assert hf.token_to_id(t.content) == vocab.special_id(t.content), t.content
    return hf


class Tokenizer:
    """Lossless text <-> id mapping for a growlm vocabulary."""

    def __init__(self, vocab: Vocabulary):
        self.vocab = vocab
        self.hf = build_hf_tokenizer(vocab)
        self.pad_id = vocab.special_id("<|pad|>")
        self.bos_id = vocab.special_id("<|bos|>")
        self.eos_id = vocab.special_id("<|eos|>")
        self.unk_id = vocab.special_id("<|unk|>")

    @classmethod
    def load(cls, name_or_path: str | Path = "compact") -> Tokenizer:
        """Load the tokenizer of a shipped vocabulary (``bmp65k``, ``compact``) or a vocabulary file."""
        return _tokenizer_cached(str(name_or_path))

    @property
    def vocab_size(self) -> int:
        return self.vocab.size

    @property
    def name(self) -> str:
        return self.vocab.name

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens are added)."""
        check_text(text)
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of many texts, encoded in parallel."""
        for i, t in enumerate(texts):
            check_text(t, f"text #{i}")
        return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """Text of ``ids``; with the defaults, ``decode(encode(s)) == s`` for every valid string."""
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_text(self, i: int) -> str:
        """Readable text of a single token id."""
        return self.vocab.tokens[i].text

    def save(self, path: str | Path) -> Path:
        """Write ``tokenizer.json`` (loadable by ``tokenizers`` and ``transformers``) at ``path``."""
        path = Path(path)
        if path.is_dir() or not path.suffix:
            path.mkdir(parents=True, exist_ok=True)
            path = path / "tokenizer.json"
        self.hf.save(str(path))
        meta = {"growlm_vocab": self.vocab.name, "version": self.vocab.version, "sha256": self.vocab.sha256}
        path.with_name("growlm_vocab.json").write_text(json.dumps(meta, indent=1))
        return path


@lru_cache(maxsize=4)
def _tokenizer_cached(name_or_path: str) -> Tokenizer:
    return Tokenizer(Vocabulary.load(name_or_path))
