"""Binary substrate: every id stays distinct after the model's first norm, rank exactly k."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from growlm.cli import main as cli_main
from growlm.substrate import Substrate
from growlm.substrate.binary import code_bits, id_codes


def _distinct_after(norm, m: torch.Tensor) -> int:
    """Number of distinct rows of norm(m), rounded to 1e-4."""
    out = norm(m, (m.shape[1],), eps=1e-5)
    return torch.unique(torch.round(out / 1e-4).to(torch.int32), dim=0).shape[0]


@pytest.mark.parametrize("vocab,d_model", [("bvv241-2-3", 128), ("bmp65k", 64), ("compact", 64),
                                           ("bvv241-abs", 64)])
def test_default_lift_keeps_every_id_distinct_after_both_norms(vocab, d_model):
    s = Substrate.build("binary", vocab, d_model, cache=False)
    assert s.spec.options == {"lift": "balanced"}  # the default is written into the spec
    V, k = s.vocab_size, code_bits(s.vocab_size)
    assert s.rank() == k
    for norm in (F.layer_norm, F.rms_norm):
        assert _distinct_after(norm, s.matrix) == V, norm.__name__
    # rows sum to zero and share one norm: LayerNorm's centring changes nothing
    assert s.matrix.sum(dim=1).abs().max() < 1e-5
    assert torch.allclose(s.matrix.norm(dim=1), torch.ones(V), atol=1e-6)


def test_the_old_dct_lift_lost_the_top_bit_and_the_new_ones_do_not():
    # the bug of issue 9: DCT row 0 is constant, so id i and i ^ 0x8000 met after LayerNorm
    from growlm.substrate.binary import dct_rows

    codes = id_codes(65536, 16).double() * 2 - 1
    old = (codes @ dct_rows(range(16), 64) / 4).float()
    a, b = ord("A"), ord("A") ^ 0x8000
    ln = F.layer_norm(old[[a, b]], (64,))
    assert torch.allclose(ln[0], ln[1], atol=1e-5)
    for lift in ("balanced", "dct"):
        m = Substrate.build("binary", "bmp65k", 64, lift=lift, cache=False).matrix
        ln = F.layer_norm(m[[a, b]], (64,))
        assert (ln[0] - ln[1]).abs().max() > 0.5, lift


@pytest.mark.parametrize("vocab", ["bmp65k", "compact"])
def test_author_repeat_lift_collides_exactly_on_the_two_constant_codes(vocab):
    s = Substrate.build("binary", vocab, 64, lift="repeat", cache=False)
    V, k = s.vocab_size, code_bits(s.vocab_size)
    assert s.rank() == k
    assert set(s.matrix.unique().tolist()) == {0.0, 1.0}  # the author's 0/1 values, repeated
    assert torch.equal(s.matrix[:, :64 // k * 1], s.matrix[:, :1].expand(-1, 64 // k))  # blockwise repetition
    assert _distinct_after(F.layer_norm, s.matrix) == V - 1  # ids 0 and V-1 both become the zero vector
    ln = F.layer_norm(s.matrix[[0, V - 1]], (64,), eps=1e-5)
    assert ln.abs().max() == 0
    assert _distinct_after(F.rms_norm, s.matrix) == V  # no centring: nothing collides


def test_dct_lift_keeps_ids_distinct_on_compact():
    s = Substrate.build("binary", "compact", 64, lift="dct", cache=False)
    assert s.rank() == 14
    assert _distinct_after(F.layer_norm, s.matrix) == s.vocab_size


def test_lift_is_part_of_spec_and_fingerprint_and_errors_name_it():
    fps = {Substrate.build("binary", "compact", 64, lift=lift, cache=False).fingerprint
           for lift in ("balanced", "repeat", "dct")}
    assert len(fps) == 3
    assert Substrate.build("binary", "compact", 64, cache=False).fingerprint == \
        Substrate.build("binary", "compact", 64, lift="balanced", cache=False).fingerprint
    with pytest.raises(ValueError, match=r"unknown binary lift 'tile'; valid lifts are \['balanced', 'repeat'"):
        Substrate.build("binary", "compact", 64, lift="tile", cache=False)
    with pytest.raises(ValueError, match="needs d_model >= 28 for 14 bits"):
        Substrate.build("binary", "compact", 20, cache=False)
    with pytest.raises(ValueError, match=r"options are \['bits', 'lift'\], got unknown \['lifts'\]"):
        Substrate.build("binary", "compact", 64, lifts="dct", cache=False)


def test_old_binary_spec_no_longer_matches_its_fingerprint():
    """A checkpoint of the DCT version recorded the fingerprint of the old algorithm: it must not load."""
    from growlm.substrate.substrate import SubstrateMismatchError

    s = Substrate.from_spec({"kind": "binary", "vocab": "compact", "d_model": 64, "options": {}}, cache=False)
    old = "binary-dct-1"
    import hashlib

    from growlm.substrate import Vocabulary

    voc = Vocabulary.load("compact")
    payload = {"spec": s.spec.to_dict(), "vocab_sha256": voc.sha256, "source_sha256": "id-bits", "algorithm": old}
    old_fp = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    with pytest.raises(SubstrateMismatchError, match="substrate mismatch"):
        s.check_same(old_fp)


def test_params_reproduce_the_papers_16_layer_binary_count(capsys):
    assert cli_main(["params", "--preset", "paper", "--d-model", "1024", "--n-layer", "16", "--n-head", "32",
                     "--vocab", "bvv241-2-3", "--substrate", "binary"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["substrate_table"] == 65536 * 16  # the author's V x 16 code table
    assert out["author_total"] == 269_730_816  # the paper's 269.7M
    assert round(out["author_total"] / 1e6, 1) == 269.7
