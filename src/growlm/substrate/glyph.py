"""Reference-style glyph substrate (kind ``glyph``): the author's pipeline, from the pinned Unifont hex file.

The steps of the author's builder notebooks (AVBochkov/PGT, ``_tokenizer-builder-bvv241-*.ipynb``),
with Unifont at 32 px (64 px) taken as the shipped 16-px bitmap doubled (quadrupled):

1. a token of n characters is drawn on a white strip of n cells of ``cell`` x ``cell`` pixels, each
   character centred on its ink bounding box in its own cell;
2. one fixed augmentation, the same for every token (the author reseeds with 42 before each one):
   for simple scripts (every character Latin, Greek, Cyrillic or Armenian, U+0000-024F and
   U+0370-058F) a rotation (nearest neighbour, about the strip's centre), a shift and ink noise; for
   other scripts only sparse noise. At 32 px: rotation uniform in +-4 degrees, shift +-2 px, noise 1%
   (0.1%); at 64 px: +-7 degrees, +-3 px, 3% (0.1%). The draws are the author's: Python's
   ``random.Random(42)`` for the angle and shift, numpy's ``RandomState(42).rand`` for the noise;
3. the author's Gaussian blur (radius 0.5) followed by the 50% threshold changes no pixel of a
   binary image (centre weight 0.62 > 1/2, the eight neighbours together 0.38 < 1/2; checked against
   Pillow in the tests), so it is left out;
4. a strip wider than one cell is resized to one cell as Pillow does for a binary image: nearest
   neighbour, column ``floor((x + 1/2) n)``;
5. PCA of the binary images (ink = 1) keeping ``d_model`` components, rows L2-normalised.

growlm's own rules, so that no token is blank and specials stand apart: a character with no glyph
or a blank one (spaces) is drawn as its code point in hex (16-px digits, rows of cell/8 digits, in
its cell), and a special or byte token as its id in hex, one cell, inverted (ink on a full
background), which no text token can produce. (The author drew specials by name; 16-character names
squeezed into one cell by nearest neighbour lose most of their columns, and e.g. ``<0xBA>`` and
``<0xEA>`` came out identical.)

Everything up to the PCA is integer arithmetic, so the bitmap stack (``token_bitmaps``) is the same
bytes on every machine; ``bitmap_sha256`` is its golden hash. The PCA's Gram matrix is exact (0/1
sums below 2^24 in float32); the eigendecomposition and projection run in float64.
"""

from __future__ import annotations

import hashlib
import math
import random
from functools import cache

import numpy as np
import torch

from growlm.substrate.unifont import load_unifont
from growlm.substrate.vocab import Vocabulary

ALGORITHM = "glyph-ref-1"
CELLS = (32, 64)
# per cell size: (max rotation in degrees, max shift in px, noise for simple scripts, noise for others)
AUGMENT = {32: (4.0, 2, 0.01, 0.001), 64: (7.0, 3, 0.03, 0.001)}
CHUNK = 8192  # rows per step of the PCA, to bound memory at V = 131072, cell 64
SIMPLE_RANGES = ((0x0000, 0x024F), (0x0370, 0x058F))  # Latin (+ Latin-1, Ext-A/B), Greek, Cyrillic, Armenian


def default_cell(d_model: int) -> int:
    """32 px cells up to d_model 1024 (1,024 pixels), 64 px beyond (the author's 4096-wide substrate)."""
    return 32 if d_model <= 32 * 32 else 64


def is_simple_script(text: str) -> bool:
    """True when every character lies in the ranges the author augments fully."""
    return all(any(lo <= ord(c) <= hi for lo, hi in SIMPLE_RANGES) for c in text)


def augmentation(cell: int, simple: bool) -> tuple[float, int, int]:
    """(angle in degrees, dx, dy): the author's draws after ``random.seed(42)``."""
    max_rot, max_shift, _, _ = AUGMENT[cell]
    rng = random.Random(42)
    rot, shift = (max_rot, max_shift) if simple else (0.0, 0)
    angle = rng.uniform(-rot, rot)
    return angle, rng.randint(-shift, shift), rng.randint(-shift, shift)


@cache
def noise_mask(height: int, width: int, level: float) -> np.ndarray:
    """The author's ink noise for a strip of this size: ``RandomState(42).rand(h, w) < level``."""
    return np.random.RandomState(42).rand(height, width) < level


