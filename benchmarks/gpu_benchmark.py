"""Training throughput, MFU and peak memory at the paper's 9-layer shape on a GPU. Prints JSON.

The paper's shape (src/growlm/recipes/paper-v3-9layer.toml): d_model 1024, 32 heads, context 1024,
V = 65,536, paper blocks. Two settings, each with ``torch.compile`` off and on, in bf16:

* ``mono``: monolithic training, all 9 blocks and the head train;
* ``grow``: the last growth stage, 3 new blocks and the head train on top of 6 frozen blocks
  (which run without an autograd graph).

Every setting is a real run of growlm's trainer (``growlm.training.run.grow`` on a generated recipe,
a frozen ``random`` substrate since speed does not depend on its values, the embedded corpus
tokenised with the paper's vocabulary), followed by a resume of the finished run. Tokens/s and MFU
are the trainer's own per-step metrics (metrics.jsonl, ``log_every = 1``), median/min/max over the
steps after ``--warmup``; peak memory is CUDA's peak allocated (and reserved) bytes over the run.

That path reaches every CUDA-only branch of the training code: the device per LOCAL_RANK and the
NCCL process group (under torchrun), fused AdamW, bf16 by ``precision = "auto"`` and the
accelerator's peak from growlm.training.flops, ``torch.compile`` in the stage loop, the CUDA RNG state saved
in checkpoints and restored on resume, and with ``--parallel fsdp`` FSDP2's bf16 mixed-precision
policy over NCCL (``--activation-checkpointing`` for the recompute path).

    python benchmarks/gpu_benchmark.py                                  # 1 GPU: mono/grow x compile off/on
    torchrun --nproc_per_node 8 benchmarks/gpu_benchmark.py --parallel fsdp --work /scratch/bench
    python benchmarks/gpu_benchmark.py --smoke                          # tiny CPU shape: the code path only

Not yet run on a GPU: it was written on a machine without one, and only ``--smoke`` (CPU) has run.
Without CUDA and without ``--smoke`` it refuses. ``--smoke`` numbers measure nothing of interest.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from growlm.training.metrics import read_metrics
from growlm.training.plan import Recipe
from growlm.training.run import grow
from growlm.util.provenance import git_commit

PAPER = dict(preset="paper", d_model=1024, n_head=32, block_size=1024, vocab="bvv241-2-3", depth=9, grown=3)
SMOKE = dict(preset="tiny", d_model=32, n_head=2, block_size=32, vocab="compact", depth=3, grown=1)


def recipe(shape: dict, mode: str, compiled: bool, args) -> Recipe:
    """The run of one setting: ``mono`` trains every block from depth 0, ``grow`` the newest on a frozen stack."""
    below = shape["depth"] - shape["grown"] if mode == "grow" else 0
    trained = shape["depth"] - below
    return Recipe.from_dict({
        "name": f"gpu-benchmark-{mode}",
        "model": {"preset": shape["preset"], "d_model": shape["d_model"], "n_head": shape["n_head"],
                  "block_size": shape["block_size"], "n_layer": below},
        "substrate": {"kind": "random", "vocab": shape["vocab"]},
        "data": {"path": "default"},
        "train": {"batch_size": args.batch, "seq_len": shape["block_size"], "grad_accum": args.grad_accum,
                  "warmup_steps": 2, "log_every": 1, "val_every": 0, "ckpt_every": 0,
                  "val_tokens": shape["block_size"] * 2,
                  "precision": args.precision, "compile": "true" if compiled else "false", "parallel": args.parallel,
                  "activation_checkpointing": args.activation_checkpointing},
        "stages": [{"name": mode, "add": trained, "train_newest": trained, "steps": args.steps}],
    })


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)} if values else {}


def run_one(shape: dict, mode: str, compiled: bool, args, work: Path, device: str) -> dict:
    """Train one setting, then resume the finished run; the trainer's per-step records give the figures."""
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    if compiled:
        torch._dynamo.reset()  # each setting compiles its own graphs
    out = work / f"{mode}-compile{int(compiled)}"
    quiet = dict(progress=False, log=lambda *a, **k: None)
    t0 = time.perf_counter()
    grow(recipe(shape, mode, compiled, args), out, device=device, **quiet)
    wall = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()) if cuda else (None, None)
    grow(Recipe.load(out / "plan.json"), out, resume=True, device=device, **quiet)  # restores the saved RNG states
    steps = [r for r in read_metrics(out / "metrics.jsonl") if r["type"] == "train"][args.warmup:]
    return {"mode": mode, "compile": compiled, "timed_steps": len(steps),
            "tok_per_s": spread([r["tok_per_s"] for r in steps]), "mfu": spread([r["mfu"] for r in steps]),
            "flops_per_token": steps[0]["flops_per_token"] if steps else None,
            "peak_allocated_gib": peak[0] / 2**30 if peak[0] is not None else None,
            "peak_reserved_gib": peak[1] / 2**30 if peak[1] is not None else None, "wall_s": round(wall, 1)}


