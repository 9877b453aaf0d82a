"""Vocabularies: ordered token lists read from the shipped JSON files.

Two layouts exist. ``bmp`` (V = 65536, the paper's layout): a BMP character is
its own id; specials, byte-fallback tokens and n-grams live in the surrogate
and private-use ranges. ``compact`` (V = 16384, for CPU-scale work): specials,
bytes, a list of characters, then n-grams. Both are pure data: the JSON file
fixes every id, nothing is re-derived at run time.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

VOCAB_DIR = Path(__file__).parent / "vocabs"

# Text is split into pieces before greedy longest-match; n-grams never cross a
# piece boundary. Pieces keep a leading space, cap their length so that the
# longest-match search stays linear on pathological inputs, and concatenate
# back to the original text.
PIECE_PATTERN = r" ?[^\s]{1,23}|\s{1,24}"

SPECIAL_NAMES = (
    "<|pad|>", "<|bos|>", "<|eos|>", "<|unk|>", "<|sep|>", "<|mask|>",
    *(f"<|reserved_{i}|>" for i in range(6, 16)),
)
N_BYTE_TOKENS = 128  # bytes 0x80-0xFF; ASCII bytes are always whole characters

# bmp layout
BMP_SIZE = 65536
BMP_SPECIAL_START = 0xE000
BMP_BYTE_START = BMP_SPECIAL_START + len(SPECIAL_NAMES)  # 0xE010
BMP_NGRAM_RANGES = ((0xD800, 0xE000), (BMP_BYTE_START + N_BYTE_TOKENS, 0xF900))
BMP_N_NGRAMS = sum(b - a for a, b in BMP_NGRAM_RANGES)  # 8304
BMP_LAST_SPECIAL = "<|reserved_ffff|>"  # id 0xFFFF, a noncharacter

TokenKind = Literal["char", "ngram", "special", "byte"]


def is_own_id_char(cp: int) -> bool:
    """True when code point ``cp`` is its own id in the bmp layout."""
    return 0 <= cp < 0xD800 or 0xF900 <= cp <= 0xFFFE


@dataclass(frozen=True)
class Token:
    """One vocabulary entry: its kind and its text (a byte token's text is one byte)."""

    kind: TokenKind
    text: str  # char/ngram: the text; special: its name; byte: "<0xAB>"
    byte: int | None = None

    @property
    def utf8(self) -> bytes:
        """The bytes this token decodes to."""
        return bytes([self.byte]) if self.kind == "byte" else self.text.encode("utf-8")


@dataclass(frozen=True)
class Vocabulary:
    """An ordered token list with a name, a version and a content hash."""

    name: str
    version: str
    layout: str
    tokens: tuple[Token, ...]
    sha256: str  # hash of the canonical JSON the vocabulary was read from

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def size(self) -> int:
        return len(self.tokens)

    def special_id(self, name: str) -> int:
        """Id of special token ``name`` (e.g. ``"<|eos|>"``)."""
        for i, t in enumerate(self.tokens):
            if t.kind == "special" and t.text == name:
                return i
        raise KeyError(f"no special token {name!r} in vocabulary {self.name!r}; "
                       f"specials are {[t.text for t in self.tokens if t.kind == 'special']}")

    @classmethod
    def from_dict(cls, data: dict) -> Vocabulary:
        """Build the token list from a vocabulary JSON object."""
        layout = data.get("layout")
        if layout == "bmp":
            tokens = _bmp_tokens(list(data["ngrams"]))
        elif layout == "compact":
            tokens = _compact_tokens(list(data["chars"]), list(data["ngrams"]), int(data.get("size", 16384)))
        else:
            raise ValueError(f"unknown vocabulary layout {layout!r}; expected 'bmp' or 'compact'")
        canon = json.dumps({k: data[k] for k in ("name", "version", "layout", "chars", "ngrams", "size")
                            if k in data}, ensure_ascii=False, sort_keys=True).encode("utf-8")
        return cls(name=str(data["name"]), version=str(data["version"]), layout=layout,
                   tokens=tuple(tokens), sha256=hashlib.sha256(canon).hexdigest())

    @classmethod
    def load(cls, name_or_path: str | Path) -> Vocabulary:
        """Load a shipped vocabulary by name (``bmp65k``, ``compact``) or a JSON file by path."""
        return _load_cached(str(name_or_path))


def available_vocabularies() -> list[str]:
    """Names of the vocabularies shipped with the package."""
    return sorted(p.stem for p in VOCAB_DIR.glob("*.json"))


@lru_cache(maxsize=8)
def _load_cached(name_or_path: str) -> Vocabulary:
    path = Path(name_or_path)
    if not path.suffix:
        path = VOCAB_DIR / f"{name_or_path}.json"
        if not path.exists():
            raise FileNotFoundError(f"unknown vocabulary {name_or_path!r}; shipped vocabularies: "
                                    f"{available_vocabularies()} (or pass a path to a vocabulary JSON file)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read vocabulary file {path}: {e}") from e
    return Vocabulary.from_dict(data)


def _check_ngrams(ngrams: list[str], allowed) -> None:
    piece = re.compile(PIECE_PATTERN)
    seen = set()
    for g in ngrams:
        if not 2 <= len(g) <= 3:
            raise ValueError(f"n-gram {g!r} must have 2 or 3 characters")
        if g in seen:
            raise ValueError(f"duplicate n-gram {g!r}")
        seen.add(g)
        bad = [c for c in g if not allowed(c)]
        if bad:
            raise ValueError(f"n-gram {g!r} contains characters outside the vocabulary: {bad!r}")
        m = piece.match(g)
        if m is None or m.end() != len(g):
            raise ValueError(f"n-gram {g!r} crosses a piece boundary and could never match")


def _bmp_tokens(ngrams: list[str]) -> list[Token]:
    if len(ngrams) != BMP_N_NGRAMS:
        raise ValueError(f"bmp layout needs exactly {BMP_N_NGRAMS} n-grams, got {len(ngrams)}")
    _check_ngrams(ngrams, lambda c: is_own_id_char(ord(c)))
    tokens: list[Token | None] = [None] * BMP_SIZE
    for cp in range(BMP_SIZE):
        if is_own_id_char(cp):
            tokens[cp] = Token("char", chr(cp))
    for i, name in enumerate(SPECIAL_NAMES):
        tokens[BMP_SPECIAL_START + i] = Token("special", name)
    tokens[0xFFFF] = Token("special", BMP_LAST_SPECIAL)
    for b in range(N_BYTE_TOKENS):
        tokens[BMP_BYTE_START + b] = Token("byte", f"<0x{0x80 + b:02X}>", 0x80 + b)
    it = iter(ngrams)
    for lo, hi in BMP_NGRAM_RANGES:
        for i in range(lo, hi):
            tokens[i] = Token("ngram", next(it))
    assert all(t is not None for t in tokens)
    return tokens  # type: ignore[return-value]


def _compact_tokens(chars: list[str], ngrams: list[str], size: int) -> list[Token]:
    if chars[:128] != [chr(i) for i in range(128)]:
        raise ValueError("compact layout: 'chars' must start with all 128 ASCII characters in order")
    if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
        raise ValueError("compact layout: 'chars' must be distinct single characters")
    n = len(SPECIAL_NAMES) + N_BYTE_TOKENS + len(chars) + len(ngrams)
    if n != size:
        raise ValueError(f"compact layout: {len(SPECIAL_NAMES)} specials + {N_BYTE_TOKENS} bytes + "
                         f"{len(chars)} chars + {len(ngrams)} n-grams = {n}, expected {size}")
    charset = set(chars)
    _check_ngrams(ngrams, lambda c: c in charset)
    tokens = [Token("special", s) for s in SPECIAL_NAMES]
    tokens += [Token("byte", f"<0x{0x80 + b:02X}>", 0x80 + b) for b in range(N_BYTE_TOKENS)]
    tokens += [Token("char", c) for c in chars]
    tokens += [Token("ngram", g) for g in ngrams]
    return tokens
