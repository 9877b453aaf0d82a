"""The chunked linear cross-entropy agrees with F.cross_entropy in value and gradients (fp32, bf16, ignored rows)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from growlm.model.losses import IGNORE_INDEX, chunked_cross_entropy

N, C, V = 37, 24, 301


def _inputs(bias: bool = True, ignore: tuple[int, ...] = (3, 4, 20), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    h = (torch.randn(N, C, generator=g) * 2).requires_grad_()
    w = (torch.randn(V, C, generator=g) * 0.5).requires_grad_()
    b = (torch.randn(V, generator=g)).requires_grad_() if bias else None
    t = torch.randint(0, V, (N,), generator=g)
    t[list(ignore)] = IGNORE_INDEX
    return h, w, b, t


def _grads(loss, params):
    live = [p for p in params if p is not None and p.requires_grad]
    return torch.autograd.grad(loss, live)


@pytest.mark.parametrize("chunk", [None, 1, 5, 16, N])
@pytest.mark.parametrize("bias", [True, False])
def test_fp32_matches_cross_entropy(chunk, bias):
    h, w, b, t = _inputs(bias)
    loss = chunked_cross_entropy(h, w, b, t, chunk=chunk)
    ref = F.cross_entropy(F.linear(h, w, b), t, ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)
    for g, r in zip(_grads(loss, (h, w, b)), _grads(ref, (h, w, b))):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("trains", ["h", "w", "b", "wb"])
def test_only_what_trains_gets_a_gradient(trains):
    h, w, b, t = _inputs()
    for name, p in (("h", h), ("w", w), ("b", b)):
        p.requires_grad_(name in trains)
    loss = chunked_cross_entropy(h, w, b, t, chunk=8)
    ref = F.cross_entropy(F.linear(h, w, b), t, ignore_index=IGNORE_INDEX)
    for g, r in zip(_grads(loss, (h, w, b)), _grads(ref, (h, w, b))):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-7)


def test_ignored_rows_add_nothing_even_a_whole_chunk():
    h, w, b, t = _inputs(ignore=tuple(range(8, 16)))  # chunk 8 holds rows 8..15: all ignored
    loss = chunked_cross_entropy(h, w, b, t, chunk=8)
    gh, gw, gb = _grads(loss, (h, w, b))
    assert torch.all(gh[8:16] == 0)
    keep = t != IGNORE_INDEX
    ref = F.cross_entropy(F.linear(h[keep], w, b), t[keep])
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)
    gh_ref, gw_ref, gb_ref = torch.autograd.grad(ref, (h, w, b))
    torch.testing.assert_close(gw, gw_ref, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(gb, gb_ref, rtol=1e-5, atol=1e-7)
    every = chunked_cross_entropy(h, w, b, torch.full_like(t, IGNORE_INDEX))
    assert float(every.detach()) == 0.0 and all(torch.all(g == 0) for g in _grads(every, (h, w, b)))


def test_large_logits_stay_finite_and_exact():
    h, w, b, t = _inputs()
    with torch.no_grad():
        w.mul_(40.0)  # logits in the hundreds: a naive softmax overflows
    loss = chunked_cross_entropy(h, w, b, t, chunk=7)
    ref = F.cross_entropy(F.linear(h, w, b), t, ignore_index=IGNORE_INDEX)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-4)
    for g, r in zip(_grads(loss, (h, w, b)), _grads(ref, (h, w, b))):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bias", [True, False])
def test_targets_whose_probability_underflows_keep_an_exact_loss(bias, monkeypatch):
    """The loss is -log softmax[target]; rows where that probability underflows float32 are redone in log space."""
    import growlm.model.losses as losses

    h, w, b, t = _inputs(bias=bias)
    with torch.no_grad():
        w.mul_(40.0)  # logits in the hundreds: most targets sit hundreds of nats below the row's best
    probs = F.softmax(F.linear(h, w, b), 1).gather(1, t.clamp(min=0)[:, None])[:, 0]
    assert int((probs < losses._TINY).sum()) > N // 2  # the recomputed path is the common one here
    loss = chunked_cross_entropy(h, w, b, t, chunk=9)
    ref = F.cross_entropy(F.linear(h, w, b), t, ignore_index=IGNORE_INDEX)
    assert torch.isfinite(loss) and float(loss.detach()) > 100
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-4)
    for g, r in zip(_grads(loss, (h, w, b)), _grads(ref, (h, w, b))):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the low-precision matmul's recomputation too
        low = chunked_cross_entropy(h, w, b, t, chunk=9)
    low, ref = float(low.detach()), float(ref.detach())
    assert math.isfinite(low) and abs(low - ref) < 0.02 * ref
    monkeypatch.setattr(losses, "_TINY", 0.0)  # without the recomputation, log(0) = -inf reaches the loss
    assert not torch.isfinite(chunked_cross_entropy(h, w, b, t, chunk=9))


def test_bf16_autocast_matches_autocast_reference():
    h, w, b, t = _inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = chunked_cross_entropy(h, w, b, t, chunk=8)
        ref = F.cross_entropy(F.linear(h, w, b).float(), t, ignore_index=IGNORE_INDEX)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, ref, rtol=2e-2, atol=2e-2)  # the reference rounds the biased logits to bf16
    for g, r in zip(_grads(loss, (h, w, b)), _grads(ref, (h, w, b))):
        assert g.dtype == r.dtype
        assert float((g - r).abs().max()) <= 2e-2 * float(r.abs().max())


@pytest.mark.parametrize("grad", [True, False])
def test_autocast_runs_the_head_matmul_in_bf16(grad):
    """Under bf16 autocast the head's matmul is bf16 (float32 logits, bias added in float32), with and without a
    gradient: the loss equals that computation, not the float32 one (it once silently ran in float32)."""
    from growlm.model.losses import token_log_probs

    h, w, b, t = _inputs()
    logits = (h.detach().bfloat16() @ w.detach().bfloat16().t()).float() + b.detach()
    ref_bf16 = F.cross_entropy(logits, t, ignore_index=IGNORE_INDEX)
    ref_fp32 = F.cross_entropy(F.linear(h, w, b).detach(), t, ignore_index=IGNORE_INDEX)
    assert abs(float(ref_bf16) - float(ref_fp32)) > 1e-4  # the two are told apart
    with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=torch.bfloat16):
        loss = chunked_cross_entropy(h, w, b, t, chunk=8)
        lp = token_log_probs(h, w, b, t.clamp(min=0), chunk=8)
    assert abs(float(loss.detach()) - float(ref_bf16)) < 1e-5
    torch.testing.assert_close(lp, logits.log_softmax(1).gather(1, t.clamp(min=0)[:, None])[:, 0])


def test_benchmark_compares_old_and_new(capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    try:
        from chunked_loss import main
    finally:
        sys.path.pop(0)
    for dtype in ("fp32", "bf16"):
        res = main(["--rows", "64", "--vocab", "512", "--dim", "16", "--repeats", "1", "--dtype", dtype])
        assert set(res["ms"]) == {"old", "new", "torch"} and res["speedup_median"] > 0
        tol = 1e-6 if dtype == "fp32" else 1e-3
        assert all(v <= tol for v in res["max_abs_diff_old_new"].values()), res
    assert '"benchmark": "chunked_loss"' in capsys.readouterr().out
