"""growlm's monolithic training step against a plain dense GPT, stepped in turn in one process. Prints JSON.

The plain GPT is the model a PyTorch user would write (and growlm is measured against): pre-norm blocks
(LayerNorm, causal SDPA attention, GELU MLP 4x, biases), learned positions, the token embedding tied to the
head, full-vocabulary ``F.cross_entropy``, AdamW fused where torch has it, gradient clipping at 1.0. growlm's
step is its trainer's own (``growlm.training.loop.Loop.step``) on a monolithic model: every block and the untied
head train on the frozen substrate (RoPE, the chunked loss), AdamW as ``build_optimizer`` makes it.

Steps alternate (growlm, plain, growlm, ...) after a warm-up, so passing load hits both alike; tokens/s is the
median over the timed steps. Each one's fraction of peak is its model FLOP/s (matmuls, as ``growlm.training.flops``
counts them: attention over the causal context, 3x forward where everything trains; the plain GPT's embedding
lookup uncounted) over the machine's measured fp32 matmul peak (``flops.cpu_peak``).

    python benchmarks/plain_gpt.py --shapes 256x4x16384,512x8x16384,256x4x65536 --out docs/data/plain_gpt.json
    python benchmarks/plain_gpt.py --smoke        # a tiny shape: the code path only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from growlm.model import GrowLM
from growlm.model.model import Config
from growlm.training import flops
from growlm.training.loop import Loop, build_optimizer
from growlm.training.plan import TrainSpec
from growlm.util.provenance import git_commit

# --------------------------------------------------------------------------- the plain GPT


class PlainBlock(nn.Module):
    """x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, d: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.attn_out = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.mlp_out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # [B, H, T, D]
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn_out(y.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp_out(F.gelu(self.fc(self.ln2(x))))


class PlainGPT(nn.Module):
    """Token and position embeddings, pre-norm blocks, final LayerNorm, head tied to the token embedding."""

    def __init__(self, vocab: int, d: int, n_layer: int, n_head: int, block_size: int):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(block_size, d)
        self.blocks = nn.ModuleList(PlainBlock(d, n_head) for _ in range(n_layer))
        self.ln = nn.LayerNorm(d)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        T = idx.shape[1]
        x = self.tok(idx) + self.pos(torch.arange(T, device=idx.device))
        for b in self.blocks:
            x = b(x)
        logits = self.ln(x) @ self.tok.weight.t()  # [B, T, V]
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1))


def plain_flops_per_token(vocab: int, d: int, n_layer: int, seq_len: int) -> float:
    """Model FLOPs per token of a training step of ``PlainGPT`` (all of it trains: 3x the forward)."""
    ctx = (seq_len + 1) / 2
    forward = n_layer * (2 * 12 * d * d + 4 * ctx * d) + 2 * vocab * d
    return 3 * forward


def fused_adamw(params) -> torch.optim.AdamW:
    """AdamW with the fused kernel where torch has one for these parameters, else the default."""
    try:
        return torch.optim.AdamW(params, lr=3e-4, weight_decay=0.1, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(params, lr=3e-4, weight_decay=0.1)


# --------------------------------------------------------------------------- the comparison


def parse_shape(text: str) -> tuple[int, int, int]:
    """``DxLxV`` -> (d_model, n_layer, vocab)."""
    try:
        d, n_layer, v = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"plain_gpt: a shape is d_model x n_layer x vocab, like 256x4x16384; got {text!r}") from None
    return d, n_layer, v


def compare(d: int, n_layer: int, vocab: int, batch: int, seq_len: int, steps: int, warmup: int, peak: float) -> dict:
    """Alternate growlm's and the plain GPT's steps at one shape; tokens/s, fraction of peak and their ratio."""
    n_head = max(1, d // 64)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch, seq_len + 1), generator=g)
    x, y = ids[:, :-1], ids[:, 1:]

    torch.manual_seed(0)
    cfg = Config.from_preset("demo", d_model=d, n_layer=n_layer, n_head=n_head, vocab_size=vocab, block_size=seq_len)
    grown = GrowLM(cfg)
    grown.embedding.normal_(generator=g)  # a frozen substrate: values do not matter for speed
    train = TrainSpec(batch_size=batch, seq_len=seq_len)
    loop = Loop(grown, train, precision="fp32")
    g_opt = build_optimizer(grown, train, torch.device("cpu"))

    plain = PlainGPT(vocab, d, n_layer, n_head, seq_len)
    p_opt = fused_adamw(plain.parameters())

    def plain_step() -> None:
        loss = plain(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(plain.parameters(), 1.0)
        p_opt.step()
        p_opt.zero_grad(set_to_none=True)

    def growlm_step() -> None:
        loop.step(g_opt, x, y, lr=3e-4)

    times: dict[str, list[float]] = {"growlm": [], "plain": []}
    for i in range(warmup + steps):
        for name, step in (("growlm", growlm_step), ("plain", plain_step)):
            t = time.perf_counter()
            step()
            if i >= warmup:
                times[name].append(time.perf_counter() - t)
    tokens = batch * seq_len
    per_token = {"growlm": flops.step_flops(grown, seq_len).total,
                 "plain": plain_flops_per_token(vocab, d, n_layer, seq_len)}
    out = {"shape": {"d_model": d, "n_layer": n_layer, "n_head": n_head, "vocab": vocab}}
    for name, ts in times.items():
        tps = tokens / statistics.median(ts)
        out[name] = {"tok_per_s": tps, "tok_per_s_min": tokens / max(ts), "tok_per_s_max": tokens / min(ts),
                     "flops_per_token": per_token[name], "fraction_of_peak": tps * per_token[name] / peak}
    out["plain"]["adamw_fused"] = bool(p_opt.defaults.get("fused"))
    out["growlm"]["adamw_fused"] = bool(g_opt.defaults.get("fused"))
    out["ratio_tok_per_s"] = out["growlm"]["tok_per_s"] / out["plain"]["tok_per_s"]
    return out


def _commit() -> str:
    """HEAD's commit, "-dirty" appended where tracked files differ from it ("" outside a git checkout)."""
    head, dirty = git_commit(Path(__file__).parent)
    return head + ("-dirty" if dirty else "")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", default="256x4x16384,512x8x16384,256x4x65536", help="d_model x n_layer x vocab, ...")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--steps", type=int, default=10, help="timed steps of each model")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--smoke", action="store_true", help="one tiny shape, few steps: the code path only")
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.smoke:
        args.shapes, args.batch, args.seq_len, args.steps, args.warmup = "32x1x512", 2, 16, 2, 1
    shapes = [parse_shape(s) for s in args.shapes.split(",") if s]
    load_before = os.getloadavg()
    peak = flops.cpu_peak()
    results = [compare(d, n, v, args.batch, args.seq_len, args.steps, args.warmup, peak["fp32"]) for d, n, v in shapes]
    report = {"benchmark": "plain_gpt", "commit": _commit(), "machine": platform.node(),
              "cpu": flops._cpu_key().split("|")[0], "torch": torch.__version__, "threads": args.threads,
              "cpu_capability": torch.backends.cpu.get_cpu_capability(), "fp32_peak_gflops": peak["fp32"] / 1e9,
              "peak_busy": bool(peak.get("busy")), "load_avg_before": load_before, "load_avg_after": os.getloadavg(),
              "batch": args.batch, "seq_len": args.seq_len, "steps": args.steps, "warmup": args.warmup,
              "smoke": args.smoke, "results": results}
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        from growlm.util.fileio import atomic_write_text

        atomic_write_text(Path(args.out), text + "\n")
    return report


if __name__ == "__main__":
    main()
