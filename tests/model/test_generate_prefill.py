"""Generation runs the LM head on the last position only: same tokens, no [B, T, V] logits in the prefill."""

from __future__ import annotations

import pytest
import torch

from growlm.model import Config, GrowLM
from growlm.model.model import generate, sample_next
from growlm.model.sampling import stream
from growlm.substrate import Substrate, Tokenizer

V = 16384


@pytest.fixture(scope="module")
def model() -> GrowLM:
    torch.manual_seed(0)
    sub = Substrate.build("glyph", "compact", 32)
    return GrowLM(Config.from_preset("tiny", vocab_size=sub.vocab_size, d_model=32, n_layer=2), sub).eval()


@torch.no_grad()
def _full_logits_generate(model, idx, n, temperature, top_k, generator):
    """Generation as it was: the whole [B, T, V] logits of each call, then the last position."""
    caches, out, step_in, pos = model.new_caches(idx.shape[0], idx.shape[1] + n), idx, idx, 0
    for _ in range(n):
        nxt = sample_next(model(step_in, caches=caches, pos=pos)[:, -1, :], temperature, top_k, None, generator)
        out = torch.cat([out, nxt], dim=1)
        pos, step_in = out.shape[1] - 1, nxt
    return out


def _head_shapes(model):
    shapes = []
    handle = model.head.register_forward_hook(lambda m, inp, out: shapes.append(tuple(out.shape)))
    return shapes, handle


@pytest.mark.parametrize("temperature, top_k", [(0.0, None), (0.9, 40)])
def test_same_tokens_as_full_logits(model, temperature, top_k):
    idx = torch.randint(3, V, (3, 11), generator=torch.Generator().manual_seed(1))
    old = _full_logits_generate(model, idx, 16, temperature, top_k, torch.Generator().manual_seed(7))
    shapes, handle = _head_shapes(model)
    try:
        new = generate(model, idx, 16, temperature, top_k, generator=torch.Generator().manual_seed(7))
        uncached = generate(model, idx, 16, temperature, top_k, use_cache=False,
                            generator=torch.Generator().manual_seed(7))
    finally:
        handle.remove()
    assert torch.equal(new, old) and torch.equal(uncached, old)
    assert shapes and all(s == (3, V) for s in shapes)  # the prefill (11 positions) too: never [B, T, V]


def test_last_logits_equal_the_last_position(model):
    idx = torch.randint(3, V, (2, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(model.last_logits(idx), model(idx)[:, -1, :], rtol=1e-5, atol=1e-5)


def test_stream_prefill_uses_the_last_position(model):
    tok = Tokenizer.load("compact")
    prompt = "The history of the river and the town"
    shapes, handle = _head_shapes(model)
    try:
        text = "".join(stream(model, tok, prompt, max_tokens=8, temperature=0))
    finally:
        handle.remove()
    ids = torch.tensor([tok.encode(prompt)])
    assert ids.shape[1] > 1 and shapes[0] == (1, V) and all(s == (1, V) for s in shapes)
    expected = _full_logits_generate(model, ids, 8, 0.0, None, None)[0, ids.shape[1]:].tolist()
    if tok.eos_id in expected:  # the stream ends there
        expected = expected[:expected.index(tok.eos_id)]
    assert text == tok.decode(expected)
