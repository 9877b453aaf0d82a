"""Cross-entropy of a linear LM head, computed chunk by chunk.

A 65536-way head over B*T positions would hold B*T*V logits (512 MB for 2048
positions) in the forward and again in the backward. Here the head's logits
exist one chunk of rows at a time: the forward computes the loss and, in the
same pass, the gradients of the hidden states, the weight and the bias, which
the backward only scales. Peak memory is one chunk of logits.

A chunk's [rows, V] logits are memory-bound to walk over, so they are walked
over few times and never copied: the bias rides in the matmul, the softmax runs
in place and is the gradient, the loss is -log of its target entries (rows whose
target probability underflows are redone in log space), the one-hot touches one entry per
row, and the per-row scale (1 / valid targets, 0 for ignored ones) is applied on
the narrow side of the two gradient matmuls (``benchmarks/chunked_loss.py``).
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100
CHUNK_ELEMENTS = 1 << 24  # logits per chunk (64 MB in float32; 256 rows at V = 65536)
_TINY = 1e-30  # a target probability below this is recomputed in log space (float32 underflows near 1e-38)


def _chunk_rows(vocab: int, chunk: int | None) -> int:
    return chunk or max(16, CHUNK_ELEMENTS // vocab)


def _compute_dtype(h: torch.Tensor) -> torch.dtype:
    """The matmul dtype: autocast's when it is on for h's device, else h's own."""
    if torch.is_autocast_enabled(h.device.type):
        return torch.get_autocast_dtype(h.device.type)
    return h.dtype


