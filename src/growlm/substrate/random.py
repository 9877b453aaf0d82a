"""Random substrate (kind ``random``): a frozen, seeded Gaussian matrix, the control with no structure.

Entries are i.i.d. N(0, 1) drawn by numpy's legacy ``RandomState(seed)`` (a stream numpy keeps fixed
across versions and platforms), in row-major order, rows L2-normalised like every other substrate.
Its golden hash covers the raw draws rounded to float32.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

ALGORITHM = "gaussian-1"


def random_matrix(vocab_size: int, d_model: int, seed: int = 0) -> tuple[torch.Tensor, str]:
    """float32 [V, d_model] with unit rows, and the golden hash of its draws."""
    draws = np.random.RandomState(seed).standard_normal((vocab_size, d_model))
    golden = hashlib.sha256(draws.astype(np.float32).tobytes()).hexdigest()
    draws /= np.maximum(np.linalg.norm(draws, axis=1, keepdims=True), 1e-12)
    return torch.from_numpy(draws.astype(np.float32)), golden
