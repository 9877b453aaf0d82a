"""One chunk of the LM head's chunked cross-entropy: the previous implementation against growlm.model.losses, same run.

Both compute the loss and the gradients of the hidden states, the head's weight and its bias in one
forward over [rows, V] logits (what a training step costs for the head). Repeats are interleaved (old,
new, old, ...) so that a shared machine's noise hits both alike; the median and the best are reported,
with F.cross_entropy over materialised logits (forward + backward) as a third line, and the largest
differences of the loss and the gradients between the two implementations.

    python benchmarks/chunked_loss.py                       # the demo head: 1024 rows x V 16384 x d 128
    python benchmarks/chunked_loss.py --vocab 65536 --rows 256 --dtype bf16
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from growlm.model.losses import IGNORE_INDEX, _LinearCrossEntropy


def old_forward(h, weight, bias, targets, chunk, need_h, need_w, need_b):
    """The implementation before this benchmark (growlm commit f363db8), kept here as the baseline."""
    N, V = h.shape[0], weight.shape[0]
    dt = torch.get_autocast_dtype(h.device.type) if torch.is_autocast_enabled(h.device.type) else h.dtype
    with torch.autocast(h.device.type, enabled=False):
        w = weight.to(dt)
        valid = targets != IGNORE_INDEX
        n_valid = valid.sum().clamp(min=1).to(torch.float32)
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
        grad_b = torch.zeros_like(bias, dtype=torch.float32) if need_b else None
        total = torch.zeros((), dtype=torch.float32, device=h.device)
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
            g = logits.sub_(lse[:, None]).exp_()
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
    return total / n_valid, grad_h, grad_w, grad_b


def new_forward(h, weight, bias, targets, chunk, need_h, need_w, need_b):
    """growlm.model.losses as it stands: the loss, then the gradients it computed in the same pass."""
    class Ctx:
        def save_for_backward(self, *t):
            self.saved = t

    ctx = Ctx()
    loss = _LinearCrossEntropy.forward(ctx, h, weight, bias, targets, chunk, need_h, need_w, need_b)
    return (loss, *ctx.saved)


def torch_reference(h, weight, bias, targets):
    """F.cross_entropy over the whole [rows, V] logits, forward and backward."""
    h, weight, bias = (t.detach().requires_grad_() for t in (h, weight, bias))
    loss = F.cross_entropy(F.linear(h, weight, bias).float(), targets, ignore_index=IGNORE_INDEX)
    return (loss, *torch.autograd.grad(loss, (h, weight, bias)))


def main(argv: list[str] | None = None) -> dict:
    """Time the old and new chunk and print JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1024, help="rows in the chunk (the demo's default chunk)")
    ap.add_argument("--vocab", type=int, default=16384)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="bf16: under CPU autocast")
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args(argv)
    if min(args.rows, args.vocab, args.dim, args.repeats) < 1:
        ap.error("--rows, --vocab, --dim and --repeats must be >= 1")
    g = torch.Generator().manual_seed(0)
    h = torch.randn(args.rows, args.dim, generator=g)
    w = torch.randn(args.vocab, args.dim, generator=g) * 0.02
    b = torch.randn(args.vocab, generator=g) * 0.02
    t = torch.randint(0, args.vocab, (args.rows,), generator=g)
    t[:: 7] = IGNORE_INDEX
    call = (h, w, b, t, args.rows, True, True, True)

    def run(fn, *a):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.dtype == "bf16"):
            start = time.perf_counter()
            out = fn(*a)
            return time.perf_counter() - start, out

    fns = {"old": (old_forward, call), "new": (new_forward, call), "torch": (torch_reference, (h, w, b, t))}
    outs = {name: run(fn, *a)[1] for name, (fn, a) in fns.items()}  # warm-up round, not timed
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(args.repeats):
        for name, (fn, a) in fns.items():
            times[name].append(run(fn, *a)[0])
    parts = ("loss", "grad_h", "grad_w", "grad_b")

    def max_diff(xs, ys) -> dict[str, float]:
        return {k: float((x.detach().float() - y.detach().float()).abs().max()) for k, x, y in zip(parts, xs, ys)}

    ms = {k: {"median": round(1e3 * statistics.median(v), 2), "best": round(1e3 * min(v), 2)} for k, v in times.items()}
    result = {"benchmark": "chunked_loss", "rows": args.rows, "vocab": args.vocab, "dim": args.dim, "dtype": args.dtype,
              "repeats": args.repeats, "threads": torch.get_num_threads(), "torch": torch.__version__,
              "machine": platform.processor() or platform.machine(), "ms": ms,
              "speedup_median": round(ms["old"]["median"] / ms["new"]["median"], 3),
              "speedup_best": round(ms["old"]["best"] / ms["new"]["best"], 3),
              "max_abs_diff_old_new": max_diff(outs["old"], outs["new"]),
              "max_abs_diff_new_torch": max_diff(outs["new"], outs["torch"]),
              "max_abs_diff_old_torch": max_diff(outs["old"], outs["torch"])}
    json.dump(result, sys.stdout, indent=1)
    print()
    return result


if __name__ == "__main__":
    main()