@cache
def source_map(cell: int, n: int, simple: bool) -> tuple[np.ndarray, np.ndarray]:
    """Where each pixel of the final cell comes from in the drawn strip, and the noise it gets.

    Returns (index [cell*cell] into the flattened cell x (n*cell) strip, -1 for white fill; noise mask
    [cell*cell]). Composes the rotation (Pillow's nearest-neighbour affine: sample at pixel centres,
    floor), the shift and the nearest-neighbour resize of n cells to one.
    """
    h, w = cell, n * cell
    angle, dx, dy = augmentation(cell, simple)
    _, _, noise_simple, noise_other = AUGMENT[cell]
    a = -math.radians(angle)
    cos, sin = round(math.cos(a), 15), round(math.sin(a), 15)
    cx, cy = w / 2.0, h / 2.0
    ys, xs = np.meshgrid(np.arange(h), (np.arange(cell) * 2 + 1) * n // 2, indexing="ij")  # resize picks
    xs, ys = xs - dx, ys - dy  # undo the shift: out[y, x] = rotated[y - dy, x - dx]
    shifted_in = (xs >= 0) & (xs < w) & (ys >= 0) & (ys < h)
    u, v = xs + 0.5 - cx, ys + 0.5 - cy
    sx = cos * u + sin * v + cx
    sy = -sin * u + cos * v + cy
    inside = shifted_in & (sx >= 0) & (sx < w) & (sy >= 0) & (sy < h)
    src = np.where(inside, np.floor(sy).clip(0, h - 1).astype(np.int64) * w
                   + np.floor(sx).clip(0, w - 1).astype(np.int64), -1)
    picks = (np.arange(cell) * 2 + 1) * n // 2
    mask = noise_mask(h, w, noise_simple if simple else noise_other)[:, picks]
    return src.reshape(-1), mask.reshape(-1)


def _ink_box(bitmap: np.ndarray) -> np.ndarray:
    rows, cols = np.flatnonzero(bitmap.any(axis=1)), np.flatnonzero(bitmap.any(axis=0))
    return bitmap[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def hex_code(glyphs: dict[int, np.ndarray], value: int, cell: int) -> np.ndarray:
    """``value`` in hex (at least 4 digits) at 16 px, in rows of cell/8 digits, cropped to its ink."""
    digits, per_row = f"{value:04X}", cell // 8
    rows = [digits[i:i + per_row] for i in range(0, len(digits), per_row)]
    if 16 * len(rows) > cell:
        raise ValueError(f"hex code {digits} does not fit a {cell}-px cell")
    img = np.zeros((16 * len(rows), 8 * per_row), dtype=np.uint8)
    for r, row in enumerate(rows):
        for c, d in enumerate(row):
            img[16 * r:16 * (r + 1), 8 * c:8 * (c + 1)] = glyphs[ord(d)]
    return _ink_box(img)


def char_glyph(glyphs: dict[int, np.ndarray], cp: int, cell: int) -> np.ndarray:
    """The ink of character ``cp`` cropped to its bounding box, at ``cell`` px (uint8, 1 = ink)."""
    g = glyphs.get(cp)
    if g is not None and g.any():
        scale = cell // 16
        return _ink_box(np.kron(g, np.ones((scale, scale), dtype=np.uint8)))
    return hex_code(glyphs, cp, cell)  # no glyph, or a blank one (spaces): its code point in hex


class _Drawer:
    """Draws tokens at one cell size, each character's cropped glyph computed once."""

    def __init__(self, cell: int):
        self.cell, self.glyphs, self.cache = cell, load_unifont(), {}

    def glyph(self, cp: int) -> np.ndarray:
        g = self.cache.get(cp)
        if g is None:
            g = self.cache[cp] = char_glyph(self.glyphs, cp, self.cell)
        return g

    def draw(self, text: str) -> np.ndarray:
        """The white strip [cell, n*cell] with each character centred on its ink box in its cell."""
        cell = self.cell
        strip = np.zeros((cell, cell * len(text)), dtype=np.uint8)
        for i, ch in enumerate(text):
            g = self.glyph(ord(ch))
            h, w = g.shape
            y0, x0 = (cell - h) // 2, i * cell + (cell - w) // 2
            strip[y0:y0 + h, x0:x0 + w] = g
        return strip

    def bitmap(self, text: str, code: int | None = None) -> np.ndarray:
        """The final binary cell [cell*cell] (uint8, 1 = ink) of a text token, or of the special/byte
        token with id ``code``: that id in hex, one cell, inverted."""
        if code is None:
            strip, n, simple = self.draw(text), len(text), is_simple_script(text)
        else:
            g, cell = hex_code(self.glyphs, code, self.cell), self.cell
            strip, n, simple = np.zeros((cell, cell), dtype=np.uint8), 1, True
            h, w = g.shape
            strip[(cell - h) // 2:(cell - h) // 2 + h, (cell - w) // 2:(cell - w) // 2 + w] = g
        src, mask = source_map(self.cell, n, simple)
        out = np.where(src >= 0, strip.reshape(-1)[np.maximum(src, 0)], 0).astype(np.uint8) | mask
        return out if code is None else 1 - out


def draw(text: str, cell: int) -> np.ndarray:
    """The drawn, not yet augmented strip of ``text`` [cell, len(text) * cell]."""
    return _Drawer(cell).draw(text)


def token_bitmap(text: str, cell: int) -> np.ndarray:
    """The final binary cell [cell*cell] (uint8, 1 = ink) of a text token."""
    return _Drawer(cell).bitmap(text)


def token_bitmaps(vocab: Vocabulary, cell: int) -> np.ndarray:
    """[V, cell*cell] uint8 bitmap stack of every token (the pre-PCA data; identical bytes everywhere)."""
    if cell not in CELLS:
        raise ValueError(f"glyph cell must be one of {list(CELLS)}, got {cell}")
    drawer = _Drawer(cell)
    out = np.empty((len(vocab), cell * cell), dtype=np.uint8)
    for i, tok in enumerate(vocab.tokens):
        out[i] = drawer.bitmap(tok.text, code=i if tok.kind in ("special", "byte") else None)
    return out


def bitmap_sha256(bitmaps: np.ndarray) -> str:
    """Golden hash of a bitmap stack: its shape and bytes."""
    h = hashlib.sha256(f"{bitmaps.shape}".encode())
    h.update(np.ascontiguousarray(bitmaps).tobytes())
    return h.hexdigest()


def pca(bitmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Principal axes of the 0/1 images: (eigenvalues descending [P], axes [P, P] as columns), float64.

    The Gram matrix X^T X of 0/1 data is exact: each chunk's float32 product sums at most CHUNK < 2^24
    ones, and the chunks add up in float64; so only the eigendecomposition depends on the machine's LAPACK.
    """
    n = bitmaps.shape[0]
    x = torch.from_numpy(bitmaps)
    gram = torch.zeros(bitmaps.shape[1], bitmaps.shape[1], dtype=torch.float64)
    for chunk in x.split(CHUNK):  # each chunk's float32 Gram is exact; summing in float64 keeps it exact
        c = chunk.float()
        gram += (c.T @ c).double()
    gram = gram.numpy()
    mean = bitmaps.sum(axis=0, dtype=np.int64).astype(np.float64) / n
    cov = gram / n - np.outer(mean, mean)
    evals, evecs = np.linalg.eigh(cov)
    order = np.argsort(-evals, kind="stable")
    evals, evecs = evals[order], evecs[:, order]
    signs = np.sign(evecs[np.abs(evecs).argmax(axis=0), np.arange(evecs.shape[1])])
    return evals, evecs * np.where(signs == 0, 1.0, signs)


_ANALYSED: dict[tuple[str, int], tuple[np.ndarray, np.ndarray, np.ndarray, str]] = {}


def _analysed(vocab: Vocabulary, cell: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Bitmaps, PCA and golden hash of a vocabulary, kept in memory for the last two vocabularies:
    building at another d_model then redoes only the projection."""
    key = (vocab.sha256, cell)
    if key not in _ANALYSED:
        bitmaps = token_bitmaps(vocab, cell)
        evals, evecs = pca(bitmaps)
        while len(_ANALYSED) >= 2:
            _ANALYSED.pop(next(iter(_ANALYSED)))
        _ANALYSED[key] = (bitmaps, evals, evecs, bitmap_sha256(bitmaps))
    return _ANALYSED[key]


def glyph_matrix(vocab: Vocabulary, d_model: int, cell: int | None = None) -> tuple[torch.Tensor, str, np.ndarray]:
    """The reference-style glyph substrate, float32 [V, d_model], the golden hash of its bitmaps and
    the PCA's eigenvalues (the pixel variance of every component, descending)."""
    cell = cell or default_cell(d_model)
    bitmaps, evals, evecs, golden = _analysed(vocab, cell)
    k = min(d_model, evecs.shape[1])
    # components past the data's rank carry only rounding noise: they are zero columns, not noise
    k = min(k, int((evals > max(evals[0], 0.0) * 1e-12).sum()))
    axes = evecs[:, :k]
    offset = bitmaps.mean(axis=0, dtype=np.float64) @ axes
    out = np.zeros((bitmaps.shape[0], d_model), dtype=np.float32)
    for lo in range(0, bitmaps.shape[0], CHUNK):  # float64 projection, a chunk of rows at a time
        z = bitmaps[lo:lo + CHUNK].astype(np.float64) @ axes - offset
        z /= np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
        out[lo:lo + CHUNK, :k] = z
    return torch.from_numpy(out), golden, np.clip(evals, 0.0, None)
