"""Tests for growlm.model.composition: composing experts that share a substrate."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch
import torch.nn.functional as F

from growlm.model import Config, GrowLM
from growlm.model.composition import METHODS, ComposedLM, LogitAdapter, compose, compose_from_runs, normalise_weights
from growlm.model.saved import load_model, save_model
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


def learned(sub: Substrate, seed: int, shift: float) -> GrowLM:
    """An expert with a trainable embedding from one random init, moved by ``shift`` (as if trained)."""
    m = expert(sub, 1, trainable_embedding=True, embedding_init="random")
    torch.manual_seed(seed)
    with torch.no_grad():
        m.embedding.add_(shift * torch.randn_like(m.embedding))
    return m


def test_experts_with_their_own_trained_embeddings_are_refused_unless_asked(glyph, tmp_path):
    a, b = learned(glyph, 1, 0.5), learned(glyph, 2, 0.5)
    assert a.substrate_fingerprint == b.substrate_fingerprint  # the fingerprint names the start, not the table
    for experts in ([a, b], [expert(glyph, 1), a], [a, expert(glyph, 1)]):  # trained on either side
        with pytest.raises(SubstrateMismatchError, match="embedding mismatch.*own_embeddings=True"):
            compose(experts, names=["x", "y"])
    assert compose([a, learned(glyph, 1, 0.5)]).own_embeddings is False  # one and the same table: no refusal
    x, _ = batch(glyph.vocab_size)
    for method in ("average", "prob", "posterior", "adapter", "router"):
        m = compose([a, b], method, [0.3, 0.7], own_embeddings=True)
        assert m.own_embeddings and m.experts[0].embedding is not m.experts[1].embedding
        with torch.no_grad():
            if method == "average":  # each expert embeds its own input: the average of their own logits
                assert torch.allclose(m(x), 0.3 * a(x) + 0.7 * b(x), atol=ATOL)
        assert not any(e.embedding.requires_grad for e in m.experts)  # the experts' tables stay frozen
    m = compose([a, b], "average", [0.3, 0.7], own_embeddings=True)
    save_model(m, tmp_path / "own")
    assert json.loads((tmp_path / "own" / "model.json").read_text())["options"]["own_embeddings"] is True
    back = load_model(tmp_path / "own")
    assert back.own_embeddings
    with torch.no_grad():
        assert torch.equal(back(x), m(x))
    save_model(compose([expert(glyph, 1), expert(glyph, 2)]), tmp_path / "plain")
    plain = json.loads((tmp_path / "plain" / "model.json").read_text())
    assert "own_embeddings" not in plain["options"]  # descriptions without the option stay as they were


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


@pytest.mark.parametrize("method,window", [(m, 0) for m in METHODS] + [("posterior", 3)])
def test_token_nll_equals_the_full_logits_per_position(pair, method, window):
    """Scoring without [B, T, V] tensors: each position's -log p equals the full logits' cross-entropy there,
    also for targets that are not the text's next tokens (the posterior's weights come from the text)."""
    m = compose(pair, method, [0.3, 0.7], window=window) if method == "posterior" else compose(pair, method, [0.3, 0.7])
    x, _ = batch(pair[0].cfg.vocab_size, B=3, T=10)
    y = torch.randint(0, pair[0].cfg.vocab_size, x.shape, generator=torch.Generator().manual_seed(5))
    y[1, 4] = -100
    with torch.no_grad():
        logits = m(x).float()
        ref = F.cross_entropy(logits.transpose(1, 2), y, ignore_index=-100, reduction="none")  # [B, T]
    got = m.token_nll(x, y)
    assert got.shape == y.shape and float(got[1, 4]) == 0.0
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("train_heads", [False, True])
def test_adapter_loss_by_row_chunks_equals_the_whole_batch(pair, train_heads, monkeypatch):
    """The adapter's training loss and every trainable parameter's gradient, taken a chunk of rows at a time,
    equal those of the fused [B, T, V] logits held whole."""
    import growlm.model.composition_methods as C

    m = compose(pair, "adapter", [0.4, 0.6], rank=4, train_heads=train_heads)
    with torch.no_grad():  # away from the identity start, so every part of the fusion carries a gradient
        for p in m.adapter.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x, y = batch(pair[0].cfg.vocab_size, B=3, T=10)
    y[0, 2] = -100
    params = [p for p in m.parameters() if p.requires_grad]
    assert len(params) == (9 if train_heads else 5)  # the fusion's 5, plus each head's weight and bias
    monkeypatch.setattr(C, "ADAPTER_CHUNK_ELEMENTS", 7 * 2 * pair[0].cfg.vocab_size)  # 16-row chunks (the minimum)
    loss = m(x, y)
    got = torch.autograd.grad(loss, params)
    hs = [e.hidden_states(x) for e in m.experts]
    fused = m.adapter([e.head(h) for e, h in zip(m.experts, hs)])
    ref = F.cross_entropy(fused.reshape(-1, fused.shape[-1]).float(), y.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)
    for g, r in zip(got, torch.autograd.grad(ref, params)):
        assert float(r.abs().max()) > 0
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-7)


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


# -- posterior: experts weighted by their posterior given the text so far ---------------------------------------


def near(values: list[float]):
    """Equal within float32 log-probabilities' precision."""
    return pytest.approx(values, rel=1e-5)


