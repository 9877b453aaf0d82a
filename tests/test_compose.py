"""Tests for growlm.compose: composing experts that share a substrate."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
import torch.nn.functional as F

from growlm.checkpoint import load_model, save_model
from growlm.compose import METHODS, ComposedLM, LogitAdapter, compose, compose_from_runs, normalise_weights
from growlm.model import Config, GrowLM
from growlm.substrate import Substrate, SubstrateMismatchError

ATOL = 1e-5


@pytest.fixture(scope="module")
def glyph() -> Substrate:
    return Substrate.build("glyph", "compact", 64)


def expert(sub: Substrate, seed: int, n_layer: int = 2, **over) -> GrowLM:
    torch.manual_seed(seed)
    cfg = Config.from_preset("tiny", vocab_size=sub.vocab_size, d_model=sub.d_model, n_layer=n_layer, **over)
    return GrowLM(cfg, sub).eval()


@pytest.fixture()
def pair(glyph):
    return [expert(glyph, 1, 2), expert(glyph, 2, 1)]  # different depths


def batch(vocab: int, B: int = 2, T: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (B, T + 1), generator=g)
    return x[:, :-1].clone(), x[:, 1:].clone()


def test_average_of_two_copies_reproduces_the_model(glyph):
    a = expert(glyph, 1)
    b = expert(glyph, 1)
    x, _ = batch(glyph.vocab_size)
    with torch.no_grad():
        ref = a(x)
        out = compose([a, b])(x)
    assert torch.allclose(out, ref, atol=1e-6)


def test_weights_normalised_and_one_hot_reproduces_expert(pair):
    assert normalise_weights([2, 6], 2) == [0.25, 0.75]
    assert normalise_weights(None, 4) == [0.25] * 4
    for bad in ([1, -1], [0, 0], [1], [1, float("nan")]):
        with pytest.raises(ValueError, match="weight"):
            normalise_weights(bad, 2)
    x, _ = batch(pair[0].cfg.vocab_size)
    with torch.no_grad():
        for k in range(2):
            w = [1.0 if i == k else 0.0 for i in range(2)]
            ref = pair[k](x)
            for method in ("average", "adapter", "router"):
                assert torch.allclose(compose(pair, method, w)(x), ref, atol=ATOL), method
            # prob gives log-probabilities: the expert's distribution exactly
            assert torch.allclose(compose(pair, "prob", w)(x), ref.log_softmax(-1), atol=ATOL)


def test_experts_of_different_depth_compose(pair):
    x, _ = batch(pair[0].cfg.vocab_size)
    m = compose(pair, weights=[0.3, 0.7])
    assert sum(m.weights) == pytest.approx(1.0)
    with torch.no_grad():
        ref = 0.3 * pair[0](x) + 0.7 * pair[1](x)
        assert torch.allclose(m(x), ref, atol=ATOL)
        p = 0.3 * pair[0](x).softmax(-1) + 0.7 * pair[1](x).softmax(-1)
        assert torch.allclose(compose(pair, "prob", [0.3, 0.7])(x), p.log(), atol=ATOL)


def test_mismatched_substrates_refused(glyph):
    binary = Substrate.build("binary", "compact", 64)
    a, b = expert(glyph, 1), expert(binary, 1)
    with pytest.raises(SubstrateMismatchError) as err:
        compose([a, b])
    msg = str(err.value)
    assert glyph.fingerprint[:12] in msg and binary.fingerprint[:12] in msg


def test_width_mismatch_refused_with_reason(glyph):
    wide = Substrate.build("glyph", "compact", 32)
    with pytest.raises(SubstrateMismatchError, match="different width") as err:
        compose([expert(glyph, 1), expert(wide, 1)])
    assert glyph.fingerprint[:12] in str(err.value) and wide.fingerprint[:12] in str(err.value)


def test_vocabulary_mismatch_refused(glyph):
    a, b = expert(glyph, 1), expert(glyph, 2)
    b.substrate_spec = {**b.substrate_spec, "vocab": "bmp65k"}  # as if built on another vocabulary
    with pytest.raises(SubstrateMismatchError, match="vocabulary mismatch") as err:
        compose([a, b])
    assert "vocab compact" in str(err.value) and "vocab bmp65k" in str(err.value)


def test_bad_method_and_nesting_refused(pair):
    with pytest.raises(ValueError, match="valid methods"):
        compose(pair, "soup")
    with pytest.raises(ValueError, match="not a GrowLM"):
        compose([compose(pair), pair[0]])


@pytest.mark.parametrize("method", METHODS)
def test_loss_matches_cross_entropy_of_logits(pair, method):
    m = compose(pair, method, [0.4, 0.6])
    x, y = batch(pair[0].cfg.vocab_size)
    y[0, :3] = -100  # ignored positions
    with torch.no_grad():
        logits = m(x)
        ref = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=-100)
        assert m(x, y).item() == pytest.approx(ref.item(), abs=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_save_load_identical_logits(pair, method, tmp_path):
    m = compose(pair, method, [0.25, 0.75])
    if m.adapter is not None or m.router is not None:  # move away from init so the weights matter
        with torch.no_grad():
            for p in m.trainable_parameters():
                p.add_(0.01 * torch.randn_like(p))
    save_model(m, tmp_path / "c")
    meta = json.loads((tmp_path / "c" / "model.json").read_text())
    assert meta["kind"] == "composed" and meta["method"] == method and len(meta["experts"]) == 2
    assert meta["substrate_fingerprint"] == pair[0].substrate_fingerprint
    back = load_model(tmp_path / "c")
    assert isinstance(back, ComposedLM) and back.weights == pytest.approx(m.weights)
    x, _ = batch(pair[0].cfg.vocab_size)
    with torch.no_grad():
        assert torch.equal(back(x), m(x))
    e0, e1 = back.experts
    assert e0.embedding.untyped_storage().data_ptr() == e1.embedding.untyped_storage().data_ptr()


def test_embedding_shared_after_to(pair):
    m = compose(pair).to(torch.float64)
    a, b = (e.embedding for e in m.experts)
    assert a.dtype == torch.float64 and a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


@pytest.mark.parametrize("method", METHODS)
def test_generation_with_caches_equals_without(pair, method):
    m = compose(pair, method)
    x, _ = batch(pair[0].cfg.vocab_size, B=2, T=5)
    with_cache = m.generate(x, 8, temperature=0, use_cache=True)
    without = m.generate(x, 8, temperature=0, use_cache=False)
    assert with_cache.shape == (2, 13) and torch.equal(with_cache, without)
    caches = m.new_caches(2, 13)
    assert len(caches) == 2 and [len(c) for c in caches] == [2, 1]


def test_adapter_stays_small_at_paper_size():
    with torch.device("meta"):
        cfg = Config.from_preset("paper")  # V 65536, d_model 1024, 9 layers
        experts = [GrowLM(cfg), GrowLM(cfg)]
        adapter = compose(experts, "adapter")
        router = compose(experts, "router")
    V, C, n_expert = 65536, 1024, sum(p.numel() for p in experts[0].parameters())
    fa, fr = adapter.param_counts()["fusion"], router.param_counts()["fusion"]
    assert fa == LogitAdapter.num_parameters(2, V, 8) == V * 8 + 2 * (2 * 8 + 1) + 2 * V + V
    assert fr == (2 * C + 1) * 2
    assert fa < 0.01 * n_expert and fr < 1e-4 * n_expert
    assert adapter.param_counts()["trainable"] == fa


@pytest.mark.parametrize("method", ["adapter", "router"])
def test_trainable_fusion_starts_at_average(pair, method):
    x, y = batch(pair[0].cfg.vocab_size)
    avg = compose(pair, "average", [0.3, 0.7])
    fused = compose(pair, method, [0.3, 0.7])
    with torch.no_grad():
        assert torch.allclose(fused(x), avg(x), atol=ATOL)
        assert fused(x, y).item() == pytest.approx(avg(x, y).item(), abs=1e-5)


@pytest.mark.parametrize("method,train_heads", [("adapter", False), ("router", False), ("average", True)])
def test_plain_adamw_loop_reduces_loss_and_keeps_experts_frozen(pair, method, train_heads):
    m = compose(pair, method, train_heads=train_heads)
    frozen = {k: v.clone() for k, v in m.experts.state_dict().items() if not (train_heads and ".head." in k)}
    head0 = m.experts[0].head.weight.detach().clone()
    params = [p for p in m.parameters() if p.requires_grad]
    assert params and len(params) == len(m.trainable_parameters())
    opt = torch.optim.AdamW(params, lr=1e-2)
    x, y = batch(pair[0].cfg.vocab_size, B=4, T=16)
    with torch.no_grad():
        before = m(x, y).item()
    for _ in range(15):
        opt.zero_grad()
        loss = m(x, y)
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = m(x, y).item()
    assert after < before - 0.01, (before, after)
    now = m.experts.state_dict()
    assert all(torch.equal(now[k], v) for k, v in frozen.items())
    if train_heads:
        assert not torch.equal(now["0.head.weight"], head0)


def test_compose_from_runs_and_cli(pair, tmp_path, capsys):
    from growlm.commands import compose as cmd

    save_model(pair[0], tmp_path / "runA" / "model")
    save_model(pair[1], tmp_path / "runB" / "stages" / "stage-00")
    runs = [tmp_path / "runA", tmp_path / "runB"]
    m = compose_from_runs(runs, "router", [1, 3])
    assert m.weights == [0.25, 0.75] and [len(e.blocks) for e in m.experts] == [2, 1]
    parser = argparse.ArgumentParser()
    cmd.add_parser(parser.add_subparsers())
    args = parser.parse_args(["compose", *map(str, runs), "--method", "adapter", "--weights", "0.5,0.5",
                              "--out", str(tmp_path / "out")])
    assert args.func(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["method"] == "adapter" and summary["substrate_fingerprint"] == pair[0].substrate_fingerprint
    assert summary["params"]["trainable"] == summary["params"]["fusion"] > 0
    x, _ = batch(pair[0].cfg.vocab_size)
    with torch.no_grad():
        assert torch.allclose(load_model(tmp_path / "out")(x), compose(pair)(x), atol=ATOL)
    with pytest.raises(ValueError, match="comma-separated"):
        cmd.parse_weights("a,b")
