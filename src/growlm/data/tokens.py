"""Prepared token files, read: shards memory-mapped as one stream per language and split, windows, batches.

``TokenData.open`` reads what ``growlm.data.prepare`` wrote (``meta.json`` and ``<lang>/<split>-NNNNN.bin``);
training draws random windows (each drawn on every rank, each rank keeping its slice, so N processes see
exactly what one process sees). ``open_data`` opens a path or ``"default"``, the embedded corpus.
"""

from __future__ import annotations

import json
from bisect import bisect_right
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from growlm.data.documents import (
    default_corpus_dir,
    load_documents,
)
from growlm.data.prepare import DATA_FORMAT, OLD_FORMATS, PROGRESS, VAL_FRACTION, default_tokens, is_validation
from growlm.substrate import Vocabulary


class TokenStream:
    """The shards of one language and split, read as one sequence (each shard memory-mapped once)."""

    def __init__(self, paths: list[Path], sizes: list[int], dtype: str):
        self.paths, self.sizes, self.dtype = paths, sizes, dtype
        self.offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).tolist()
        self._maps: dict[int, np.ndarray] = {}
        self._starts: dict[int, list[int]] = {}  # seq_len -> cumulative window starts per shard

    @property
    def size(self) -> int:
        return int(self.offsets[-1])

    def __len__(self) -> int:
        return self.size

    def shard(self, i: int) -> np.ndarray:
        """Shard ``i`` as a read-only memmap, opened on first use and kept."""
        if i not in self._maps:
            self._maps[i] = (np.empty(0, self.dtype) if self.sizes[i] == 0  # numpy cannot map empty files
                             else np.memmap(self.paths[i], dtype=self.dtype, mode="r", shape=(self.sizes[i],)))
        return self._maps[i]

    def __getitem__(self, key: slice) -> np.ndarray:
        """A contiguous range (``stream[a:b]``), copied across shard boundaries where it spans them."""
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("a token stream is read by contiguous slices")
        a, b, _ = key.indices(self.size)
        if b <= a:
            return np.empty(0, self.dtype)
        i, j = bisect_right(self.offsets, a) - 1, bisect_right(self.offsets, b - 1) - 1
        parts = [self.shard(k)[max(a, self.offsets[k]) - self.offsets[k]:min(b, self.offsets[k + 1]) - self.offsets[k]]
                 for k in range(i, j + 1)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def window(self, u: int, seq_len: int) -> np.ndarray:
        """The ``u``-th of all windows of ``seq_len + 1`` tokens that lie within one shard."""
        starts = self.starts(seq_len)
        k = bisect_right(starts, u) - 1
        s = u - starts[k]
        return self.shard(k)[s:s + seq_len + 1]

    def starts(self, seq_len: int) -> list[int]:
        """Cumulative number of window starts per shard (a shard of n tokens has n - seq_len - 1)."""
        if seq_len not in self._starts:
            counts = [max(0, n - seq_len - 1) for n in self.sizes]
            self._starts[seq_len] = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).tolist()
        return self._starts[seq_len]


