"""Reference-style glyph substrate (kind ``glyph``) and the random control: fidelity, determinism, golden hashes."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from growlm.substrate import Substrate, Vocabulary, glyph, glyph16
from growlm.substrate.substrate import SubstrateMismatchError
from growlm.substrate.vocab import Token

# Golden hashes of each kind's exact pre-image for one spec each: a change here is a change of the
# matrix, and must come with a bump of ALGORITHM_VERSION (so old fingerprints stop loading).
GOLDEN = {
    ("glyph", 256, ()): "81a35d049852bec0797d21fd23cce6d69692466b6d6c23f32ad6b20e16fb8ced",  # bitmap stack, cell 32
    ("glyph16", 256, ()): "3cb6519d350e",
    ("binary", 256, ()): "c57f8a9bb581",
    ("random", 256, ()): "2a6954790f72",
}
SMALL_GOLDEN = {32: "1afd64a57f776b75a034f186bcf43aa69a29c1eb9f8a646ca5e8ec6d922b1dc6",
                64: "627b842bccb566c7bc2968f148c421b8e534b6e42ef8caddfb3108ccbc726a37"}


@pytest.fixture(scope="module")
def small_vocab(tmp_path_factory) -> str:
    """A 300-token compact-layout vocabulary: ASCII, a few other scripts, n-grams of 2 and 3."""
    chars = [chr(i) for i in range(128)] + list("ЖжΩ中文שלום\u3000")
    ngrams = [" th", "ing", "Жж", "中文", "ab", " a", "xyz"]
    path = tmp_path_factory.mktemp("vocab") / "small.json"
    size = 16 + 128 + len(chars) + len(ngrams)
    path.write_text(json.dumps({"name": "small", "version": "1", "layout": "compact", "chars": chars,
                                "ngrams": ngrams, "size": size}, ensure_ascii=False), encoding="utf-8")
    return str(path)


def test_small_vocab_golden_bitmap_hash(small_vocab):
    """The pre-PCA bitmap stack of a small vocabulary, at both cell sizes, is fixed to the byte."""
    vocab = Vocabulary.load(small_vocab)
    assert glyph.bitmap_sha256(glyph.token_bitmaps(vocab, 32)).startswith(SMALL_GOLDEN[32])
    assert glyph.bitmap_sha256(glyph.token_bitmaps(vocab, 64)).startswith(SMALL_GOLDEN[64])
    s = Substrate.build("glyph", small_vocab, 64, cache=False)
    assert s.content_sha256.startswith(SMALL_GOLDEN[32])


@pytest.mark.parametrize("kind,d_model,opts", list(GOLDEN))
def test_golden_hash_per_spec(kind, d_model, opts):
    s = Substrate.build(kind, "compact", d_model, **dict(opts))
    assert s.content_sha256.startswith(GOLDEN[kind, d_model, opts])
    again = Substrate.build(kind, "compact", d_model, **dict(opts))  # from the cache: the hash travels with it
    assert again.content_sha256 == s.content_sha256 and torch.equal(again.matrix, s.matrix)


def test_glyph_bitmaps_hash_is_the_golden_one():
    bitmaps = glyph.token_bitmaps(Vocabulary.load("compact"), 32)
    assert bitmaps.dtype == np.uint8 and set(np.unique(bitmaps)) == {0, 1}
    assert glyph.bitmap_sha256(bitmaps) == GOLDEN["glyph", 256, ()]


def test_two_processes_build_identical_bytes(small_vocab):
    code = ("import hashlib; from growlm.substrate import Substrate; "
            f"s = Substrate.build('glyph', {small_vocab!r}, 96, cache=False); "
            "print(hashlib.sha256(s.matrix.numpy().tobytes()).hexdigest(), s.fingerprint)")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outs[0] == outs[1] and len(outs[0].split()) == 2


def test_glyph_has_rank_beyond_the_16px_cell():
    s = Substrate.build("glyph", "compact", 512)
    assert s.spec.options == {"cell": 32}
    assert s.rank() > 500  # glyph16 stops at 256
    ev = s.explained_variance()
    assert 0.85 < ev["256"] < ev["512"] < 1.0  # of the pixels' variance
    assert torch.allclose(s.matrix.norm(dim=1), torch.ones(s.vocab_size), atol=1e-5)


def test_specials_and_bytes_are_distinct_from_each_other_and_from_text():
    vocab = Vocabulary.load("compact")
    b = glyph.token_bitmaps(vocab, 32)
    marked = [i for i, t in enumerate(vocab.tokens) if t.kind in ("special", "byte")]
    rows = {b[i].tobytes() for i in marked}
    assert len(rows) == len(marked)
    text = {b[i].tobytes() for i, t in enumerate(vocab.tokens) if t.kind not in ("special", "byte")}
    assert not rows & text
    assert b[marked].mean() > 0.5 > b[[i for i in range(len(vocab)) if i not in set(marked)]].mean()  # inverted


def test_augmentation_matches_the_authors_pillow_steps():
    """Rotation, shift, noise, blur, threshold and resize as the author's notebook runs them with Pillow."""
    PIL = pytest.importorskip("PIL")
    import random

    from PIL import Image, ImageFilter

    def author(strip, text, cell):
        max_rot, max_shift, noise_simple, noise_other = glyph.AUGMENT[cell]
        simple = glyph.is_simple_script(text)
        random.seed(42)
        np.random.seed(42)
        rot, shift, noise = (max_rot, max_shift, noise_simple) if simple else (0, 0, noise_other)
        img = Image.fromarray(np.where(strip == 1, 0, 255).astype(np.uint8), "L")
        img = img.rotate(random.uniform(-rot, rot), expand=0, fillcolor=255)
        dx, dy = random.randint(-shift, shift), random.randint(-shift, shift)
        shifted = Image.new("L", img.size, color=255)
        shifted.paste(img, (dx, dy))
        a = np.array(shifted)
        a[np.random.rand(*a.shape) < noise] = 0
        img = Image.fromarray(a)
        if simple:
            img = img.filter(ImageFilter.GaussianBlur(radius=0.5))
        bw = img.point(lambda p: 0 if p < 128 else 255, mode="1")
        if bw.size != (cell, cell):
            bw = bw.resize((cell, cell), Image.BILINEAR)  # Pillow resizes a mode "1" image by nearest neighbour
        return (np.array(bw) == 0).astype(np.uint8).reshape(-1)

    assert PIL
    diffs = []
    for cell in (32, 64):
        for text in ["A", "g", "Жж", " th", "ing", "中", "中文", "שלום", "Ω", "xyz"]:
            ours = glyph.token_bitmap(text, cell)
            diffs.append(int((ours != author(glyph.draw(text, cell), text, cell)).sum()))
    # Pillow's nearest-neighbour affine runs in fixed point: a pixel on a sampling boundary may differ
    assert sum(diffs) <= 3 and diffs.count(0) >= len(diffs) - 2, diffs


