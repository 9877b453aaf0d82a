"""Corpora -> flat token files -> batches.

``prepare`` tokenises a corpus once: for every language it writes
``<lang>/train.bin`` and ``<lang>/val.bin`` (documents joined by ``<|eos|>``,
uint16 where V <= 65536, memory-mapped at training time) and one
``meta.json`` (vocabulary, token and character counts, source hashes). The
train/validation split is by document, decided by a hash of the document's
text, so it never changes when documents are added or reordered.

A *mixture* weighs languages, e.g. ``{"en": 1, "ru": 1}``; training batches
are random windows drawn from a seeded generator (the whole global batch is
drawn on every rank, each rank keeps its slice, so N processes see exactly
what one process sees).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from growlm.corpus import default_corpus_dir, load_documents
from growlm.substrate import Tokenizer

DATA_FORMAT = "growlm-tokens-1"
VAL_FRACTION = 0.1  # share of documents held out (the embedded corpus has only ~200-280 per language)


def is_validation(text: str, fraction: float) -> bool:
    """Deterministic document-level split: True for about ``fraction`` of documents.

    The hash is salted so that the split is independent of any selection made by a plain
    sha256 of the text (the embedded corpus picks its documents that way).
    """
    h = int.from_bytes(hashlib.sha256(b"growlm/split/1\0" + text.encode("utf-8")).digest()[:8], "big")
    return h / 2**64 < fraction


def _hash_corpus_files(root: Path) -> dict[str, str]:
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root if root.is_dir() else root.parent)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in files}


def prepare(corpus: str | Path | None, out_dir: str | Path, vocab: str = "compact",
            val_fraction: float = VAL_FRACTION, batch_docs: int = 512) -> dict:
    """Tokenise ``corpus`` (default: the embedded corpus) into token files under ``out_dir``; returns the metadata.

    Streams: documents are read, encoded ``batch_docs`` at a time and appended to their
    language's and split's file, so a corpus larger than memory can be prepared.
    """
    root = Path(corpus) if corpus else default_corpus_dir()
    tok = Tokenizer.load(vocab)
    dtype = np.uint16 if tok.vocab_size <= 65536 else np.uint32
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[tuple[str, str], object] = {}
    counts: dict[str, dict[str, dict[str, int]]] = {}
    batch: list[tuple[str, str, str]] = []

    def flush() -> None:
        for (lang, split, text), ids in zip(batch, tok.encode_batch([t for _, _, t in batch])):
            if (lang, split) not in files:
                (out / lang).mkdir(exist_ok=True)
                files[lang, split] = open(out / lang / f".{split}.bin.tmp", "wb")
            np.asarray(ids + [tok.eos_id], dtype=dtype).tofile(files[lang, split])
            c = counts.setdefault(lang, {}).setdefault(split, {"documents": 0, "tokens": 0, "characters": 0})
            c["documents"] += 1
            c["tokens"] += len(ids) + 1
            c["characters"] += len(text)
        batch.clear()

    try:
        for lang, text in load_documents(root):
            batch.append((lang or "unk", "val" if is_validation(text, val_fraction) else "train", text))
            if len(batch) >= batch_docs:
                flush()
        flush()
    finally:
        for f in files.values():
            f.close()
    for lang, splits in counts.items():
        for split in ("train", "val"):
            tmp = out / lang / f".{split}.bin.tmp"
            if not tmp.exists():  # a language with no validation (or training) document
                tmp.touch()
                splits[split] = {"documents": 0, "tokens": 0, "characters": 0}
            tmp.replace(out / lang / f"{split}.bin")
    unheld = sorted(lang for lang, splits in counts.items() if splits["val"]["documents"] == 0)
    if unheld:  # grow refuses such token files (no validation), so say it now
        warnings.warn(f"no validation document was held out for {unheld} ({root}, val_fraction {val_fraction}); "
                      "training on these token files will be refused: give more documents or a larger "
                      "--val-fraction", stacklevel=2)
    meta = {"format": DATA_FORMAT, "vocab": tok.name, "vocab_version": tok.vocab.version,
            "vocab_sha256": tok.vocab.sha256, "vocab_size": tok.vocab_size, "dtype": np.dtype(dtype).name,
            "eos_id": tok.eos_id, "val_fraction": val_fraction, "corpus": str(root),
            "sources": _hash_corpus_files(root), "languages": {k: counts[k] for k in sorted(counts)}}
    (out / "meta.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False))
    return meta


def default_tokens(vocab: str = "compact") -> Path:
    """The embedded corpus tokenised with ``vocab``, prepared once into the cache directory."""
    from growlm.substrate.substrate import cache_dir

    v = Tokenizer.load(vocab).vocab
    root = cache_dir().parent / "data" / f"default-{v.name}-{v.sha256[:10]}-split1-{VAL_FRACTION}"
    if not (root / "meta.json").exists():
        tmp = root.with_name(f"{root.name}.tmp{os.getpid()}")
        prepare(None, tmp, vocab)
        shutil.rmtree(root, ignore_errors=True)
        os.replace(tmp, root)
    return root


@dataclass
class TokenData:
    """Memory-mapped token files of one prepared corpus."""

    root: Path
    meta: dict
    _maps: dict = field(default_factory=dict, repr=False)  # (lang, split) -> memmap, opened once

    @classmethod
    def open(cls, root: str | Path) -> TokenData:
        """Open a directory written by ``prepare``."""
        root = Path(root)
        try:
            meta = json.loads((root / "meta.json").read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"{root} has no meta.json; create it with `growlm prepare --out {root}`") from None
        if meta.get("format") != DATA_FORMAT:
            raise ValueError(f"{root}/meta.json is not a growlm token directory (format {meta.get('format')!r})")
        return cls(root, meta)

    @property
    def languages(self) -> list[str]:
        return sorted(self.meta["languages"])

    def tokens(self, lang: str, split: str = "train") -> np.ndarray:
        """The token file of ``lang`` and ``split`` as a read-only memmap."""
        if lang not in self.meta["languages"]:
            raise KeyError(f"no language {lang!r} in {self.root}; it has {self.languages}")
        if (lang, split) not in self._maps:  # sample_batch asks once per row of every batch
            path = self.root / lang / f"{split}.bin"
            empty = path.stat().st_size == 0  # a split with no document; numpy cannot map empty files
            self._maps[lang, split] = (np.empty(0, self.meta["dtype"]) if empty
                                       else np.memmap(path, dtype=self.meta["dtype"], mode="r"))
        return self._maps[lang, split]

    def characters(self, lang: str, split: str = "val") -> int:
        return int(self.meta["languages"][lang][split]["characters"])

    def check_vocab(self, vocab_name: str, vocab_sha256: str | None = None) -> None:
        """Refuse token files made with another vocabulary."""
        if self.meta["vocab"] != vocab_name or (vocab_sha256 and self.meta["vocab_sha256"] != vocab_sha256):
            raise ValueError(f"token files in {self.root} were made with vocabulary {self.meta['vocab']!r} "
                             f"({self.meta['vocab_sha256'][:12]}), the model uses {vocab_name!r}; "
                             "re-run `growlm prepare` with the model's vocabulary")

    def mixture(self, weights: dict[str, float] | None) -> dict[str, float]:
        """Normalised language weights (None = every language, weighted by its token count)."""
        if not weights:
            weights = {lang: float(self.meta["languages"][lang]["train"]["tokens"]) for lang in self.languages}
        unknown = set(weights) - set(self.languages)
        if unknown:
            raise KeyError(f"mixture names languages {sorted(unknown)} not in {self.root} (it has {self.languages})")
        total = sum(weights.values())
        if total <= 0 or any(w < 0 for w in weights.values()):
            raise ValueError(f"mixture weights must be non-negative and not all zero, got {weights}")
        return {k: weights[k] / total for k in sorted(weights)}

    def sample_batch(self, mixture: dict[str, float], batch: int, seq_len: int, generator: torch.Generator
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Random windows (x, y) [batch, seq_len] from the train split, languages drawn by ``mixture``."""
        langs = list(mixture)
        probs = torch.tensor([mixture[k] for k in langs], dtype=torch.float64)
        which = torch.multinomial(probs, batch, replacement=True, generator=generator).tolist()
        rows = []
        for li in which:
            arr = self.tokens(langs[li], "train")
            if arr.size <= seq_len + 1:
                raise ValueError(f"{langs[li]} train split has {arr.size} tokens, fewer than seq_len+1={seq_len + 1}")
            start = int(torch.randint(0, arr.size - seq_len - 1, (1,), generator=generator))
            rows.append(torch.from_numpy(arr[start:start + seq_len + 1].astype(np.int64)))
        xy = torch.stack(rows)
        return xy[:, :-1], xy[:, 1:]

    def val_windows(self, lang: str, seq_len: int, max_tokens: int | None = None) -> torch.Tensor:
        """Non-overlapping windows [N, seq_len + 1] covering the validation split (each token predicted once)."""
        arr = self.tokens(lang, "val")
        if max_tokens:
            arr = arr[:max_tokens]
        n = max(0, (arr.size - 1) // seq_len)
        if n == 0:
            raise ValueError(f"{lang} validation split has {arr.size} tokens; need more than seq_len={seq_len}")
        idx = torch.arange(n)[:, None] * seq_len + torch.arange(seq_len + 1)[None, :]
        return torch.from_numpy(np.asarray(arr[: n * seq_len + 1]).astype(np.int64))[idx]


def bits_per_char(total_nats: float, n_tokens: int, n_chars: int, tokens_available: int) -> float:
    """Bits per character when ``n_tokens`` of ``tokens_available`` tokens (covering n_chars) were scored."""
    chars = n_chars * n_tokens / max(1, tokens_available)
    return total_nats / math.log(2) / max(1.0, chars)


def heldout_texts(corpus: str | Path | None = None, lang: str | None = None,
                  val_fraction: float = VAL_FRACTION) -> list[str]:
    """Validation documents of a corpus (default: the embedded one), by the same split ``prepare`` uses."""
    root = Path(corpus) if corpus else default_corpus_dir()
    return [t for doc_lang, t in load_documents(root, lang) if is_validation(t, val_fraction)]
