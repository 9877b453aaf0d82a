"""Binary substrate: each token id as a k-bit code, lifted to d_model by a fixed map.

The code of id ``i`` is its k bits as +-1 (k = ceil(log2 V), 16 for V = 65536).
The lift is the first k rows of the orthonormal DCT-II basis of size d_model: a
closed-form, machine-independent map with orthogonal rows, so distances between
codes are preserved and the matrix has rank exactly k (at most d_model).
"""

from __future__ import annotations

import math

import torch


def code_bits(vocab_size: int) -> int:
    """Number of bits k needed to write every id below ``vocab_size``."""
    return max(1, math.ceil(math.log2(vocab_size)))


def dct_rows(k: int, d_model: int) -> torch.Tensor:
    """First k rows of the orthonormal DCT-II matrix of size d_model, float64 [k, d_model]."""
    n = torch.arange(d_model, dtype=torch.float64)
    rows = [torch.cos(math.pi * (n + 0.5) * f / d_model) * math.sqrt((1 if f == 0 else 2) / d_model)
            for f in range(k)]
    return torch.stack(rows)


def binary_matrix(vocab_size: int, d_model: int, bits: int | None = None) -> torch.Tensor:
    """The binary substrate matrix, float32 [V, d_model], rows of unit norm, rank <= k."""
    k = bits or code_bits(vocab_size)
    if k > d_model:
        raise ValueError(f"binary substrate needs d_model >= {k} bits, got d_model={d_model}")
    if 2**k < vocab_size:
        raise ValueError(f"{k} bits cannot give {vocab_size} distinct codes")
    ids = torch.arange(vocab_size, dtype=torch.int64)
    codes = ((ids[:, None] >> torch.arange(k - 1, -1, -1)) & 1).to(torch.float64) * 2 - 1  # [V, k], MSB first
    lifted = codes @ dct_rows(k, d_model) / math.sqrt(k)  # orthonormal rows: each row has norm 1
    return lifted.to(torch.float32)
