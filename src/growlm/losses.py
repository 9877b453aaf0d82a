"""Cross-entropy of a linear LM head, computed chunk by chunk.

A 65536-way head over B*T positions would hold B*T*V logits (512 MB for 2048
positions) in the forward and again in the backward. Here the head's logits
exist one chunk of rows at a time: the forward computes the loss and, in the
same pass, the gradients of the hidden states, the weight and the bias, which
the backward only scales. Peak memory is one chunk of logits.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100
CHUNK_ELEMENTS = 1 << 23  # logits per chunk (32 MB in float32)


def _chunk_rows(vocab: int, chunk: int | None) -> int:
    return chunk or max(16, CHUNK_ELEMENTS // vocab)


def _logits(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    out = h @ weight.t().to(h.dtype)
    if bias is not None:
        out = out + bias.to(out.dtype)
    return out.float()


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, bias, targets, chunk, need_h, need_w, need_b):
        N = h.shape[0]
        valid = targets != IGNORE_INDEX
        n_valid = valid.sum().clamp(min=1).to(torch.float32)
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
        grad_b = torch.zeros_like(bias, dtype=torch.float32) if need_b else None
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        for s in range(0, N, chunk):
            hc, tc, vc = h[s:s + chunk], targets[s:s + chunk].clamp(min=0), valid[s:s + chunk]
            logits = _logits(hc, weight, bias)  # [n, V] float32
            lse = torch.logsumexp(logits, dim=-1)
            picked = logits.gather(1, tc[:, None])[:, 0]
            total += ((lse - picked) * vc).sum()
            if need_h or need_w or need_b:
                g = (logits - lse[:, None]).exp_()  # softmax, reusing the logits' memory
                g[torch.arange(g.shape[0], device=g.device), tc] -= 1.0
                g *= (vc.to(g.dtype) / n_valid)[:, None]
                if need_b:
                    grad_b += g.sum(0)
                g = g.to(hc.dtype)
                if need_h:
                    grad_h[s:s + chunk] = g @ weight.to(hc.dtype)
                if need_w:
                    grad_w += (g.t() @ hc).float()
        ctx.save_for_backward(*(t for t in (grad_h, grad_w, grad_b) if t is not None))
        ctx.flags = (need_h, need_w, need_b)
        ctx.w_dtype = weight.dtype
        return total / n_valid

    @staticmethod
    def backward(ctx, grad_out):
        saved = iter(ctx.saved_tensors)
        need_h, need_w, need_b = ctx.flags
        gh = next(saved) * grad_out if need_h else None
        gw = (next(saved) * grad_out).to(ctx.w_dtype) if need_w else None
        gb = (next(saved) * grad_out).to(ctx.w_dtype) if need_b else None
        return gh, gw, gb, None, None, None, None, None


def chunked_cross_entropy(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                          targets: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """Mean cross-entropy of ``h @ weight.T + bias`` against ``targets``; h [N, C], targets [N].

    Targets equal to -100 are ignored. ``chunk`` is rows per chunk (default: 8M logits).
    """
    rows = _chunk_rows(weight.shape[0], chunk)
    grad = torch.is_grad_enabled()
    need_h = grad and h.requires_grad
    need_w = grad and weight.requires_grad
    need_b = grad and bias is not None and bias.requires_grad
    if not (need_h or need_w or need_b):
        with torch.no_grad():
            return _LinearCrossEntropy.forward(_NoCtx(), h, weight, bias, targets, rows,
                                               False, False, False)
    return _LinearCrossEntropy.apply(h, weight, bias, targets, rows, need_h, need_w, need_b)


class _NoCtx:
    """Stand-in for autograd's ctx when only the loss value is wanted."""

    def save_for_backward(self, *tensors):
        pass
