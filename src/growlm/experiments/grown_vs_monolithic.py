"""Study 2, grown vs monolithic: layer-by-layer growth against monolithic baselines at equal training tokens and at
equal training FLOPs."""

from __future__ import annotations

from growlm.experiments.common import last_stage, measure, plan, plan_flops, train
from growlm.experiments.framework import SeedContext, Study, register

DEPTH = 4
STAGE_STEPS = {"default": 100, "quick": 2}  # per growth stage; the monolithic models get DEPTH x this at equal tokens

FROZEN = {}  # the frozen substrate, every block trained together (the paper's "monolithic, frozen interface")
TRAINABLE = {"trainable_embedding": True, "embedding_init": "random"}  # the fully trainable baseline


def run(ctx: SeedContext) -> list[dict]:
    n = STAGE_STEPS["quick" if ctx.quick else "default"]
    grown_stages = [{"name": f"grow-{i + 1}", "add": 1, "train_newest": 1, "steps": n} for i in range(DEPTH)]

    def mono(steps: int) -> list[dict]:
        return [{"name": "all", "add": DEPTH, "train_newest": DEPTH, "steps": steps}]

    grown = plan(ctx, grown_stages, name="grown")
    budget = plan_flops(grown)
    arms = [("grown", "-", grown)]
    for label, model in (("monolithic frozen", FROZEN), ("monolithic trainable", TRAINABLE)):
        arms.append((label, "equal tokens", plan(ctx, mono(DEPTH * n), model=model, name=label)))
        per_step = plan_flops(plan(ctx, mono(1), model=model))["train_flops"]
        steps = max(1, round(budget["train_flops"] / per_step))  # the grown run's FLOPs, in this model's steps
        arms.append((label, "equal FLOPs", plan(ctx, mono(steps), model=model, name=label)))
    rows = []
    for arm, match, raw in arms:
        run_dir = train(ctx, raw, f"{arm.replace(' ', '-')}{'' if match == '-' else '-' + match.split()[1]}")
        row = {"arm": arm, "matched": match, **measure(ctx, last_stage(run_dir), raw), **plan_flops(raw)}
        row["steps"] = sum(s["steps"] for s in raw["stages"])
        ctx.log(f"grown-vs-monolithic seed {ctx.seed} {arm} ({match}): val bpc {row['val_bpc']}, "
                f"held-out {row['heldout_bpc']}, {row['train_flops']:.3g} FLOPs")
        rows.append(row)
    return rows


STUDY = register(Study(
    name="grown-vs-monolithic",
    title="Grown layer by layer vs monolithic (frozen interface, fully trainable) at equal tokens and equal FLOPs",
    claim="growing layer by layer on a frozen substrate reaches the quality of monolithic training with fewer active "
          "trainable parameters (v3: 105.0M grown vs 180.5M monolithic frozen vs 247.6M fully trainable at d 1024, "
          "9 layers) and trains faster per step",
    run=run,
    metrics=("val_bpc", "heldout_bpc", "train_flops", "tokens", "active_params", "val_bpc_en", "val_bpc_ru",
             "val_bpc_zh", "heldout_bpc_en", "heldout_bpc_ru", "heldout_bpc_zh"),
    group=("arm", "matched"),
    notes=(f"grown: {DEPTH} stages, each adds one block and trains it with the head (the blocks below frozen, run "
           "without autograd); monolithic: the same final model trained whole",
           "train_flops count matmuls of forward and backward as the step runs: a growth stage's backward covers only "
           "the newest block and the head; equal FLOPs gives the monolithic model the grown run's total",
           "active_params: trainable parameters in the last stage"),
))
