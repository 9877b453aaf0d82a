"""The pinned GNU Unifont 15.0.01 glyphs (shipped xz-compressed), read once and checked against their SHA-256.

Both glyph substrates draw from them: ``glyph`` (the reference pipeline) and ``glyph16``.
"""

from __future__ import annotations

import hashlib
import lzma
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

GLYPH_DIR = Path(__file__).parent / "glyphs"
UNIFONT_FILE = GLYPH_DIR / "unifont-15.0.01.hex.xz"
UNIFONT_SHA256 = "fe93c0df9a69e71df0fcf9e71af3adab3c85a393b1a3cae1eb32f69880fc1841"  # of the .hex text

CELL = 16  # Unifont glyphs are 16 pixels high (8 or 16 wide)


def unifont_path() -> Path:
    """The pinned Unifont hex file (``GROWLM_UNIFONT`` may point at another copy of the same file)."""
    env = os.environ.get("GROWLM_UNIFONT")
    path = Path(env) if env else UNIFONT_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"Unifont glyph source not found at {path}. It ships with growlm as {UNIFONT_FILE.name}; "
            "reinstall growlm, or install Debian's 'unifont' package (apt-get install unifont) and set "
            "GROWLM_UNIFONT=/usr/share/unifont/unifont.hex")
    return path


@lru_cache(maxsize=1)
def load_unifont() -> dict[int, np.ndarray]:
    """Parse the pinned Unifont hex file into {code point: uint8 bitmap [16, 8 or 16]}; verifies its hash."""
    path = unifont_path()
    raw = path.read_bytes()
    if path.suffix == ".xz":
        raw = lzma.decompress(raw)
    digest = hashlib.sha256(raw).hexdigest()
    if digest != UNIFONT_SHA256:
        raise ValueError(f"Unifont file {path} has sha256 {digest}, expected {UNIFONT_SHA256} "
                         "(GNU Unifont 15.0.01 unifont.hex); the glyph substrate is pinned to that file")
    glyphs: dict[int, np.ndarray] = {}
    for line in raw.decode("ascii").splitlines():
        cp_hex, bits = line.split(":")
        width = len(bits) * 4 // CELL  # 32 hex digits -> 8 px wide, 64 -> 16 px
        rows = np.frombuffer(bytes.fromhex(bits), dtype=np.uint8).reshape(CELL, width // 8)
        glyphs[int(cp_hex, 16)] = np.unpackbits(rows, axis=1)
    return glyphs