def test_blur_then_threshold_changes_no_binary_pixel():
    pytest.importorskip("PIL")
    from PIL import Image, ImageFilter

    rng = np.random.default_rng(0)
    for density in (0.02, 0.3, 0.7):
        a = rng.random((32, 96)) < density
        img = Image.fromarray(np.where(a, 0, 255).astype(np.uint8), "L").filter(ImageFilter.GaussianBlur(0.5))
        assert np.array_equal(np.array(img) < 128, a)


def test_every_long_bvv241_abs_token_is_drawn():
    vocab = Vocabulary.load("bvv241-abs")
    long = [t for t in vocab.tokens if t.kind == "ngram" and len(t.text) >= 12]
    assert max(len(t.text) for t in long) == 72
    drawer = glyph._Drawer(32)
    cells = {drawer.bitmap(t.text).tobytes() for t in long}
    assert len(cells) > 0.9 * len(long)
    assert glyph.token_bitmap("x", 64).shape == (64 * 64,)
    code = glyph.hex_code(drawer.glyphs, 0x1FFFF, 32)  # a 5-digit id wraps to a second row
    assert code.shape[0] > 16 and code.shape[1] <= 32


def test_glyph16_draws_tokens_wider_than_255_pixels():
    class Tiny:
        tokens = (Token("ngram", "a" * 32), Token("ngram", "a" * 64), Token("ngram", "ab" * 36))

        def __len__(self) -> int:
            return len(self.tokens)

    images = glyph16.token_images(Tiny())  # used to crash: the cache key held the width in one byte
    assert images.shape == (3, 256) and not np.array_equal(images[0], images[2])


def test_random_substrate_is_a_seeded_unit_row_gaussian():
    a = Substrate.build("random", "compact", 64, cache=False)
    b = Substrate.build("random", "compact", 64, seed=1, cache=False)
    assert a.spec.options == {"seed": 0}
    assert torch.equal(a.matrix, Substrate.build("random", "compact", 64, cache=False).matrix)
    assert not torch.equal(a.matrix, b.matrix) and a.fingerprint != b.fingerprint
    assert torch.allclose(a.matrix.norm(dim=1), torch.ones(a.vocab_size), atol=1e-5)
    draws = np.random.RandomState(0).standard_normal((a.vocab_size, 64))
    assert torch.allclose(a.matrix, torch.from_numpy(draws / np.linalg.norm(draws, axis=1, keepdims=True)).float())
    assert a.rank() == 64
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        Substrate.build("random", "compact", 64, seed=-1)


def test_same_fingerprint_different_content_is_refused_on_load():
    from growlm.model import Config, GrowLM

    sub = Substrate.build("glyph", "compact", 32)
    model = GrowLM(Config.from_preset("tiny", d_model=32, n_head=2, n_layer=1), sub)
    meta = model.save_meta()
    assert meta["substrate_content_sha256"] == sub.content_sha256
    state = model.state_dict()
    GrowLM.from_saved("m", meta, state, sub)  # loads
    meta["substrate_content_sha256"] = hashlib.sha256(b"another algorithm").hexdigest()
    with pytest.raises(SubstrateMismatchError, match="changed without a version bump"):
        GrowLM.from_saved("m", meta, state, sub)
    del meta["substrate_content_sha256"]  # models saved before golden hashes still load
    GrowLM.from_saved("m", meta, state, sub)


def test_fingerprint_covers_the_algorithm_version(monkeypatch):
    from growlm.substrate import substrate as mod

    a = Substrate.build("glyph", "compact", 32, cache=False).fingerprint
    monkeypatch.setitem(mod.ALGORITHM_VERSION, "glyph", "glyph-ref-999")
    assert Substrate.build("glyph", "compact", 32, cache=False).fingerprint != a