def constant_expert(sub: Substrate, probs: dict[int, float], seed: int = 0) -> GrowLM:
    """An expert whose next-token distribution ignores the text: probs on the given ids, the rest spread evenly."""
    e = expert(sub, seed, 1)
    V = sub.vocab_size
    rest = (1.0 - sum(probs.values())) / (V - len(probs))
    p = torch.full((V,), rest)
    for i, q in probs.items():
        p[i] = q
    with torch.no_grad():
        e.head.weight.zero_()
        e.head.bias.copy_(p.log())
    return e


@pytest.fixture()
def known(glyph):
    """Two experts with known probabilities: A gives token 1 0.5 and token 2 0.25, B gives 0.1 and 0.6."""
    return [constant_expert(glyph, {1: 0.5, 2: 0.25}, 1), constant_expert(glyph, {1: 0.1, 2: 0.6}, 2)]


def test_posterior_weights_by_hand(known):
    x = torch.tensor([[0, 1, 1, 2]])
    pa, pb = {1: 0.5, 2: 0.25}, {1: 0.1, 2: 0.6}
    # w_A(t) = prior_A * prod_{s<t} pA(x_{s+1}) / sum over experts
    lik_a, lik_b = [1.0, 0.5, 0.5 * 0.5, 0.5 * 0.5 * 0.25], [1.0, 0.1, 0.1 * 0.1, 0.1 * 0.1 * 0.6]
    want = torch.tensor([[a / (a + b), b / (a + b)] for a, b in zip(lik_a, lik_b)], dtype=torch.float64)
    m = compose(known, "posterior")
    w = m.posterior_weights(x)[0]  # [T, N]
    assert torch.allclose(w, want, atol=1e-6)
    assert w[1].tolist() == near([5 / 6, 1 / 6]) and w[2].tolist() == near([25 / 26, 1 / 26])
    # the prior multiplies in: weights 1:3 at position 0, then 1*0.5 : 3*0.1 at position 1
    w = compose(known, "posterior", [1, 3]).posterior_weights(x)[0]
    assert w[0].tolist() == near([0.25, 0.75]) and w[1].tolist() == near([0.5 / 0.8, 0.3 / 0.8])
    # the output is the log of the weighted mixture of the two distributions
    with torch.no_grad():
        out = m(x)[0]  # [T, V]
    for t in range(4):
        for tok in (1, 2, 7):
            p = want[t, 0] * pa.get(tok, known_rest(pa)) + want[t, 1] * pb.get(tok, known_rest(pb))
            assert out[t, tok].exp().item() == pytest.approx(p.item(), rel=1e-4)
    assert torch.allclose(out.exp().sum(-1), torch.ones(4), atol=1e-4)


def known_rest(p: dict[int, float], V: int = 16384) -> float:
    return (1.0 - sum(p.values())) / (V - len(p))


def test_posterior_window_forgets_older_tokens(known):
    x = torch.tensor([[0, 1, 1, 2]])
    w1 = compose(known, "posterior", window=1).posterior_weights(x)[0]
    # window 1: only the last token counts: at t = 3 that is x_3 = 2, pA 0.25 vs pB 0.6
    assert w1[3].tolist() == near([0.25 / 0.85, 0.6 / 0.85])
    assert w1[2].tolist() == near([0.5 / 0.6, 0.1 / 0.6])
    w2 = compose(known, "posterior", window=2).posterior_weights(x)[0]
    assert w2[3].tolist() == near([0.125 / 0.185, 0.06 / 0.185])  # x_2 x_3: 0.5*0.25 vs 0.1*0.6
    whole = compose(known, "posterior").posterior_weights(x)[0]
    assert torch.allclose(compose(known, "posterior", window=3).posterior_weights(x)[0], whole)  # all 3 tokens
    assert torch.allclose(compose(known, "posterior", window=50).posterior_weights(x)[0], whole)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="window"):
            compose(known, "posterior", window=bad)
    with pytest.raises(ValueError, match="applies to method .posterior. only"):
        compose(known, "average", window=4)


def test_posterior_long_text_does_not_underflow(known):
    # 60 tokens that both experts find unlikely (about 1.5e-5 each): the products of their probabilities are
    # ~1e-289, zero in float32, so a direct product would give 0/0; in log space the weights stay exact
    x = torch.tensor([[0] + [7] * 60])
    ra, rb = known_rest({1: 0.5, 2: 0.25}), known_rest({1: 0.1, 2: 0.6})
    assert torch.tensor(ra, dtype=torch.float32) ** 60 == 0
    w = compose(known, "posterior", [0.3, 0.7]).posterior_weights(x)[0]
    assert torch.isfinite(w).all() and torch.allclose(w.sum(-1), torch.ones(61, dtype=w.dtype))
    log_ratio = math.log(0.3 / 0.7) + 60 * math.log(ra / rb)  # log(w_A / w_B) at the last position
    assert math.log(w[-1, 0].item()) - math.log(w[-1, 1].item()) == pytest.approx(log_ratio, abs=1e-4)
    with torch.no_grad():
        out = compose(known, "posterior", [0.3, 0.7])(x)
    assert torch.isfinite(out).all()
    wa = 1 / (1 + math.exp(-log_ratio))
    assert out[0, -1, 2].exp().item() == pytest.approx(wa * 0.25 + (1 - wa) * 0.6, rel=1e-4)


