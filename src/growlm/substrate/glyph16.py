"""The 16 px glyph substrate (kind ``glyph16``), growlm's own variant of the reference pipeline in ``glyph.py``.

In ``glyph16`` every token becomes a 16x16 grey image:
* a character is its Unifont glyph (8 or 16 pixels wide), resized to the cell;
* an n-gram is its characters' glyphs side by side, resized to one cell;
* a character Unifont has no glyph for, or a blank one (spaces), is drawn as its hex code
  (``"D7A5"``, ``"0020"``), so runs of spaces of different lengths stay distinct;
* specials and byte tokens are their names drawn inverted (ink on a full
  background), which no text token can produce, so all vectors stay distinct.
Images go through PCA (eigendecomposition of the 256x256 covariance in
float64, signs fixed so the largest-magnitude loading is positive); the
leading ``d_model`` components are kept. Unifont cells have 256 pixels, so the
substrate's rank is at most 256: for ``d_model > 256`` the extra columns are
the (zero-variance) components past the data's rank, i.e. zeros.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from growlm.substrate.unifont import CELL, load_unifont
from growlm.substrate.vocab import Vocabulary


def _char_bitmap(glyphs: dict[int, np.ndarray], ch: str) -> np.ndarray:
    g = glyphs.get(ord(ch))
    if g is not None and g.any():
        return g
    # No glyph, or a blank one (space, no-break space, ideographic space...): draw the hex code,
    # so that " ", "  " and "   " (all blank) stay distinct tokens for the model.
    return np.concatenate([glyphs[ord(c)] for c in f"{ord(ch):04X}"], axis=1)


def _to_cell(bitmap: np.ndarray) -> np.ndarray:
    t = torch.from_numpy(bitmap.astype(np.float64))[None, None]
    return F.adaptive_avg_pool2d(t, (CELL, CELL))[0, 0].numpy()


def token_images(vocab: Vocabulary) -> np.ndarray:
    """[V, 256] float64 pixel matrix of every token in ``vocab``."""
    glyphs = load_unifont()
    images = np.zeros((len(vocab), CELL * CELL), dtype=np.float64)
    cache: dict[tuple[int, bytes], np.ndarray] = {}
    for i, tok in enumerate(vocab.tokens):
        if tok.kind in ("char", "ngram"):
            text, invert = tok.text, False
        else:
            text, invert = tok.text, True
        bitmap = np.concatenate([_char_bitmap(glyphs, c) for c in text], axis=1)
        key = (bitmap.shape[1], bitmap.tobytes())  # width too: equal bytes can come from different widths
        cell = cache.get(key)
        if cell is None:
            cell = cache[key] = _to_cell(bitmap)
        images[i] = (1.0 - cell if invert else cell).reshape(-1)
    return images


def pca_embed(images: np.ndarray, d_model: int) -> np.ndarray:
    """Project centred ``images`` on their leading principal axes; [V, d_model], rows L2-normalised."""
    x = images - images.mean(axis=0, keepdims=True)
    cov = x.T @ x / x.shape[0]
    evals, evecs = np.linalg.eigh(cov)
    order = np.argsort(-evals, kind="stable")
    evecs = evecs[:, order]
    signs = np.sign(evecs[np.abs(evecs).argmax(axis=0), np.arange(evecs.shape[1])])
    evecs = evecs * np.where(signs == 0, 1.0, signs)
    k = min(d_model, evecs.shape[1])
    z = np.zeros((x.shape[0], d_model), dtype=np.float64)
    z[:, :k] = x @ evecs[:, :k]
    norms = np.linalg.norm(z, axis=1, keepdims=True)
    return z / np.maximum(norms, 1e-12)


def glyph_matrix(vocab: Vocabulary, d_model: int) -> torch.Tensor:
    """The glyph substrate matrix, float32 [V, d_model]."""
    return torch.from_numpy(pca_embed(token_images(vocab), d_model).astype(np.float32))
