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
CHUNK_ELEMENTS = 1 << 24  # logits per chunk (64 MB in float32; 256 rows at V = 65536)


def _chunk_rows(vocab: int, chunk: int | None) -> int:
    return chunk or max(16, CHUNK_ELEMENTS // vocab)


def _compute_dtype(h: torch.Tensor) -> torch.dtype:
    """The matmul dtype: autocast's when it is on for h's device, else h's own."""
    if torch.is_autocast_enabled(h.device.type):
        return torch.get_autocast_dtype(h.device.type)
    return h.dtype


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, bias, targets, chunk, need_h, need_w, need_b):
        N, V = h.shape[0], weight.shape[0]
        dt = _compute_dtype(h)
        with torch.autocast(h.device.type, enabled=False):
            w = weight.to(dt)  # cast once, not per chunk
            valid = targets != IGNORE_INDEX
            n_valid = valid.sum().clamp(min=1).to(torch.float32)
            grad_h = torch.empty_like(h) if need_h else None
            grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
            grad_b = torch.zeros_like(bias, dtype=torch.float32) if need_b else None
            total = torch.zeros((), dtype=torch.float32, device=h.device)
            # Reused buffers: allocating and freeing tens of MB per chunk costs page faults.
            rows = min(chunk, N)
            buf = torch.empty(rows, V, dtype=torch.float32, device=h.device)
            low = torch.empty(rows, V, dtype=dt, device=h.device) if dt != torch.float32 else None
            for s in range(0, N, chunk):
                hc = h[s:s + chunk].to(dt)
                n = hc.shape[0]
                tc, vc = targets[s:s + n].clamp(min=0), valid[s:s + n]
                logits = buf[:n]
                if low is None:
                    torch.mm(hc, w.t(), out=logits)
                else:
                    torch.mm(hc, w.t(), out=low[:n])
                    logits.copy_(low[:n])
                if bias is not None:
                    logits.add_(bias.float())
                lse = torch.logsumexp(logits, dim=-1)
                picked = logits.gather(1, tc[:, None])[:, 0]
                total += ((lse - picked) * vc).sum()
                if not (need_h or need_w or need_b):
                    continue
                g = logits.sub_(lse[:, None]).exp_()  # softmax, in place
                g[torch.arange(n, device=g.device), tc] -= 1.0
                g.mul_((vc.to(g.dtype) / n_valid)[:, None])
                if need_b:
                    grad_b += g.sum(0)
                if low is not None:
                    g = low[:n].copy_(g)
                if need_h:
                    grad_h[s:s + n] = g @ w
                if need_w:
                    grad_w.addmm_(g.t(), hc) if low is None else grad_w.add_(g.t() @ hc)
        if ctx is not None:
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
            return _LinearCrossEntropy.forward(None, h, weight, bias, targets, rows, False, False, False)
    return _LinearCrossEntropy.apply(h, weight, bias, targets, rows, need_h, need_w, need_b)