@pytest.mark.parametrize("window", [0, 3])
def test_posterior_incremental_equals_full_forward(pair, window):
    m = compose(pair, "posterior", [0.3, 0.7], window=window)
    x, _ = batch(pair[0].cfg.vocab_size, B=2, T=12)
    with torch.no_grad():
        full = m(x)  # [B, T, V]
        caches = m.new_caches(2, 12)
        parts = [m(x[:, :5], caches=caches, pos=0)]  # a prompt, then one token at a time, then a chunk of 3
        for t in range(5, 9):
            parts.append(m(x[:, t:t + 1], caches=caches, pos=t))
        parts.append(m(x[:, 9:], caches=caches, pos=9))
        assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5)
        assert not torch.allclose(full, compose(pair, "prob", [0.3, 0.7])(x), atol=1e-3)  # the weights moved
        with pytest.raises(ValueError, match="feed positions in order"):
            m(x[:, :1], caches=caches, pos=4)
        with pytest.raises(ValueError, match="needs the caches"):
            m(x[:, :1], pos=3)
    greedy = m.generate(x[:, :4], 6, temperature=0, use_cache=True)
    assert torch.equal(greedy, m.generate(x[:, :4], 6, temperature=0, use_cache=False))


def test_posterior_save_load_keeps_window(pair, tmp_path):
    m = compose(pair, "posterior", [0.2, 0.8], window=5)
    save_model(m, tmp_path / "p")
    meta = json.loads((tmp_path / "p" / "model.json").read_text())
    assert meta["method"] == "posterior" and meta["options"]["window"] == 5
    back = load_model(tmp_path / "p")
    assert back.method == "posterior" and back.window == 5 and back.weights == near([0.2, 0.8])
    x, _ = batch(pair[0].cfg.vocab_size, T=10)
    with torch.no_grad():
        assert torch.equal(back(x), m(x))


def test_posterior_has_nothing_to_train(pair, tiny_data, tmp_path):
    from growlm.data.tokens import open_data
    from growlm.training.finetune import finetune
    from growlm.training.plan import TrainSpec

    with pytest.raises(ValueError, match="training-free"):
        compose(pair, "posterior", train_heads=True)
    m = compose(pair, "posterior")
    assert m.param_counts()["trainable"] == 0 and m.training_refusal() and compose(pair).training_refusal() is None
    with pytest.raises(ValueError, match="cannot fine-tune.*training-free"):
        finetune(m, open_data(tiny_data, "compact"), tmp_path / "ft", 2, TrainSpec(batch_size=2, seq_len=8))
    assert not (tmp_path / "ft").exists()


def test_posterior_cli(pair, tmp_path, capsys):
    from growlm.commands import compose as cmd

    save_model(pair[0], tmp_path / "a" / "model")
    save_model(pair[1], tmp_path / "b" / "model")
    parser = argparse.ArgumentParser()
    cmd.add_parser(parser.add_subparsers())
    runs = [str(tmp_path / "a"), str(tmp_path / "b")]
    args = parser.parse_args(["compose", *runs, "--method", "posterior", "--window", "4", "--out", str(tmp_path / "o")])
    assert args.func(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["method"] == "posterior" and summary["window"] == 4 and summary["params"]["trainable"] == 0
    x, _ = batch(pair[0].cfg.vocab_size)
    with torch.no_grad():
        assert torch.allclose(load_model(tmp_path / "o")(x), compose(pair, "posterior", window=4)(x), atol=ATOL)
    args = parser.parse_args(["compose", *runs, "--window", "4", "--out", str(tmp_path / "o2")])
    with pytest.raises(ValueError, match="--window applies to --method posterior"):
        args.func(args)


@pytest.mark.parametrize("method", ["average", "prob", "adapter", "router", "posterior"])
def test_last_logits_equal_the_last_position_and_run_the_heads_on_it_only(pair, method):
    model = ComposedLM(pair, method).eval()
    x, _ = batch(model.vocab_size, T=9)
    shapes = []
    hooks = [e.head.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape))) for e in model.experts]
    with torch.no_grad():
        last = model.last_logits(x)
        for h in hooks:
            h.remove()
        full = model(x)[:, -1]
    assert torch.allclose(last, full, atol=ATOL)
    t = 9 if method == "posterior" else 1  # posterior's weights need every position's probabilities
    assert shapes == [(2, t, model.vocab_size)] * 2