@dataclass
class TokenData:
    """Memory-mapped token shards of one prepared corpus."""

    root: Path
    meta: dict
    _streams: dict = field(default_factory=dict, repr=False)  # (lang, split) -> TokenStream, built once

    @classmethod
    def open(cls, root: str | Path) -> TokenData:
        """Open a directory written by ``prepare`` (this version's, or the one-file-per-split format before it)."""
        root = Path(root)
        try:
            meta = json.loads((root / "meta.json").read_text(encoding="utf-8"))
        except FileNotFoundError:
            if (root / PROGRESS).exists():
                raise FileNotFoundError(f"{root} is an unfinished preparation; run `growlm prepare` again with the "
                                        "same corpus and --out to resume it") from None
            raise FileNotFoundError(f"{root} has no meta.json; create it with `growlm prepare --out {root}`") from None
        fmt = meta.get("format")
        if fmt in OLD_FORMATS:
            itemsize = np.dtype(meta["dtype"]).itemsize
            meta["shards"] = [{"path": f"{lang}/{split}.bin", "lang": lang, "split": split,
                               "tokens": (root / lang / f"{split}.bin").stat().st_size // itemsize}
                              for lang in meta["languages"] for split in ("train", "val")
                              if (root / lang / f"{split}.bin").exists()]
        elif fmt != DATA_FORMAT:
            raise ValueError(f"{root}/meta.json is not a growlm token directory this version reads "
                             f"(format {fmt!r}); re-run `growlm prepare` into a new directory")
        data = cls(root, meta)
        data._check_shards()
        return data

    def _check_shards(self) -> None:
        """Every shard exists with the size the manifest gives (a cheap guard against truncation)."""
        itemsize = np.dtype(self.meta["dtype"]).itemsize
        for s in self.meta["shards"]:
            path = self.root / s["path"]
            size = path.stat().st_size if path.exists() else None
            if size != s["tokens"] * itemsize:
                found = "is missing" if size is None else f"has {size} bytes, expected {s['tokens'] * itemsize}"
                raise ValueError(f"token shard {path} {found}; re-run `growlm prepare` into a new directory")

    @property
    def languages(self) -> list[str]:
        return sorted(self.meta["languages"])

    def tokens(self, lang: str, split: str = "train") -> TokenStream:
        """The shards of ``lang`` and ``split`` as one read-only stream (``.size``, slices, windows)."""
        if lang not in self.meta["languages"]:
            raise KeyError(f"no language {lang!r} in {self.root}; it has {self.languages}")
        if (lang, split) not in self._streams:
            shards = [s for s in self.meta["shards"] if s["lang"] == lang and s["split"] == split]
            self._streams[lang, split] = TokenStream([self.root / s["path"] for s in shards],
                                                     [int(s["tokens"]) for s in shards], self.meta["dtype"])
        return self._streams[lang, split]

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
        """Random windows (x, y) [batch, seq_len] from the train split, languages drawn by ``mixture``.

        A window is drawn uniformly from all windows of the language that lie within one shard, so
        shards are drawn in proportion to their size; with one shard this is the draw of format 1.
        """
        langs = list(mixture)
        probs = torch.tensor([mixture[k] for k in langs], dtype=torch.float64)
        which = torch.multinomial(probs, batch, replacement=True, generator=generator).tolist()
        rows = []
        for li in which:
            stream = self.tokens(langs[li], "train")
            n = stream.starts(seq_len)[-1]
            if n <= 0:
                raise ValueError(f"{langs[li]} train split has no shard longer than seq_len+1={seq_len + 1} tokens "
                                 f"(largest: {max(stream.sizes, default=0)}); use a shorter seq_len or more data")
            u = int(torch.randint(0, n, (1,), generator=generator))
            rows.append(torch.from_numpy(stream.window(u, seq_len).astype(np.int64)))
        xy = torch.stack(rows)
        return xy[:, :-1], xy[:, 1:]

    def val_windows(self, lang: str, seq_len: int, max_tokens: int | None = None) -> torch.Tensor:
        """Non-overlapping windows [N, seq_len + 1] covering the validation split (each token predicted once)."""
        stream = self.tokens(lang, "val")
        size = min(stream.size, max_tokens) if max_tokens else stream.size
        n = max(0, (size - 1) // seq_len)
        if n == 0:
            if size == stream.size:
                raise ValueError(f"{lang!r} validation split has {size} tokens, fewer than seq_len + 1 = "
                                 f"{seq_len + 1}; lower seq_len or hold out more text")
            raise ValueError(f"{lang!r}: validation uses {size} of the split's {stream.size} tokens (val_tokens = "
                             f"{max_tokens}), fewer than seq_len + 1 = {seq_len + 1}; lower seq_len or raise "
                             "val_tokens (--val-tokens)")
        idx = torch.arange(n)[:, None] * seq_len + torch.arange(seq_len + 1)[None, :]
        return torch.from_numpy(np.asarray(stream[: n * seq_len + 1]).astype(np.int64))[idx]


def heldout_texts(corpus: str | Path | None = None, lang: str | None = None,
                  val_fraction: float = VAL_FRACTION) -> list[str]:
    """Validation documents of a corpus (default: the embedded one), by the same split ``prepare`` uses."""
    root = Path(corpus) if corpus else default_corpus_dir()
    return [t for doc_lang, t in load_documents(root, lang) if is_validation(t, val_fraction)]


# --------------------------------------------------------------------------- the run


def open_data(path: str | Path, vocab_name: str) -> TokenData:
    """Token files at ``path`` (``"default"``: the embedded corpus, tokenised once into the cache)."""
    root = default_tokens(vocab_name) if str(path) == "default" else path
    data = TokenData.open(root)
    data.check_vocab(vocab_name, Vocabulary.load(vocab_name).sha256)
    return data