def _softmax_(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim of a float32 [rows, V] tensor: in place on CPU, else into a new tensor."""
    if logits.is_cpu:
        return torch.ops.aten._softmax.out(logits, 1, False, out=logits)
    return logits.softmax(1)


def _log_probs_from_softmax(probs: torch.Tensor, targets: torch.Tensor, h: torch.Tensor, w: torch.Tensor,
                            b: torch.Tensor | None) -> torch.Tensor:
    """log p[target] per row from the softmax; rows whose probability underflows are recomputed from h exactly."""
    p = probs.gather(1, targets[:, None])[:, 0]
    logp = p.log()
    tiny = p < _TINY
    if bool(tiny.any()):  # rare (a target more than ~69 nats below the row's best): log_softmax of those rows
        rows = tiny.nonzero()[:, 0]
        z = (h[rows] @ w.t()).float()
        z = z if b is None else z + b
        logp[rows] = z.log_softmax(1).gather(1, targets[rows][:, None])[:, 0]
    return logp


class _HeadChunks:
    """The head's float32 logits of h [N, C], one chunk of rows at a time, in one reused buffer."""

    def __init__(self, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, chunk: int,
                 dt: torch.dtype):
        self.h, self.chunk, self.dt = h, chunk, dt
        self.w = weight.to(self.dt)  # cast once, not per chunk
        self.b = bias.float() if bias is not None else None
        rows, V = min(chunk, h.shape[0]), weight.shape[0]
        # Reused buffers: allocating and freeing tens of MB per chunk costs page faults.
        self.buf = torch.empty(rows, V, dtype=torch.float32, device=h.device)
        self.low = torch.empty(rows, V, dtype=self.dt, device=h.device) if self.dt != torch.float32 else None

    def __iter__(self):
        """(start row, h chunk in the matmul dtype, its logits [n, V]) for each chunk."""
        w, b, low = self.w, self.b, self.low
        for s in range(0, self.h.shape[0], self.chunk):
            hc = self.h[s:s + self.chunk].to(self.dt)
            n = hc.shape[0]
            logits = self.buf[:n]
            if low is None:  # fp32: the bias rides along in the matmul
                torch.mm(hc, w.t(), out=logits) if b is None else torch.addmm(b, hc, w.t(), out=logits)
            else:  # low precision matmul, then float32 logits (the bias added in float32)
                torch.mm(hc, w.t(), out=low[:n])
                if b is None:
                    logits.copy_(low[:n])
                elif logits.is_cpu:  # CPU kernels cast a mixed-dtype input into a temporary [n, V]: cast in place
                    logits.copy_(low[:n]).add_(b)
                else:  # CUDA casts inside the kernel: one pass
                    torch.add(low[:n], b, out=logits)
            yield s, hc, logits


@torch.no_grad()
def token_log_probs(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
                    chunk: int | None = None) -> torch.Tensor:
    """log softmax(h @ weight.T + bias) at given ids, the [N, V] logits never held whole; no gradient.

    h [N, C]; targets [N] or [K, N] (K ids per row, read in the same pass); returns float32 of targets' shape.
    """
    N = h.shape[0]
    ids = targets.reshape(-1, N)
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= weight.shape[0]):
        raise ValueError(f"token ids must lie in [0, {weight.shape[0]}), got {int(ids.min())}..{int(ids.max())}")
    out = torch.empty(ids.shape, dtype=torch.float32, device=h.device)
    dt = _compute_dtype(h)  # read before autocast is switched off below
    with torch.autocast(h.device.type, enabled=False):
        for s, _, logits in _HeadChunks(h, weight, bias, _chunk_rows(weight.shape[0], chunk), dt):
            # log-probabilities as F.cross_entropy computes them, one fused kernel; in place on CPU (tested
            # bit-identical there), elsewhere into a fresh tensor the caching allocator hands back
            logp = torch.log_softmax(logits, 1, out=logits) if logits.is_cpu else logits.log_softmax(1)
            out[:, s:s + logits.shape[0]] = logp.gather(1, ids[:, s:s + logits.shape[0]].t()).t()
    return out.reshape(targets.shape)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, bias, targets, chunk, need_h, need_w, need_b):
        dt = _compute_dtype(h)  # read before autocast is switched off below
        with torch.autocast(h.device.type, enabled=False):
            chunks = _HeadChunks(h, weight, bias, chunk, dt)
            w, b, low = chunks.w, chunks.b, chunks.low
            valid = targets != IGNORE_INDEX
            n_valid = valid.sum().clamp(min=1).to(torch.float32)
            grad_h = torch.empty_like(h) if need_h else None
            grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
            grad_b = torch.zeros_like(bias, dtype=torch.float32) if need_b else None
            total = torch.zeros((), dtype=torch.float32, device=h.device)
            for s, hc, logits in chunks:
                n = hc.shape[0]
                tc, vc = targets[s:s + n].clamp(min=0), valid[s:s + n]
                # the softmax, one fused kernel (in place on CPU, tested bit-identical): it is the gradient's main
                # term, and the loss is -log of its target entries, so no second pass turns log-probs into probs
                g = _softmax_(logits)
                total -= (_log_probs_from_softmax(g, tc, hc, w, b) * vc).sum()
                # d loss / d logits = scale * (softmax - onehot): the one-hot on n entries, and the per-row scale
                # (1/n_valid, 0 for ignored targets) applied on the narrow side of each matmul
                g[torch.arange(n, device=g.device), tc] -= 1.0
                scale = vc.to(torch.float32) / n_valid  # [n]
                if need_b:
                    grad_b.addmv_(g.t(), scale)
                if low is not None:
                    g = low[:n].copy_(g)
                if need_h:
                    gh = grad_h[s:s + n]
                    if gh.dtype == torch.float32 and low is None:
                        torch.mm(g, w, out=gh).mul_(scale[:, None])
                    else:
                        gh.copy_((g @ w).float().mul_(scale[:, None]))
                if need_w:  # scaled in float32, then rounded: no rounding of 1/n_valid shared by every row
                    hs = (h[s:s + n].float() * scale[:, None]).to(dt)
                    grad_w.addmm_(g.t(), hs) if low is None else grad_w.add_(g.t() @ hs)
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
    if not (need_h or need_w or need_b):  # evaluation: the target entries of log-softmax, one pass per chunk
        valid = targets != IGNORE_INDEX
        logp = token_log_probs(h, weight, bias, targets.clamp(min=0), rows)
        return -(logp * valid).sum() / valid.sum().clamp(min=1).to(torch.float32)
    return _LinearCrossEntropy.apply(h, weight, bias, targets, rows, need_h, need_w, need_b)
