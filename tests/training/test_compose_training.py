"""Gradients reach every trainable parameter of every composition method (the fine-tuning path)."""

from __future__ import annotations

import pytest
import torch

from growlm.model import Config, GrowLM
from growlm.model.composition import ComposedLM
from growlm.substrate import Substrate

TRAINED = [("average", True), ("prob", True), ("adapter", False), ("adapter", True), ("router", False),
           ("router", True)]


@pytest.fixture(scope="module")
def glyph() -> Substrate:
    return Substrate.build("glyph", "compact", 32)


def _expert(sub: Substrate, seed: int, n_layer: int) -> GrowLM:
    torch.manual_seed(seed)
    return GrowLM(Config.from_preset("tiny", vocab_size=sub.vocab_size, d_model=sub.d_model, n_layer=n_layer), sub)


@pytest.mark.parametrize("method,train_heads", TRAINED)
def test_every_trainable_parameter_gets_a_gradient(glyph, method, train_heads):
    model = ComposedLM([_expert(glyph, 1, 2), _expert(glyph, 2, 1)], method, train_heads=train_heads)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    frozen = [p for n, p in model.named_parameters() if not p.requires_grad]
    assert names and all(not n.startswith("experts.") or ".head." in n for n in names)
    assert train_heads == any(".head." in n for n in names)
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    reached: set[str] = set()
    # two steps: zero-initialised gates (the adapter's, the router's weight) pass no gradient upstream until they
    # have moved once, as a LoRA B matrix does
    for _ in range(2):
        x = torch.randint(0, glyph.vocab_size, (2, 9), generator=g)
        loss = model(x[:, :-1], x[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        reached |= {n for n, p in model.named_parameters()
                    if p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0}
        assert all(p.grad is None for p in frozen)
        opt.step()
    assert reached == set(names)
