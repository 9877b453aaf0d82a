"""The loss spike when a block is stacked, for each way a new block can start. Prints JSON.

Takes a trained model (default: the depth-3 stage of the demo run), stacks one block started
``fresh`` (random, as in the paper), ``identity`` (output projections zeroed) or ``copy`` (of
the block below), and trains only that block and the head for a few steps on the same batches.
Reports the validation loss before insertion, right after it, and the training loss curve. The
controlled study (inits x head schedules, seeds, recovery) is `growlm experiment insertion-spike`.

    python benchmarks/insertion_spike.py --model runs/demo/grow/stages/stage-02 --steps 60
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import torch

from growlm.data.tokens import open_data
from growlm.model.saved import load_model
from growlm.training.loop import Hooks, Loop, RunState, build_optimizer, lr_at
from growlm.training.plan import Recipe, Stage
from growlm.training.stages import begin_stage
from growlm.training.validation import validate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="runs/demo/grow/stages/stage-02")
    ap.add_argument("--recipe", default="demo", help="recipe whose data and [train] settings are used")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--lr", type=float, default=2e-3)
    args = ap.parse_args()
    recipe = Recipe.load(args.recipe)
    train = recipe.train
    out = {"model": args.model, "steps": args.steps, "inits": {}}
    for init in ("fresh", "identity", "copy"):
        model = load_model(args.model)
        data = open_data(recipe.data.path, model.substrate_spec["vocab"])
        before = validate(model, data, train, torch.device("cpu"))["val_loss"]
        torch.manual_seed(0)
        begin_stage(model, Stage(name=f"add-{init}", add=1, init=init, train_newest=1, steps=args.steps))
        after = validate(model, data, train, torch.device("cpu"))["val_loss"]
        opt = build_optimizer(model, train, torch.device("cpu"))
        gen = torch.Generator().manual_seed(train.seed)
        mix = data.mixture(None)
        curve: list[float] = []
        # growlm's own loop (fp32, every step logged), as a growth stage runs it
        Loop(model, replace(train, log_every=1)).run(
            opt, args.steps, RunState(stage_started=True),
            batches=lambda d=data, m=mix, g=gen: d.sample_batch(m, train.batch_size, train.seq_len, g),
            lr_of=lambda step: lr_at(step, args.steps, args.lr, train.warmup_steps, train.min_lr_ratio),
            hooks=Hooks(log=lambda _, s, c=curve: c.append(round(s.loss, 4))))
        end = validate(model, data, train, torch.device("cpu"))["val_loss"]
        out["inits"][init] = {"val_before_insertion": before, "val_right_after": after,
                              "spike": round(after - before, 4), "train_loss_first_steps": curve[:5],
                              "max_train_loss": max(curve), "val_after_steps": end}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
