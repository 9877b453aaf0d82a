"""Binary substrate: each token id as a k-bit code, lifted to d_model by a fixed map (option ``lift``).

The code of id ``i`` is its k bits, most significant first (k = ceil(log2 V): 16 for V = 65536).
Every lift has rank exactly k. The model reads the substrate only through a norm (LayerNorm for
the ``paper`` block, RMSNorm for ``llama``), so a lift must keep every id distinct *after* that
norm; LayerNorm removes each row's mean and scale, so a lifted row that is constant becomes 0.

* ``balanced`` (default): the author's block repetition (bit j fills the j-th block of d/k
  dimensions, as the 16-bit models' ``repeat_interleave(64)``), with the bit written as +-1 and
  the block's signs alternating (+ - + - ...), so each block sums to zero. Centring is then a
  no-op, every row has the same norm, and both norms see the code itself: all ids stay distinct.
  Needs d_model >= 2k (an odd block ends in a 0).
* ``repeat``: the author's lift exactly as the model cards describe it, the 0/1 bits repeated
  blockwise, values left 0/1. Under LayerNorm the two constant codes (all zeros, all ones) both
  become the zero vector: ids 0 and V-1 collide when V = 2^k (measured on every shipped vocabulary;
  no collision under RMSNorm, where only id 0 is the zero vector).
* ``dct``: rows 1..k of the orthonormal DCT-II basis (row 0, the constant direction that
  LayerNorm erases, is skipped), the +-1 code scaled to a unit row.

The author counts the V x k code table (``id_codes``) in the model's parameters; the lift is fixed.
"""

from __future__ import annotations

import math

import torch

LIFTS = ("balanced", "repeat", "dct")
DEFAULT_LIFT = "balanced"


def code_bits(vocab_size: int) -> int:
    """Number of bits k needed to write every id below ``vocab_size``."""
    return max(1, math.ceil(math.log2(vocab_size)))


def id_codes(vocab_size: int, k: int) -> torch.Tensor:
    """The 0/1 code table [V, k] (uint8, most significant bit first): what the author counts as parameters."""
    ids = torch.arange(vocab_size, dtype=torch.int64)
    return ((ids[:, None] >> torch.arange(k - 1, -1, -1)) & 1).to(torch.uint8)


def dct_rows(rows: range, d_model: int) -> torch.Tensor:
    """The listed rows of the orthonormal DCT-II matrix of size d_model, float64 [len(rows), d_model]."""
    n = torch.arange(d_model, dtype=torch.float64)
    out = [torch.cos(math.pi * (n + 0.5) * f / d_model) * math.sqrt((1 if f == 0 else 2) / d_model) for f in rows]
    return torch.stack(out)


def block_lift(k: int, d_model: int, balanced: bool) -> torch.Tensor:
    """[k, d_model] map of bit j onto its block [floor(j d / k), floor((j+1) d / k)).

    Plain repetition puts 1 on the block; balanced repetition alternates +1, -1 (an odd block
    ends in 0), so every row of the map sums to zero.
    """
    lift = torch.zeros(k, d_model, dtype=torch.float64)
    for j in range(k):
        lo, hi = j * d_model // k, (j + 1) * d_model // k
        if balanced:
            width = (hi - lo) // 2 * 2
            lift[j, lo:lo + width] = torch.tensor([1.0, -1.0]).repeat(width // 2)
        else:
            lift[j, lo:hi] = 1.0
    return lift


def min_d_model(k: int, lift: str) -> int:
    """Smallest d_model the lift supports for k bits."""
    return 2 * k if lift == "balanced" else k + 1 if lift == "dct" else k


def binary_matrix(vocab_size: int, d_model: int, bits: int | None = None, lift: str = DEFAULT_LIFT) -> torch.Tensor:
    """The binary substrate matrix, float32 [V, d_model], rank exactly k."""
    k = bits or code_bits(vocab_size)
    if lift not in LIFTS:
        raise ValueError(f"unknown binary lift {lift!r}; valid lifts are {list(LIFTS)}")
    need = min_d_model(k, lift)
    if d_model < need:
        raise ValueError(f"binary substrate with lift {lift!r} needs d_model >= {need} for {k} bits, "
                         f"got d_model={d_model}; use a wider model or fewer bits")
    if 2**k < vocab_size:
        raise ValueError(f"{k} bits cannot give {vocab_size} distinct codes; use bits >= {code_bits(vocab_size)}")
    codes = id_codes(vocab_size, k).to(torch.float64)  # [V, k] of 0/1
    if lift == "repeat":
        return (codes @ block_lift(k, d_model, balanced=False)).to(torch.float32)  # the author's 0/1 values
    signs = codes * 2 - 1
    basis = block_lift(k, d_model, balanced=True) if lift == "balanced" else dct_rows(range(1, k + 1), d_model)
    lifted = signs @ basis  # [V, d_model]; rows of equal norm, each summing to zero
    return (lifted / lifted.norm(dim=1, keepdim=True)).to(torch.float32)
