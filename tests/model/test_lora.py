"""LoRA with PEFT's semantics on growlm's linears."""

from __future__ import annotations

import pytest
import torch

from growlm import Config, GrowLM, Substrate
from growlm.model import lora


@pytest.fixture
def model():
    torch.manual_seed(0)
    return GrowLM(Config.from_preset("tiny", d_model=32, n_head=2, n_layer=2), Substrate.build("glyph", "compact", 32))


def test_attached_adapter_starts_as_identity_and_keeps_names(model):
    idx = torch.randint(0, 16384, (2, 8))
    before = model(idx)
    names = set(model.state_dict())
    n = lora.attach_to_blocks(model, lora.LoRASpec(rank=4, alpha=8), [0, 1])
    # rank x (in + out) on each projection: qkv 32->96, attn.proj 32->32, mlp.fc 32->128, mlp.proj 128->32
    assert n == 2 * 4 * ((32 + 96) + (32 + 32) + (32 + 128) + (128 + 32))
    assert torch.allclose(model(idx), before)
    after = set(model.state_dict())
    assert names < after and all(".lora_" in k for k in after - names)


def test_merge_equals_adapted_forward_and_unmerge_restores(model):
    idx = torch.randint(0, 16384, (2, 8))
    original = {k: v.clone() for k, v in model.state_dict().items()}
    spec = lora.LoRASpec(rank=4, alpha=8, targets=["qkv", "fc"])
    lora.attach_to_blocks(model, spec, [0])
    lin = model.blocks[0].attn.qkv
    with torch.no_grad():
        for m in lora.adapted_linears(model):
            m.lora_B.normal_()
    assert lin.lora_scaling == spec.alpha / spec.rank
    adapted = model(idx)
    A, B = lin.lora_A.detach().clone(), lin.lora_B.detach().clone()
    assert lora.merge_all(model) == 2
    assert not lora.adapted_linears(model)
    assert torch.allclose(model(idx), adapted, atol=1e-5)
    lora.unmerge(lin, A, B, spec.scaling)
    assert torch.allclose(lin.weight, original["blocks.0.attn.qkv.weight"], atol=1e-6)


def test_safe_merge_refuses_non_finite(model):
    lora.attach_to_blocks(model, lora.LoRASpec(rank=2, alpha=2), [0])
    w = model.blocks[0].attn.qkv.weight.clone()
    with torch.no_grad():
        model.blocks[0].attn.qkv.lora_B.fill_(float("inf"))
    with pytest.raises(ValueError, match="non-finite"):
        lora.merge_all(model)
    assert torch.equal(model.blocks[0].attn.qkv.weight, w)
    assert lora.adapted_linears(model)  # nothing was merged or removed


def test_spec_errors():
    with pytest.raises(ValueError, match="valid targets"):
        lora.LoRASpec(targets=["q_proj"])
    with pytest.raises(ValueError, match="rank must be positive"):
        lora.LoRASpec(rank=0)
