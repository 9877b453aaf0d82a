"""Substrates of every kind: determinism, rank, fingerprints, golden hashes, errors."""

from __future__ import annotations

import pytest
import torch

from growlm.substrate import Substrate
from growlm.substrate.binary import code_bits


def test_glyph_built_twice_gives_same_bytes_and_fingerprint():
    a = Substrate.build("glyph", "compact", 64, cache=False)
    b = Substrate.build("glyph", "compact", 64, cache=False)
    assert a.fingerprint == b.fingerprint
    assert torch.equal(a.matrix, b.matrix)


def test_cache_returns_the_same_matrix():
    a = Substrate.build("glyph", "compact", 48)
    b = Substrate.build("glyph", "compact", 48)
    assert torch.equal(a.matrix, b.matrix) and a.fingerprint == b.fingerprint


@pytest.mark.parametrize("kind", ["glyph", "glyph16"])
def test_glyph_rows_are_unit_norm_and_specials_distinct(kind):
    from growlm.substrate import Vocabulary

    s = Substrate.build(kind, "compact", 256)
    norms = s.matrix.norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    vocab = Vocabulary.load("compact")
    marked = [i for i, t in enumerate(vocab.tokens) if t.kind in ("special", "byte")]
    others = torch.tensor([i for i in range(len(vocab)) if i not in set(marked)])
    m = s.matrix[marked]
    assert torch.unique(m, dim=0).shape[0] == len(marked)
    # no special/byte vector coincides with a text token's vector
    assert torch.cdist(m, s.matrix[others]).min() > 1e-3
    # homoglyphs (Latin A / Cyrillic A) share a row; the info reports how many rows are shared
    assert 0 < s.info()["identical_rows"] < 0.05 * len(vocab)


def test_glyph16_rank_is_bounded_by_the_cell_and_extra_columns_are_zero():
    s = Substrate.build("glyph16", "compact", 320)
    assert s.rank() <= 256
    assert torch.count_nonzero(s.matrix[:, 256:]) == 0


@pytest.mark.parametrize("vocab,d_model", [("compact", 64), ("bmp65k", 64)])
def test_binary_rank_is_at_most_k(vocab, d_model):
    s = Substrate.build("binary", vocab, d_model, cache=False)
    k = code_bits(s.vocab_size)
    assert k == (14 if vocab == "compact" else 16)
    assert s.rank() == k
    assert torch.unique(s.matrix, dim=0).shape[0] == s.vocab_size


def test_fingerprint_depends_on_spec_only():
    from growlm.substrate import SubstrateSpec, Vocabulary
    from growlm.substrate.substrate import compute_fingerprint, resolve_options

    voc = Vocabulary.load("compact")

    def fp(kind, d, **opts):
        spec = SubstrateSpec(kind, "compact", d, voc.version, resolve_options(kind, opts, d))
        return compute_fingerprint(spec, voc)

    kinds = ("glyph", "glyph16", "binary", "random")
    fps = {fp(k, d) for k in kinds for d in (32, 64)} | {fp("random", 32, seed=1), fp("glyph", 32, cell=64)}
    assert len(fps) == 10
    assert fp("random", 32) == fp("random", 32, seed=0)  # defaults are written into the spec
    assert Substrate.build("random", "compact", 32, cache=False).fingerprint == fp("random", 32)


def test_fingerprint_hashes_spec_vocabulary_source_and_algorithm():
    """Every field that defines the matrix is in the fingerprint: another vocabulary content, glyph source or
    algorithm version with the same spec gives another fingerprint."""
    import hashlib
    import json
    from types import SimpleNamespace

    from growlm.substrate import SubstrateSpec, Vocabulary
    from growlm.substrate import substrate as S

    voc = Vocabulary.load("compact")
    spec = SubstrateSpec("glyph", "compact", 32, voc.version, S.resolve_options("glyph", {}, 32))
    payload = {"spec": spec.to_dict(), "vocab_sha256": voc.sha256, "source_sha256": S.SOURCE["glyph"],
               "algorithm": S.ALGORITHM_VERSION["glyph"]}
    by_hand = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    assert S.compute_fingerprint(spec, voc) == by_hand == Substrate.build("glyph", "compact", 32).fingerprint
    assert S.compute_fingerprint(spec, SimpleNamespace(sha256="0" * 64)) != by_hand  # same spec, other content


@pytest.mark.parametrize("kind", ["glyph", "glyph16"])
def test_errors_are_clear(monkeypatch, tmp_path, kind):
    with pytest.raises(ValueError, match=r"unknown substrate kind 'noise'; valid kinds are \['glyph', 'glyph16'"):
        Substrate.build("noise", "compact", 64)
    with pytest.raises(ValueError, match="needs d_model >= 28"):
        Substrate.build("binary", "compact", 8, cache=False)
    from growlm.substrate import glyph, unifont

    unifont.load_unifont.cache_clear()
    glyph._ANALYSED.clear()
    monkeypatch.setenv("GROWLM_UNIFONT", str(tmp_path / "missing.hex"))
    try:
        with pytest.raises(FileNotFoundError, match="apt-get install unifont"):
            Substrate.build(kind, "compact", 40, cache=False)
    finally:
        monkeypatch.delenv("GROWLM_UNIFONT")
        unifont.load_unifont.cache_clear()


def test_blank_glyphs_are_drawn_as_their_code_so_space_runs_differ():
    from growlm.substrate import Tokenizer

    s = Substrate.build("glyph", "compact", 64)
    tok = Tokenizer.load("compact")
    ids = [tok.encode(run)[0] for run in (" ", "  ", "   ", "\u3000")]
    assert len(set(ids)) == 4  # each run is one token...
    rows = s.matrix[ids]
    assert torch.cdist(rows, rows).fill_diagonal_(1).min() > 1e-3  # ...with its own vector