def commit() -> str:
    """HEAD's commit ("" outside a git checkout)."""
    return git_commit(Path(__file__).parent)[0]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="a tiny shape that runs on CPU (checks the code path only)")
    p.add_argument("--modes", default="mono,grow", help="comma-separated: mono, grow")
    p.add_argument("--compile", default="false,true", help="comma-separated compile settings to run")
    p.add_argument("--steps", type=int, default=30, help="optimiser steps per setting")
    p.add_argument("--warmup", type=int, default=5, help="first steps left out of the figures (compilation)")
    p.add_argument("--batch", type=int, default=16, help="global batch in sequences")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--precision", default="bf16", choices=["auto", "bf16", "fp32"])
    p.add_argument("--parallel", default="ddp", choices=["ddp", "fsdp"], help="how torchrun's processes share")
    p.add_argument("--activation-checkpointing", action="store_true", help="recompute the trained blocks")
    p.add_argument("--work", help="directory for the runs (required under torchrun; default: a temporary one)")
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args(argv)

    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        sys.exit("gpu_benchmark: no CUDA device here. It measures the paper's 9-layer shape on a GPU; "
                 "run it with --smoke for a tiny CPU check of the code path.")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not args.work:
        sys.exit("gpu_benchmark: under torchrun every process must see the same run directories; give --work DIR")
    if args.steps <= args.warmup:
        sys.exit(f"gpu_benchmark: --steps {args.steps} leaves nothing after --warmup {args.warmup}")
    shape = SMOKE if args.smoke else PAPER
    device = "cuda" if cuda and not args.smoke else "cpu"
    modes = [m for m in args.modes.split(",") if m]
    compiles = [c.strip().lower() == "true" for c in args.compile.split(",") if c]
    bad = [m for m in modes if m not in ("mono", "grow")]
    if bad:
        sys.exit(f"gpu_benchmark: unknown mode(s) {bad}; valid: mono, grow")

    tmp = None
    if args.work:
        work = Path(args.work)
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="growlm-gpu-bench-")
        work = Path(tmp.name)
    try:
        results = [run_one(shape, m, c, args, work, device) for m in modes for c in compiles]
    finally:
        if tmp is not None:
            tmp.cleanup()
    report = {"benchmark": "gpu_benchmark", "commit": commit(), "machine": platform.node(),
              "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
              "torch": torch.__version__, "world": world, "smoke": args.smoke,
              "shape": {k: shape[k] for k in ("d_model", "n_head", "block_size", "vocab", "depth", "grown")},
              "batch": args.batch, "grad_accum": args.grad_accum, "precision": args.precision,
              "parallel": args.parallel, "activation_checkpointing": args.activation_checkpointing,
              "steps": args.steps, "warmup": args.warmup, "results": results}
    if int(os.environ.get("RANK", "0")) == 0:
        text = json.dumps(report, indent=1)
        print(text)
        if args.out:
            from growlm.util.fileio import atomic_write_text

            atomic_write_text(Path(args.out), text + "\n")
    return report


if __name__ == "__main__":
    main()
