"""Growth-stage speed, MFU and memory against monolithic training, measured in rounds. Prints JSON.

For each shape it times optimiser steps of the same model in several modes, each mode in its
own subprocess (so its memory is its own):

* ``mono_naive``: every block and the head train, full [B*T, V] logits (the floor);
* ``mono``: the same with growlm's chunked head loss;
* ``grow``: a growth stage: the newest block, final norm and head train, the blocks below
  run under no_grad (growlm's frozen prefix), chunked loss;
* ``lora``: a LoRA phase: rank-8 adapters on every block but the newest, which trains fully;
* ``mono_compile`` / ``grow_compile`` (with ``--compile``): ``mono`` / ``grow`` compiled as the trainer
  compiles (``growlm.training.loop.compiled_blocks``: each block in place, the chunked head loss eager).

Every round runs every mode once, in turn; ratios are computed *within* a round (mode against
``mono`` of the same round, next to the FLOP-bound ratio from ``growlm.training.flops``) and reported as
median, min and max over the rounds. Each run times ``--steps`` (>= 8) steps after warm-up and
reports the median step time and its spread; peak memory (VmHWM reset before the timed part,
or CUDA's peak) and minor page faults / kernel-time share cover the timed steps only.

    python benchmarks/growth_speed.py                        # demo shape and 512 x 8, V 16384, 3 rounds
    python benchmarks/growth_speed.py --quick                # smaller, for a smoke test
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

MODES = ["mono_naive", "mono", "grow", "lora"]


def _vm(field: str) -> float:
    """A /proc/self/status field in MiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def one(mode: str, d_model: int, depth: int, vocab: int, batch: int, seq: int, steps: int, device: str,
        precision: str) -> dict:
    """Time ``steps`` optimiser steps of one mode; runs inside its own process."""
    import contextlib

    import torch
    import torch.nn.functional as F

    import growlm.training.flops as flops
    from growlm import Config, GrowLM
    from growlm.model import lora
    from growlm.training import plan as growth
    from growlm.training.loop import compiled_blocks
    from growlm.util.alloc import tune_allocator

    tuned = tune_allocator()  # as the trainer does (GROWLM_MALLOC=system: glibc's defaults)
    from growlm.substrate.binary import binary_matrix

    class Sub:  # a binary substrate without building a vocabulary: speed does not depend on its values
        def __init__(self):
            self.matrix = binary_matrix(vocab, d_model)
            self.fingerprint, self.spec = "bench", type("S", (), {"to_dict": lambda s: {}})()

    torch.manual_seed(0)
    cfg = Config.from_preset("paper", vocab_size=vocab, d_model=d_model, n_layer=depth, n_head=max(1, d_model // 64),
                             block_size=seq)
    model = GrowLM(cfg, Sub()).to(device)
    if mode.startswith("grow"):
        model.set_trainable([depth - 1])
    elif mode == "lora":
        growth.apply_stage(model, growth.Stage(name="lora", train_newest=1, lora=lora.LoRASpec(rank=8), steps=1))
    fl = flops.step_flops(model, seq)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=device == "cuda")
    x = torch.randint(0, vocab, (batch, seq), device=device)
    y = torch.randint(0, vocab, (batch, seq), device=device)
    bf16 = precision == "bf16"
    ctx = (lambda: torch.autocast(device, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
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

    with compiled_blocks(model, mode.endswith("compile")):
        for _ in range(3):  # warm-up: allocator, thread pool, compilation
            step()
        sync()
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM: peak RSS of the timed part only
        base_rss = _vm("VmRSS")
        r0, times = resource.getrusage(resource.RUSAGE_SELF), []
        for _ in range(steps):
            t = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - t)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else _vm("VmHWM")
    med = statistics.median(times)
    user, kern = r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime
    peak_hw = flops.peak_flops(device, precision)
    breakdown = _breakdown(step, 2, peak_hw) if device == "cpu" else {}  # after the timed part: it cannot skew it
    return {**breakdown, "mode": mode, "step_s_median": round(med, 4), "step_s_min": round(min(times), 4),
            "step_s_max": round(max(times), 4), "tok_per_s": round(batch * seq / med, 1),
            "flops_per_token": fl.total, "mfu": round(fl.total * batch * seq / med / peak_hw, 4),
            "peak_mib": round(peak, 1), "rss_before_timed_mib": round(base_rss, 1),
            "minor_faults_per_step": round((r1.ru_minflt - r0.ru_minflt) / steps, 1),
            "kernel_time_share": round(kern / max(1e-9, user + kern), 4),
            "allocator_tuned": tuned, "loss_first": round(losses[0], 4), "loss_last": round(losses[-1], 4)}


GEMMS = {"aten::mm": (0, 1), "aten::addmm": (1, 2), "aten::addmm_": (1, 2), "aten::bmm": (0, 1),
         "aten::baddbmm": (1, 2)}  # op -> positions of its [.., M, K] and [.., K, N] operands


def _breakdown(step, n_steps: int, peak: float) -> dict:
    """Where a step's time goes, from the profiler: the matrix multiplies' share of the time and the fraction of
    peak they reach on their own (the ceiling of the step's MFU at these shapes), and the largest other ops."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(n_steps):
            step()
    total = gemm_us = gemm_flops = 0.0
    other: dict[str, float] = {}
    for e in prof.key_averages(group_by_input_shape=True):
        total += e.self_cpu_time_total
        if e.key in GEMMS and e.input_shapes:
            a, b = (e.input_shapes[i] for i in GEMMS[e.key])
            batch = a[0] if len(a) == 3 else 1
            gemm_flops += 2.0 * batch * a[-2] * a[-1] * b[-1] * e.count
            gemm_us += e.self_cpu_time_total
        else:
            other[e.key] = other.get(e.key, 0.0) + e.self_cpu_time_total
    top = sorted(other.items(), key=lambda kv: -kv[1])[:5]
    return {"gemm_time_share": round(gemm_us / total, 3), "gemm_mfu": round(gemm_flops / (gemm_us * 1e-6) / peak, 3),
            "gemm_flops_per_step": gemm_flops / n_steps,
            "top_other_ms_per_step": {k: round(v / 1e3 / n_steps, 2) for k, v in top}}


def _spread(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3), "max": round(max(values), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="128x4,512x8", help="d_model x depth, comma-separated (128x4: the demo)")
    ap.add_argument("--vocab", type=int, default=16384)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=8, help="timed steps per run (at least 8)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; ratios are computed within each")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--compile", action="store_true", help="add torch.compile modes")
    ap.add_argument("--device", default=None)
    ap.add_argument("--quick", action="store_true", help="d_model 64 x 2, V 4096, 1 round")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(one(*json.loads(args.child))))
        return
    if args.steps < 8:
        ap.error(f"--steps {args.steps}: at least 8 timed steps are needed for a spread")
    import torch

    from growlm.training import flops

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.quick:
        args.configs, args.vocab, args.seq, args.rounds = "64x2", 4096, 64, 1
    modes = MODES + (["mono_compile", "grow_compile"] if args.compile else [])
    peak = flops.cpu_peak() if device == "cpu" else flops.gpu_peak(torch.device(device))
    results = []
    for shape in args.configs.split(","):
        d, depth = (int(v) for v in shape.split("x"))
        runs: dict[str, list[dict]] = {m: [] for m in modes}
        ratios: dict[str, list[float]] = {m: [] for m in modes}
        for _ in range(args.rounds):
            got = {}
            for mode in modes:
                payload = json.dumps([mode, d, depth, args.vocab, args.batch, args.seq, args.steps, device,
                                      args.precision])
                out = subprocess.run([sys.executable, __file__, "--child", payload], capture_output=True, text=True)
                if out.returncode != 0:
                    runs[mode].append({"error": out.stderr.strip().splitlines()[-3:]})
                    continue
                got[mode] = json.loads(out.stdout.strip().splitlines()[-1])
                runs[mode].append(got[mode])
            for mode, r in got.items():
                if "mono" in got:
                    ratios[mode].append(got["mono"]["step_s_median"] / r["step_s_median"])
        fl = {m: next((r["flops_per_token"] for r in runs[m] if "flops_per_token" in r), None) for m in modes}
        summary = {}
        for m in modes:
            ok = [r for r in runs[m] if "mfu" in r]
            if not ok:
                continue
            summary[m] = {"mfu": _spread([r["mfu"] for r in ok]), "tok_per_s": _spread([r["tok_per_s"] for r in ok]),
                          "speed_vs_mono": _spread(ratios[m]),
                          "flop_bound_speed_vs_mono": round(fl["mono"] / fl[m], 3) if fl.get("mono") else None,
                          "peak_mib": _spread([r["peak_mib"] for r in ok]),
                          "minor_faults_per_step": _spread([r["minor_faults_per_step"] for r in ok]),
                          "kernel_time_share": _spread([r["kernel_time_share"] for r in ok])}
            if all("gemm_mfu" in r for r in ok):
                summary[m]["gemm_mfu"] = _spread([r["gemm_mfu"] for r in ok])
                summary[m]["gemm_time_share"] = _spread([r["gemm_time_share"] for r in ok])
            if summary[m]["flop_bound_speed_vs_mono"]:
                summary[m]["speed_over_flop_bound"] = round(summary[m]["speed_vs_mono"]["median"]
                                                            / summary[m]["flop_bound_speed_vs_mono"], 3)
        results.append({"d_model": d, "depth": depth, "vocab": args.vocab, "batch": args.batch, "seq": args.seq,
                        "summary": summary, "runs": runs})
    from growlm.experiments.framework import provenance

    prov = provenance()
    print(json.dumps({"commit": prov["commit"], "dirty": prov["dirty"],
                      "command": " ".join(["python benchmarks/growth_speed.py", *sys.argv[1:]]),
                      "device": device, "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "precision": args.precision, "peak": peak, "rounds": args.rounds, "steps": args.steps,
                      "machine": flops._cpu_key().split("|")[0] if device == "cpu" else peak.get("name"),
                      "python": platform.python_version(), "results": results}, indent=1))


if __name__ == "__main__":
    main()
