"""Growth-stage speed and memory against monolithic training, measured in one run. Prints JSON.

For each (d_model, depth) it times a training step of the same model in several modes,
each in its own subprocess so that peak memory is that mode's alone:

* ``mono_naive_fp32``: every block and the head train, full [B*T, V] logits, fp32 (the floor);
* ``mono_fp32``: the same with growlm's chunked head loss;
* ``grow_naive_fp32``: a growth stage (newest block + head train, blocks below under no_grad),
  full logits;
* ``grow_fp32``: growth stage + chunked loss;
* ``grow_bf16`` / ``mono_bf16``: the same with bf16 autocast.

Ratios are tokens/s against ``mono_naive_fp32`` of the same run, next to the FLOP ratio
(a growth step runs the forward of every block but the backward of the newest one only).

    python benchmarks/growth_speed.py                 # d_model 256/4 layers and 512/8, V 65536
    python benchmarks/growth_speed.py --quick         # smaller, for a smoke test
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

MODES = ["mono_naive_fp32", "mono_fp32", "grow_naive_fp32", "grow_fp32", "grow_bf16", "mono_bf16"]


def one(mode: str, d_model: int, depth: int, vocab: int, batch: int, seq: int, steps: int, device: str) -> dict:
    """Time ``steps`` optimiser steps of one mode; runs inside its own process."""
    import contextlib

    import torch
    import torch.nn.functional as F

    from growlm import Config, GrowLM
    from growlm.substrate.binary import binary_matrix

    class Sub:  # a binary substrate without building a vocabulary: speed does not depend on its values
        def __init__(self):
            self.matrix = binary_matrix(vocab, d_model)
            self.fingerprint, self.spec = "bench", type("S", (), {"to_dict": lambda s: {}})()

    torch.manual_seed(0)
    cfg = Config.from_preset("paper", vocab_size=vocab, d_model=d_model, n_layer=depth, n_head=d_model // 64,
                             block_size=seq)
    model = GrowLM(cfg, Sub()).to(device)
    if mode.startswith("grow"):
        model.set_trainable([depth - 1])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4,
                            fused=device == "cuda")
    x = torch.randint(0, vocab, (batch, seq), device=device)
    y = torch.randint(0, vocab, (batch, seq), device=device)
    bf16 = mode.endswith("bf16")
    ctx = (lambda: torch.autocast(device, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    losses = []

    def step():
        with ctx():
            if "naive" in mode:
                loss = F.cross_entropy(model(x).view(-1, vocab).float(), y.view(-1))
            else:
                loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))

    for _ in range(2):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t) / steps
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"mode": mode, "tok_per_s": round(batch * seq / dt, 1), "step_s": round(dt, 4),
            "peak_mib": round(peak, 1), "loss_first": round(losses[0], 4), "loss_last": round(losses[-1], 4)}


def flop_ratio(d_model: int, depth: int, vocab: int, seq: int) -> float:
    """Monolithic step FLOPs / growth step FLOPs (forward = 1x, backward = 2x of what trains)."""
    block = 24 * d_model**2 + 4 * seq * d_model  # per token: 12 d^2 weights x2, attention scores
    head = 2 * vocab * d_model
    mono = 3 * (depth * block + head)
    grow = depth * block + head + 2 * (block + head)
    return round(mono / grow, 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="256x4,512x8", help="d_model x depth, comma-separated")
    ap.add_argument("--vocab", type=int, default=65536)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2, help="repeat every mode, interleaved; report the best")
    ap.add_argument("--device", default=None)
    ap.add_argument("--quick", action="store_true", help="d_model 64 x 2, V 8192, 2 steps")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(one(*json.loads(args.child))))
        return
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.quick:
        args.configs, args.vocab, args.steps, args.seq, args.rounds = "64x2", 8192, 2, 64, 1
    results = []
    for cfg in args.configs.split(","):
        d, depth = (int(v) for v in cfg.split("x"))
        rows: dict[str, dict] = {}
        for _ in range(args.rounds):  # modes interleaved, best of the rounds: the machine is shared and noisy
            for mode in MODES:
                payload = json.dumps([mode, d, depth, args.vocab, args.batch, args.seq, args.steps, device])
                out = subprocess.run([sys.executable, __file__, "--child", payload], capture_output=True, text=True)
                if out.returncode != 0:
                    rows.setdefault(mode, {"mode": mode, "error": out.stderr.strip().splitlines()[-1:]})
                    continue
                r = json.loads(out.stdout.strip().splitlines()[-1])
                r["rounds_tok_per_s"] = rows.get(mode, {}).get("rounds_tok_per_s", []) + [r["tok_per_s"]]
                if r["tok_per_s"] >= rows.get(mode, {}).get("tok_per_s", 0):
                    rows[mode] = r
                else:
                    rows[mode]["rounds_tok_per_s"] = r["rounds_tok_per_s"]
        base = rows["mono_naive_fp32"]
        for r in rows.values():
            if "tok_per_s" in r and "tok_per_s" in base:
                r["speed_vs_mono_naive_fp32"] = round(r["tok_per_s"] / base["tok_per_s"], 3)
                r["memory_vs_mono_naive_fp32"] = round(r["peak_mib"] / base["peak_mib"], 3)
        results.append({"d_model": d, "depth": depth, "vocab": args.vocab, "batch": args.batch, "seq": args.seq,
                        "flop_ratio_mono_over_grow": flop_ratio(d, depth, args.vocab, args.seq),
                        "modes": list(rows.values())})
    print(json.dumps({"device": device, "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "machine": platform.processor() or platform.machine(), "results": results}, indent=1))


if __name__ == "__main__":
    main()
