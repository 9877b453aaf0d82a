"""The recipe's [substrate] section as a typed plan: defaults in one place, built into a Substrate."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from growlm.substrate import Substrate, SubstratePlan
from growlm.substrate.substrate import DEFAULT_KIND, DEFAULT_VOCAB


def test_a_table_that_leaves_keys_out_gets_the_defaults():
    assert SubstratePlan.from_dict({}) == SubstratePlan() == SubstratePlan(DEFAULT_KIND, DEFAULT_VOCAB)
    p = SubstratePlan.from_dict({"kind": "binary", "lift": "repeat"})
    assert (p.kind, p.vocab, p.options) == ("binary", DEFAULT_VOCAB, {"lift": "repeat"})


def test_build_is_the_substrate_the_table_names():
    p = SubstratePlan.from_dict({"kind": "random", "vocab": "compact", "seed": 3})
    got, want = p.build(16, cache=False), Substrate.build("random", "compact", 16, cache=False, seed=3)
    assert got.fingerprint == want.fingerprint and torch.equal(got.matrix, want.matrix)
    assert got.spec.options == {"seed": 3} and got.spec.d_model == 16


def test_to_dict_is_the_table_as_written():
    # the plan's fingerprint hashes this table: runs whose recipe omitted vocab must still resume
    assert SubstratePlan.from_dict({"kind": "binary"}).to_dict() == {"kind": "binary"}
    assert SubstratePlan().to_dict() == {"kind": DEFAULT_KIND, "vocab": DEFAULT_VOCAB}
    # a variant that changes an omitted key names it
    assert replace(SubstratePlan.from_dict({"kind": "binary"}), vocab="bmp65k").to_dict() == \
        {"kind": "binary", "vocab": "bmp65k"}


@pytest.mark.parametrize("table, message", [
    ({"kind": 3}, r"\[substrate\] kind must be a string, got 3"),
    ({"vocab": ["compact"]}, r"\[substrate\] vocab must be a string"),
    ({"kind": "glyph", "lift": "dct"}, r"\[substrate\] glyph substrate options are \['cell'\], got unknown \['lift'\]"),
    ({"kind": "binary", "lift": "sign"}, r"\[substrate\] unknown binary lift 'sign'"),
    ({"kind": "nope"}, r"\[substrate\] unknown substrate kind 'nope'"),
])
def test_bad_tables_are_refused_by_name(table, message):
    with pytest.raises(ValueError, match=message):
        SubstratePlan.from_dict(table)


def test_a_plan_cannot_change_after_validation():
    p = SubstratePlan.from_dict({"kind": "binary"})
    with pytest.raises(AttributeError):
        p.kind = "glyph"
