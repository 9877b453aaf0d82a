"""The model: shapes, causality, the frozen embedding, growth inits, generation, the chunked loss."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from growlm import Config, GrowLM, Substrate
from growlm.cli import main as cli_main
from growlm.model.losses import chunked_cross_entropy
from growlm.training.plan import parameter_budget


@pytest.fixture(scope="module")
def sub():
    return Substrate.build("glyph", "compact", 64)


@pytest.fixture(params=["paper", "llama"])
def model(request, sub):
    torch.manual_seed(0)
    cfg = Config.from_preset(request.param, vocab_size=16384, d_model=64, n_layer=2, n_head=4, block_size=32)
    return GrowLM(cfg, sub)


def test_forward_shapes(model):
    idx = torch.randint(0, 16384, (3, 11))
    assert model(idx).shape == (3, 11, 16384)
    assert model.hidden_states(idx).shape == (3, 11, 64)
    assert model(idx, idx).shape == ()


def test_causality(model):
    idx = torch.randint(0, 16384, (1, 12))
    other = idx.clone()
    other[0, 7:] = torch.randint(0, 16384, (5,))
    a, b = model(idx), model(other)
    assert torch.allclose(a[:, :7], b[:, :7], atol=1e-6)
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_embedding_is_frozen_and_in_no_optimizer(model, sub):
    from growlm.training.plan import TrainSpec
    from growlm.training.run import build_optimizer

    assert "embedding" not in dict(model.named_parameters())
    assert "embedding" not in model.state_dict()
    opt = build_optimizer(model, TrainSpec(), torch.device("cpu"))
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert id(model.embedding) not in in_opt
    idx = torch.randint(0, 16384, (2, 8))
    model(idx, idx).backward()
    assert model.embedding.grad is None
    assert torch.equal(model.embedding, sub.matrix)


def test_frozen_blocks_build_no_graph_and_get_no_grad(model):
    model.grow(1)
    model.set_trainable([2])
    assert model.first_trainable_block() == 2
    idx = torch.randint(0, 16384, (2, 8))
    model(idx, idx).backward()
    assert all(p.grad is None for b in model.blocks[:2] for p in b.parameters())
    assert all(p.grad is not None for p in model.blocks[2].parameters())


def test_identity_growth_keeps_the_function(model):
    idx = torch.randint(0, 16384, (2, 9))
    before = model(idx)
    model.grow(2, init="identity")
    assert len(model.blocks) == 4 and model.cfg.n_layer == 4
    assert torch.allclose(model(idx), before, atol=1e-5)
    assert [n for n, _ in model.named_parameters()][0].startswith("blocks.0.")


def test_copy_growth_copies_the_top_block(model):
    model.grow(1, init="copy")
    a, b = model.blocks[-2].state_dict(), model.blocks[-1].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_kv_cache_generation_equals_no_cache(model):
    model.eval()
    idx = torch.randint(0, 16384, (2, 5))
    greedy = model.generate(idx, 12, temperature=0)
    assert torch.equal(greedy, model.generate(idx, 12, temperature=0, use_cache=False))
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    s1 = model.generate(idx, 8, temperature=0.9, top_k=50, top_p=0.9, generator=g1)
    s2 = model.generate(idx, 8, temperature=0.9, top_k=50, top_p=0.9, generator=g2, use_cache=False)
    assert torch.equal(s1, s2)


@pytest.mark.parametrize("chunk", [None, 5])
def test_chunked_loss_matches_cross_entropy(chunk):
    torch.manual_seed(0)
    h = torch.randn(13, 16, requires_grad=True)
    w = torch.randn(300, 16, requires_grad=True)
    b = torch.randn(300, requires_grad=True)
    t = torch.randint(0, 300, (13,))
    t[4] = -100
    loss = chunked_cross_entropy(h, w, b, t, chunk=chunk)
    grads = torch.autograd.grad(loss, (h, w, b))
    ref = F.cross_entropy(h @ w.t() + b, t)
    ref_grads = torch.autograd.grad(ref, (h, w, b))
    assert torch.allclose(loss, ref, atol=1e-5)
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, atol=1e-5)


def test_bf16_autocast_loss_is_close(model):
    idx = torch.randint(0, 16384, (2, 16))
    ref = model(idx, idx)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(idx, idx)
    assert abs(float(low.detach()) - float(ref.detach())) < 0.05 * float(ref.detach())


def test_config_errors_name_the_valid_choices(sub):
    with pytest.raises(ValueError, match="valid presets are"):
        Config.from_preset("gpt5")
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['n_layers'\]; valid keys are"):
        Config.from_preset("tiny", n_layers=3)
    with pytest.raises(ValueError, match="not divisible by n_head=5"):
        Config.from_preset("tiny", d_model=64, n_head=5)
    with pytest.raises(ValueError, match="substrate is"):
        GrowLM(Config.from_preset("tiny", d_model=32), sub)


def test_paper_parameter_counts_match_v3():
    cfg = Config.from_preset("paper", d_model=1024, n_layer=9, vocab_size=65536)
    b = parameter_budget(cfg, train_newest=3)
    for key, paper in [("fully_trainable", 247.6), ("frozen_interface", 180.5), ("grown_active", 105.0)]:
        assert round(b[key] / 1e6, 1) == paper, (key, b[key])  # the paper's counts, at its printed precision


def test_params_cli(capsys):
    assert cli_main(["params", "--preset", "paper", "--d-model", "1024", "--n-layer", "9", "--vocab", "bmp65k",
                     "--train-newest", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["grown_active"] == 104_957_952 and out["frozen_interface"] == 180_523_008
    assert out["fully_trainable"] == 247_631_872


@pytest.mark.parametrize("init", ["substrate", "random"])
def test_trainable_embedding_baseline_updates_the_embedding(sub, init):
    from growlm.training.plan import TrainSpec
    from growlm.training.run import build_optimizer

    torch.manual_seed(0)
    cfg = Config.from_preset("tiny", vocab_size=16384, d_model=64, n_layer=1, n_head=4, block_size=32,
                             trainable_embedding=True, embedding_init=init)
    m = GrowLM(cfg, sub)
    assert isinstance(m.embedding, torch.nn.Parameter) and m.cfg.embedding_init == init
    start = m.embedding.detach().clone()
    if init == "substrate":
        assert torch.equal(start, sub.matrix)
    else:  # the classical baseline: a GPT-2-style random table, nothing of the substrate
        assert not torch.allclose(start, sub.matrix, atol=1e-3)
        assert abs(float(start.std()) - cfg.init_std) < 0.1 * cfg.init_std
    opt = build_optimizer(m, TrainSpec(lr=1e-2), torch.device("cpu"))
    assert id(m.embedding) in {id(p) for g in opt.param_groups for p in g["params"]}
    idx = torch.randint(0, 200, (2, 16))
    m(idx[:, :-1], idx[:, 1:]).backward()
    assert m.embedding.grad is not None and float(m.embedding.grad.abs().sum()) > 0
    opt.step()
    changed = (m.embedding.detach() != start).any(dim=1)
    assert changed[idx[:, :-1].unique()].all()  # every row the batch read was updated
    assert "embedding" in m.state_dict()  # a trained embedding is saved with the weights


def test_random_embedding_init_needs_a_trainable_embedding():
    with pytest.raises(ValueError, match="needs trainable_embedding = true"):
        Config.from_preset("tiny", embedding_init="random")
    with pytest.raises(ValueError, match="embedding_init must be 'substrate' or 'random'"):
        Config.from_preset("tiny", trainable_embedding=True, embedding_init="zeros")


def test_depth_is_the_number_of_blocks(sub):
    cfg = Config.from_preset("tiny", vocab_size=16384, d_model=64, n_layer=1, n_head=4)
    m = GrowLM(cfg, sub)
    m.grow(2)
    assert m.cfg.n_layer == len(m.blocks) == 3 and cfg.n_layer == 1  # the caller's config is not touched
    m.cfg.n_layer = 7  # a copy: the model's depth cannot drift from its blocks
    assert m.cfg.n_layer == 3
    with pytest.raises(AttributeError):
        m.cfg = cfg


def test_residual_write_init_scales_with_init_depth(sub):
    def proj_std(init_depth: int, depth_before: int) -> float:
        torch.manual_seed(0)
        cfg = Config.from_preset("tiny", vocab_size=16384, d_model=64, n_layer=depth_before, n_head=4,
                                 mlp_hidden=4096, init_depth=init_depth)
        m = GrowLM(cfg, sub)
        return float(m.new_block().mlp.proj.weight.detach().std())

    # default: the depth after insertion (here 2); init_depth: the depth the plan will reach (here 8)
    assert proj_std(0, 1) == pytest.approx(0.02 / 2, rel=0.05)
    assert proj_std(8, 1) == pytest.approx(0.02 / 4, rel=0.05)
    assert proj_std(2, 5) == pytest.approx(0.02 / math.sqrt(12), rel=0.05)  # grown past init_depth: actual depth


@pytest.mark.parametrize("block", ["paper", "llama"])
def test_activation_checkpointing_keeps_loss_and_gradients(sub, block):
    """Recomputing the trained blocks in backward changes nothing: same loss, same gradients (dropout and a LoRA
    adapter included, a frozen block below), and the trained blocks really do run their forward twice."""
    from growlm.model import lora

    torch.manual_seed(0)
    cfg = Config.from_preset(block, vocab_size=16384, d_model=64, n_layer=3, n_head=4, block_size=32, dropout=0.1)
    model = GrowLM(cfg, sub)
    model.set_trainable([1, 2])
    lora.attach(model.blocks[1].attn.qkv, rank=4, alpha=8)
    torch.nn.init.normal_(model.blocks[1].attn.qkv.lora_B)  # a live adapter, not B = 0
    calls = [0, 0, 0]
    for i, b in enumerate(model.blocks):
        # a pre-hook: the recompute stops as soon as backward has its tensors, before forward hooks would run
        b.register_forward_pre_hook(lambda *a, i=i: calls.__setitem__(i, calls[i] + 1))
    idx = torch.randint(0, 16384, (2, 16))
    results = []
    for recompute in (False, True):
        model.activation_checkpointing = recompute
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # the same dropout masks in both passes
        loss = model(idx, idx)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert calls == [2, 3, 3]  # block 0 is frozen (no graph, nothing to recompute); 1 and 2 ran again in backward
    assert torch.equal(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys() and "blocks.1.attn.qkv.lora_A" in grads_a
    for n in grads_a:
        torch.testing.assert_close(grads_b[n], grads_a[n], rtol=0, atol=1e-7, msg=n)
    with torch.no_grad():  # inference never recomputes
        model(idx)
    assert calls == [3, 4, 4]


def test_rope_tables_regrow_past_block_size(sub):
    torch.manual_seed(0)
    short = GrowLM(Config.from_preset("tiny", vocab_size=sub.vocab_size, d_model=sub.d_model, n_layer=2,
                                      block_size=8), sub).eval()
    long = GrowLM(Config.from_preset("tiny", vocab_size=sub.vocab_size, d_model=sub.d_model, n_layer=2,
                                     block_size=64), sub).eval()
    long.load_state_dict(short.state_dict())
    idx = torch.randint(0, sub.vocab_size, (1, 40))
    with torch.no_grad():
        a, b = short(idx), long(idx)  # 40 positions: past the 8 the short model's tables were built for
    assert short.rope_cos.shape[0] >= 40
    assert torch.allclose(a, b, atol=1e-5)
    with torch.no_grad():  # and incremental decoding past the old end uses the regrown tables too
        out = short.generate(idx[:, :6], 12, temperature=0)
        ref = long.generate(idx[:, :6], 12, temperature=0)
    assert torch.equal(out, ref)
