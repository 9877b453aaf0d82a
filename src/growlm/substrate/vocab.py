"""Vocabularies: ordered token lists read from the shipped JSON files.

Three layouts exist. ``bvv`` is the paper author's (``bvv241-2-3``, V = 65536, and
``bvv241-abs``, V = 131072): a BMP character is its own id, the author's 23 specials
start at 0xE000, n-grams fill 0xD800-0xDFFF, 0xE100-0xF8FF and, above 65536, the
ids up to 0x1FFFE; growlm adds byte-fallback tokens in the author's reserved range
(see ``bvv_layout``). ``bmp`` (growlm's own V = 65536 layout): a BMP character is
its own id; specials, byte-fallback tokens and n-grams live in the surrogate and
private-use ranges. ``compact`` (V = 16384, for CPU-scale work): specials, bytes,
a list of characters, then n-grams. All are pure data: the JSON file fixes every
id, nothing is re-derived at run time.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from dataclasses import dataclass
from functools import cached_property, lru_cache
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

# bvv layout (the author's; see scripts/build_author_vocab.py for where the lists come from)
BVV_SPECIAL_START = 0xE000
BVV_RESERVED_END = 0xE100  # 0xE000 + 256: the author's specials, then reserved ids
# Byte b (0x80-0xFF) is id 0xE000 + b, inside the author's reserved ids 0xE017-0xE0FF that no
# author tokenizer ever emits: the author's tokenizer gives <unk> where growlm gives these bytes.
BVV_BYTE_START = BVV_SPECIAL_START + 0x80


def bvv_ngram_ranges(size: int) -> tuple[tuple[int, int], ...]:
    """Id ranges the bvv layout fills with n-grams, in order (the last id of a range stays unused)."""
    ranges = ((0xD800, 0xE000), (BVV_RESERVED_END, 0xF900))
    return ranges + ((0x10000, size - 1),) if size > BMP_SIZE else ranges


ROLES = ("pad", "bos", "eos", "unk")

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

    @property
    def roles(self) -> dict[str, str]:
        """Names of the pad, bos, eos and unk specials (the layout's own spelling)."""
        if self.layout == "bvv":  # <pad>, <s>, </s>, <unk>
            return {r: self.tokens[BVV_SPECIAL_START + i].text for i, r in enumerate(ROLES)}
        return dict(zip(ROLES, SPECIAL_NAMES[:4]))

    @property
    def specials(self) -> tuple[str, ...]:
        """Names of every special token, reserved ones included, in id order."""
        return tuple(self._special_ids)

    @cached_property
    def _special_ids(self) -> dict[str, int]:
        return {t.text: i for i, t in enumerate(self.tokens) if t.kind == "special"}

    def special_id(self, name: str) -> int:
        """Id of special token ``name`` (e.g. ``"<|eos|>"``)."""
        i = self._special_ids.get(name)
        if i is None:
            names = list(self._special_ids)
            raise KeyError(f"no special token {name!r} in vocabulary {self.name!r}; specials are "
                           f"{names[:24]}{f' and {len(names) - 24} reserved' if len(names) > 24 else ''}")
        return i

    @classmethod
    def from_dict(cls, data: dict) -> Vocabulary:
        """Build the token list from a vocabulary JSON object."""
        layout = data.get("layout")
        if layout == "bvv":
            tokens = _bvv_tokens(list(data["specials"]), list(data["ngrams"]), int(data["size"]))
        elif layout == "bmp":
            tokens = _bmp_tokens(list(data["ngrams"]))
        elif layout == "compact":
            tokens = _compact_tokens(list(data["chars"]), list(data["ngrams"]), int(data.get("size", 16384)))
        else:
            raise ValueError(f"unknown vocabulary layout {layout!r}; expected 'bvv', 'bmp' or 'compact'")
        canon = json.dumps({k: data[k] for k in ("name", "version", "layout", "chars", "specials", "ngrams", "size")
                            if k in data}, ensure_ascii=False, sort_keys=True).encode("utf-8")
        return cls(name=str(data["name"]), version=str(data["version"]), layout=layout,
                   tokens=tuple(tokens), sha256=hashlib.sha256(canon).hexdigest())

    @classmethod
    def load(cls, name_or_path: str | Path) -> Vocabulary:
        """Load a shipped vocabulary by name (``bvv241-2-3``, ``bmp65k``, ...) or a JSON(.gz) file by path."""
        return _load_cached(str(name_or_path))


def available_vocabularies() -> list[str]:
    """Names of the vocabularies shipped with the package."""
    return sorted(p.name.split(".json")[0] for p in VOCAB_DIR.glob("*.json*"))


def _shipped_path(name: str) -> Path | None:
    for suffix in (".json", ".json.gz"):
        if (VOCAB_DIR / f"{name}{suffix}").is_file():
            return VOCAB_DIR / f"{name}{suffix}"
    return None


@lru_cache(maxsize=8)
def _load_cached(name_or_path: str) -> Vocabulary:
    path = _shipped_path(name_or_path) if "/" not in name_or_path else None
    if path is None:
        path = Path(name_or_path)
        if not path.name.endswith((".json", ".json.gz")):
            raise FileNotFoundError(f"unknown vocabulary {name_or_path!r}; shipped vocabularies: "
                                    f"{available_vocabularies()} (or pass a path to a vocabulary .json file)")
    try:
        raw = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
        data = json.loads(raw.decode("utf-8"))
    except (OSError, EOFError, gzip.BadGzipFile, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read vocabulary file {path}: {e}") from e
    return Vocabulary.from_dict(data)


def _check_ngrams(ngrams: list[str], allowed) -> None:
    piece = re.compile(PIECE_PATTERN)
    seen = set()
    for g in ngrams:
        if not 2 <= len(g) <= 3:
            raise ValueError(f"n-gram {g!r} must have 2 or 3 characters")
        if "|" in g:  # the tokenizer isolates "|" so that special names <|...|> never match in text
            raise ValueError(f"n-gram {g!r} contains '|', which the bmp and compact layouts keep for specials")
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


def _bvv_tokens(specials: list[str], ngrams: list[str], size: int) -> list[Token]:
    ranges = bvv_ngram_ranges(size)
    slots = sum(b - a for a, b in ranges)
    if size not in (BMP_SIZE, 2 * BMP_SIZE):
        raise ValueError(f"bvv layout: size must be 65536 or 131072, got {size}")
    if not 4 <= len(specials) <= BVV_BYTE_START - BVV_SPECIAL_START:
        raise ValueError(f"bvv layout: {len(specials)} specials do not fit in 0xE000-0xE07F")
    if len(ngrams) > slots:
        raise ValueError(f"bvv layout: {len(ngrams)} n-grams do not fit in the {slots} n-gram ids of V = {size}")
    if len(set(ngrams)) != len(ngrams) or any(len(g) < 2 for g in ngrams):
        raise ValueError("bvv layout: n-grams must be distinct strings of at least 2 characters")
    tokens: list[Token | None] = [None] * size
    for cp in range(BMP_SIZE):
        if is_own_id_char(cp):
            tokens[cp] = Token("char", chr(cp))
    for i, name in enumerate(specials):
        tokens[BVV_SPECIAL_START + i] = Token("special", name)
    for cp in range(BVV_SPECIAL_START + len(specials), BVV_BYTE_START):  # the author's names for reserved ids
        tokens[cp] = Token("special", f"<special_token_{cp}>")
    for b in range(0x80, 0x100):
        tokens[BVV_SPECIAL_START + b] = Token("byte", f"<0x{b:02X}>", b)
    it = iter(ngrams)
    for lo, hi in ranges:
        for i in range(lo, hi):
            g = next(it, None)
            if g is not None:
                tokens[i] = Token("ngram", g)
    for i, t in enumerate(tokens):  # ids left over (end of each range, 0xFFFF): the author's "unused"
        if t is None:
            tokens[i] = Token("special", f"<unused_{i}>")
    return tokens  # type: ignore[return-value]
