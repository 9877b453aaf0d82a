"""Residual-write init of grown blocks: scaled by the depth at insertion, or by the plan's final depth.

GPT-2 initialises the linears that write into the residual stream with std 0.02 / sqrt(2 * depth).
A growing model can use the depth it has right after the insertion (growlm's default, init_depth = 0)
or the depth the plan will reach (init_depth = final depth, as a monolithic model of that depth
would). This runs the demo recipe's stages, shortened, with both choices and several seeds, and
prints JSON: validation loss after every stage and the first training loss after every insertion.

    nice python benchmarks/residual_init.py --seeds 0 1 --scale 0.25 --batch-size 8 > docs/residual_init.json
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from growlm.training.metrics import read_metrics
from growlm.training.plan import Recipe
from growlm.training.run import grow
from growlm.util.provenance import git_commit


def run_once(base: Recipe, init_depth: int, seed: int, scale: float, batch_size: int) -> dict:
    raw = copy.deepcopy(base.raw)
    raw["model"]["init_depth"] = init_depth
    raw["train"].update(seed=seed, batch_size=batch_size, ckpt_every=0, val_every=0, log_every=1)
    for st in raw["stages"]:
        st["steps"] = max(1, round(st["steps"] * scale))
    recipe = Recipe.from_dict(raw)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        grow(recipe, Path(tmp) / "run", device="cpu", progress=False, log=lambda *a: None)
        seconds = time.perf_counter() - t0
        rows = read_metrics(Path(tmp) / "run" / "metrics.jsonl")
    ends = [r for r in rows if r["type"] == "stage_end"]
    starts = [r for r in rows if r["type"] == "stage"]
    first_loss = []  # the training loss of the first step of every stage
    for s in starts:
        first = next(r for r in rows if r["type"] == "train" and r["stage"] == s["stage"])
        first_loss.append(first["loss"])
    return {"init_depth": init_depth, "seed": seed, "seconds": round(seconds, 1),
            "stages": [s["name"] for s in starts], "val_loss": [e["val_loss"] for e in ends],
            "val_bpc_mean": [e["val_bpc_mean"] for e in ends], "first_train_loss": first_loss}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="demo")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--scale", type=float, default=0.25, help="share of each stage's steps that is run")
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    base = Recipe.load(args.recipe)
    final = sum(st.add for st in base.stages) + base.config().n_layer
    runs = [run_once(base, d, s, args.scale, args.batch_size) for s in args.seeds for d in (0, final)]
    summary = {}
    for d in (0, final):
        rs = [r for r in runs if r["init_depth"] == d]
        summary[f"init_depth={d}"] = {
            "final_val_loss_mean": round(sum(r["val_loss"][-1] for r in rs) / len(rs), 4),
            "final_val_loss_per_seed": [r["val_loss"][-1] for r in rs]}
    commit, _ = git_commit()
    print(json.dumps({"script": "benchmarks/residual_init.py", "args": vars(args), "commit": commit,
                      "machine": f"{platform.machine()} {platform.processor() or ''} "
                                 f"{torch.get_num_threads()} threads, torch {torch.__version__}".strip(),
                      "final_depth": final, "summary": summary, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
