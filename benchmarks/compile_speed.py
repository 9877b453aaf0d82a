"""Does ``[train] compile`` pay on this machine? Eager against compiled optimiser steps, same run. Prints JSON.

Two copies of one model at the demo shape (recipes/demo.toml: d_model 128, 4 heads, compact vocabulary
V = 16384, seq 128, batch 16) take the same steps through ``growlm.training.loop.Loop.step``, the trainer's own step;
one of them runs its blocks under ``growlm.training.loop.compiled_blocks`` (torch.compile, inductor), the head's
chunked loss stays eager as in the trainer. Settings:

* ``grow``: the demo's last growth stage: 4 blocks, the newest trains, 3 run under no_grad (frozen prefix);
* ``lora``: the demo's LoRA phase: 3 blocks, rank-8 adapters on every block, the head trains;
* ``mono``: 4 blocks, everything trains (monolithic training).

Compilation (the first ``--warmup`` compiled steps, after the eager copy's own warm-up) is timed apart.
Then eager and compiled steps alternate, ``--steps`` (>= 8) of each, and the speed-up is the ratio of each
eager step to the compiled step right after it: median, min and max over the pairs, so that the load of a
shared machine hits both sides alike. The load average is printed before and after.

    python benchmarks/compile_speed.py                  # grow, lora, mono at the demo shape, 10 timed pairs
    python benchmarks/compile_speed.py --quick          # d_model 32, V 2048, seq 32: a smoke test
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time

import torch

from growlm import Config, GrowLM
from growlm.model import lora
from growlm.training.loop import Loop, build_optimizer, compiled_blocks
from growlm.training.plan import TrainSpec

SETTINGS = ("grow", "lora", "mono")


def make_model(setting: str, d_model: int, n_head: int, vocab: int, seq: int) -> GrowLM:
    """A model at the shape, random frozen embedding, set up for the setting's trainable part."""
    torch.manual_seed(0)
    depth = 3 if setting == "lora" else 4
    cfg = Config.from_preset("demo", vocab_size=vocab, d_model=d_model, n_head=n_head, n_layer=depth,
                             block_size=seq)
    model = GrowLM(cfg)
    model.embedding.normal_(0.0, 1.0)
    if setting == "grow":
        model.set_trainable([depth - 1])
    elif setting == "lora":
        model.set_trainable([])
        lora.attach_to_blocks(model, lora.LoRASpec(rank=8, alpha=16), list(range(depth)))
    elif setting != "mono":
        raise ValueError(f"unknown setting {setting!r}; valid: {SETTINGS}")
    return model


def timed(loop: Loop, opt, x, y) -> float:
    """Seconds of one optimiser step."""
    t = time.perf_counter()
    loop.step(opt, x, y, lr=1e-4)
    return time.perf_counter() - t


def spread(values: list[float], digits: int = 4) -> dict:
    """Median, min and max."""
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits)}


def run(setting: str, args) -> dict:
    """Warm up both copies, time compilation, then alternate eager and compiled steps."""
    train = TrainSpec(batch_size=args.batch, seq_len=args.seq, warmup_steps=0, compile="false")
    eager = make_model(setting, args.d_model, args.n_head, args.vocab, args.seq)
    comp = copy.deepcopy(eager)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, args.vocab, (args.batch, args.seq), generator=g)
    y = torch.randint(0, args.vocab, (args.batch, args.seq), generator=g)
    loops = {name: Loop(m, train) for name, m in (("eager", eager), ("compiled", comp))}
    opts = {name: build_optimizer(m, train, torch.device("cpu")) for name, m in (("eager", eager), ("compiled", comp))}
    for _ in range(args.warmup):
        timed(loops["eager"], opts["eager"], x, y)
    with compiled_blocks(comp):
        compile_s = [timed(loops["compiled"], opts["compiled"], x, y) for _ in range(args.warmup)]
        times: dict[str, list[float]] = {"eager": [], "compiled": []}
        for _ in range(args.steps):
            for name in ("eager", "compiled"):
                times[name].append(timed(loops[name], opts[name], x, y))
    ratios = [e / c for e, c in zip(times["eager"], times["compiled"])]
    drift = max((p - q).abs().max().item() for p, q in zip(eager.parameters(), comp.parameters()))
    return {"setting": setting, "timed_pairs": args.steps, "warmup_compiled_steps_s": [round(t, 2) for t in compile_s],
            "eager_step_s": spread(times["eager"]), "compiled_step_s": spread(times["compiled"]),
            "speedup_eager_over_compiled": spread(ratios, 3),
            "max_weight_difference_after_all_steps": drift}


def main(argv: list[str] | None = None) -> dict:
    """Parse arguments, run every setting, print and return the JSON report."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated, from {SETTINGS}")
    ap.add_argument("--steps", type=int, default=10, help="timed steps of each side (>= 8)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps of each side; the compiled ones compile")
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=16384)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--quick", action="store_true", help="tiny shapes (d_model 32, V 2048, seq 32, batch 4)")
    args = ap.parse_args(argv)
    if args.quick:
        args.d_model, args.n_head, args.vocab, args.seq, args.batch = 32, 2, 2048, 32, 4
    if args.steps < 8:
        ap.error("--steps must be at least 8")
    if args.warmup < 1:
        ap.error("--warmup must be at least 1 (the compiled side compiles there)")
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    bad = set(settings) - set(SETTINGS)
    if bad:
        ap.error(f"unknown settings {sorted(bad)}; valid: {SETTINGS}")
    load_before = os.getloadavg()
    results = [run(s, args) for s in settings]
    from growlm.experiments.framework import provenance

    prov = provenance()
    report = {"commit": prov["commit"], "dirty": prov["dirty"],
              "command": " ".join(["python benchmarks/compile_speed.py", *(sys.argv[1:] if argv is None else argv)]),
              "machine": {"cpu": prov["machine"], "platform": platform.platform(), "cpus": os.cpu_count(),
                          "threads": torch.get_num_threads(),
                          "torch": torch.__version__, "loadavg_before": [round(v, 2) for v in load_before],
                          "loadavg_after": [round(v, 2) for v in os.getloadavg()]},
              "shape": {"d_model": args.d_model, "n_head": args.n_head, "vocab": args.vocab, "seq": args.seq,
                        "batch": args.batch},
              "results": results}
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
