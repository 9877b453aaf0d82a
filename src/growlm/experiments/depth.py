"""Study 5, depth -> capability: bits per character and gold-answer scores after each growth stage, and an
equal-steps control (depth k against depth k-1 trained as long)."""

from __future__ import annotations

import copy
import math
from pathlib import Path

from growlm.evaluate.runner import evaluate
from growlm.experiments.common import DOC_METRICS, last_stage, measure, plan, plan_flops, runtime, scoring, train
from growlm.experiments.framework import (
    VERDICTS,
    SeedContext,
    Study,
    Verdict,
    cell,
    decide,
    fmt,
    paired,
    register,
)
from growlm.model.saved import load_model
from growlm.substrate import Tokenizer
from growlm.training.plan import Recipe

DEPTH = {"default": 6, "quick": 2, "cpu10x": 6, "gpu": 6}
STAGE_STEPS = {"default": 100, "quick": 2, "cpu10x": 75, "gpu": 300}
# the depths k whose equal-steps control trains (depth k-1 trained k stages of steps); the last is the final depth
CONTROL = {"default": (2, 4, 6), "quick": (2,), "cpu10x": (2, 4, 6), "gpu": (2, 4, 6)}
GROWN, CONTROL_ARM = "grown", "equal steps"
# multiple-choice tasks whose gold-answer scores are measured (those this checkout and its data have)
TASKS = ("arc_easy", "sciq", "piqa", "copa")
TASK_LIMIT = {"default": 200, "quick": 2, "cpu10x": 200, "gpu": 200}
QUICK_TASKS = ("sciq",)
# what each row keeps of the log-likelihood protocol's per-task scores (growlm.evaluate.multiple_choice.score_loglik)
GOLD = ("gold_bpb", "bpb_margin", "acc_norm")


def gold_scores(ctx: SeedContext, model, vocab: str) -> dict:
    """Per task (``GOLD``): the gold answer's bits per byte, its margin over the best wrong answer (bits per byte,
    wrong - gold) and length-normalised accuracy, as the evaluation scores them, on the scale's tasks and limit, on
    its device and in its precision; and each one's mean over the tasks measured. A task whose data or metric is
    missing is left out."""
    tok = Tokenizer.load(vocab)
    model.to(runtime(ctx)[0])
    out, measured = {}, []
    for task in QUICK_TASKS if ctx.quick else TASKS:
        try:
            with scoring(ctx):
                res = evaluate(model, tok, [task], limit=TASK_LIMIT[ctx.shape], progress=False)
        except (ValueError, FileNotFoundError, KeyError, ImportError) as e:
            ctx.log(f"depth: no gold-answer scores for {task}: {str(e).splitlines()[0][:160]}")
            continue
        scores = res["results"].get(task, {}).get("loglik", {})
        values = {m: (scores.get(m) or {}).get("value") for m in GOLD}
        if all(isinstance(v, (int, float)) and math.isfinite(v) for v in values.values()):
            out.update({f"{m}_{task}": round(v, 4) for m, v in values.items()})
            measured.append(task)
    for m in GOLD:
        if measured:
            out[m] = round(sum(out[f"{m}_{t}"] for t in measured) / len(measured), 4)
    return out


def growth_stages(shape: str) -> list[dict]:
    """The growth run: one block per stage (the blocks below frozen)."""
    return [{"name": f"grow-{i + 1}", "add": 1, "train_newest": 1, "steps": STAGE_STEPS[shape]}
            for i in range(DEPTH[shape])]


def extension(k: int, shape: str) -> dict:
    """The control's one stage: no block added; depth k-1's newest block and the head train another stage."""
    return {"name": f"extend-{k - 1}", "add": 0, "train_newest": 1, "steps": STAGE_STEPS[shape]}


def control_plan(raw: dict, base: Path, k: int, shape: str) -> dict:
    """Depth k-1 trained as long as depth k: the growth run's saved depth k-1 (``base``) extended by one stage,
    on batches of its own seed (the run's sampler state is not saved with a stage, and the run's seed would
    replay its first stage's batches)."""
    out = copy.deepcopy(raw)
    out["name"] = f"depth-equal-steps-{k}"
    out["model"] = {"init_from": str(base)}
    out["stages"] = [extension(k, shape)]
    out["train"]["seed"] = raw["train"]["seed"] + 1000 * k
    return out


def run(ctx: SeedContext) -> list[dict]:
    shape = ctx.shape
    n, depth = STAGE_STEPS[shape], DEPTH[shape]
    raw = plan(ctx, growth_stages(shape), name="depth")
    run_dir = train(ctx, raw, GROWN)
    vocab, rows = Recipe.from_dict(raw).substrate.vocab, []
    for i in range(depth):
        stage = run_dir / "stages" / f"stage-{i:02d}"
        row = {"arm": GROWN, "depth": i + 1, "train_steps": (i + 1) * n, **measure(ctx, stage, raw),
               **gold_scores(ctx, load_model(stage), vocab)}
        ctx.log(f"depth seed {ctx.seed} depth {i + 1}: val bpc {row['val_bpc']}, held-out {row['heldout_bpc']}")
        rows.append(row)
    for k in CONTROL[shape]:
        craw = control_plan(raw, run_dir / "stages" / f"stage-{k - 2:02d}", k, shape)
        stage = last_stage(train(ctx, craw, f"equal-steps-{k}"))
        row = {"arm": CONTROL_ARM, "depth": k - 1, "train_steps": k * n, **measure(ctx, stage, craw),
               **gold_scores(ctx, load_model(stage), vocab)}
        ctx.log(f"depth seed {ctx.seed} equal steps for depth {k}: held-out {row['heldout_bpc']}")
        rows.append(row)
    return rows


def study_flops(shape: str = "default") -> dict:
    """Training FLOPs of one seed (``plan_flops``): the growth run, and the controls (each one extension stage
    on a saved depth, counted as the extended plan less its saved prefix)."""
    ctx = SeedContext(seed=0, scale=shape, work=Path("."))
    stages = growth_stages(shape)
    flops = {k: plan_flops(plan(ctx, stages[:k]))["train_flops"] for k in range(1, DEPTH[shape] + 1)}
    control = sum(plan_flops(plan(ctx, [*stages[:k - 1], extension(k, shape)]))["train_flops"] - flops[k - 1]
                  for k in CONTROL[shape])
    return {GROWN: flops[DEPTH[shape]], CONTROL_ARM: control}


def _change(summary: dict, m: str, first: int, last: int) -> str | None:
    """``first -> last; change d`` of metric ``m`` on the growth run (None where the summary lacks it)."""
    a, b = cell(summary, m, arm=GROWN, depth=first), cell(summary, m, arm=GROWN, depth=last)
    d = paired(b, a)
    return None if d is None else f"{m} {fmt(a)} -> {fmt(b)} (change {fmt(d)})"


def verdict(summary: dict) -> list[Verdict]:
    """Does each capability measure improve from depth 1 to the final depth (paired over seeds)? And does the
    k-th block help beyond its extra training steps (growlm's control)?"""
    depths = sorted({r["depth"] for r in summary["rows"] if r.get("arm", GROWN) == GROWN})
    first, final = depths[0], depths[-1]
    rows = []
    for m in ("heldout_bpc", "val_bpc", "gold_bpb"):
        a, b = cell(summary, m, arm=GROWN, depth=first), cell(summary, m, arm=GROWN, depth=final)
        d = paired(b, a)
        if d is None:
            continue
        better = d["ci95"] is not None and d["ci95"][1] < 0
        beside = ""
        if m == "gold_bpb":
            more = [c for c in (_change(summary, g, first, final) for g in GOLD[1:]) if c]
            beside = ("; beside it (not judged; higher is better): " + ", ".join(more) if more else
                      "; its margin over the best wrong answer and acc_norm are not in this summary (rerun the study)")
        rows.append(Verdict(
            f"Capability grows with depth: {m}, depth {first} -> {final}",
            "MMLU 18.08% -> 21.63% from 1 to 6 layers",
            f"{fmt(a)} -> {fmt(b)}; change {fmt(d)}; rule: reproduced if the change's 95% interval lies below 0 "
            f"(lower is better){beside}. Depth k has also trained k stages of steps: growlm's equal-steps control "
            "(its own table) asks whether the block or the steps made the difference",
            decide(better), cite="v1 §4.2, Fig. 5-6"))
    rows.append(control_verdict(summary, final))
    return rows


def control_verdict(summary: dict, final: int) -> Verdict:
    """Held-out bpc of depth k minus that of depth k-1 trained as long, paired over seeds, at each k measured; the
    rule is judged at the final depth."""
    claim = ("The k-th block helps beyond its extra training steps: held-out bpc of depth k against depth k-1 "
             "trained as long (one more stage on its newest block and the head)")
    paper = "– (the paper's depth curve, v1 §4.2, has no equal-steps control)"
    ks = sorted(r["depth"] + 1 for r in summary["rows"] if r.get("arm") == CONTROL_ARM)
    diffs = {k: paired(cell(summary, "heldout_bpc", arm=GROWN, depth=k),
                       cell(summary, "heldout_bpc", arm=CONTROL_ARM, depth=k - 1)) for k in ks}
    parts = [f"k={k}: {fmt(d)}" for k, d in diffs.items() if d is not None]
    gold = paired(cell(summary, "gold_bpb", arm=GROWN, depth=final),
                  cell(summary, "gold_bpb", arm=CONTROL_ARM, depth=final - 1))
    measured = ("held-out bpc, depth k minus its equal-steps control, paired over seeds: " + "; ".join(parts)
                + (f"; gold_bpb at k={final}: {fmt(gold)}" if gold else "")
                + f"; rule: reproduced if the difference's 95% interval lies below 0 at the final depth ({final})")
    d = diffs.get(final)
    if d is None:
        return Verdict(claim, paper, f"no equal-steps control at the final depth {final} in this summary (`growlm "
                       "experiment depth --out docs/data/experiments/depth --work runs/experiments/depth`)",
                       VERDICTS[3], source="growlm")
    return Verdict(claim, paper, measured, decide(d["ci95"] is not None and d["ci95"][1] < 0), source="growlm")


STUDY = register(Study(
    name="depth",
    title="Depth -> capability on a growth run: bpc and gold-answer scores after each stage, and an equal-steps "
          "control",
    claim="Capability grows with depth as blocks are stacked (v1 §4.2: MMLU and SQuAD rise from 1 to 6 layers)",
    run=run,
    metrics=("val_bpc", "heldout_bpc", "gold_bpb", "bpb_margin", "acc_norm", "train_steps",
             *(f"{m}_{t}" for m in GOLD for t in TASKS), "val_bpc_en", "val_bpc_ru", "val_bpc_zh", "heldout_bpc_en",
             "heldout_bpc_ru", "heldout_bpc_zh", *DOC_METRICS),
    group=("arm", "depth"),
    plot_x="depth",
    notes=(f"grown: one growth run of {DEPTH['default']} stages of {STAGE_STEPS['default']} steps, one block each "
           "(the blocks below frozen, the head trained throughout), measured after every stage; depth k has "
           f"trained k x {STAGE_STEPS['default']} steps (train_steps)",
           f"equal steps (growlm's control, for k = {', '.join(map(str, CONTROL['default']))}): the growth run's "
           f"saved depth k-1 trains its newest block and the head one more stage of {STAGE_STEPS['default']} steps, "
           "no block added, so it has trained as many steps as depth k from the same starting model; its row sits "
           "at its own depth k-1. It draws batches of its own seed (the run's seed + 1000 k: the run's sampler "
           "state is not saved with a stage, and its seed would replay the first stage's batches). Training FLOPs "
           "per seed (plan_flops): 4.23 TFLOP for the growth run, +2.10 TFLOP (+49.6%) for the three controls",
           "gold_bpb_TASK: the correct answer's bits per UTF-8 byte under the log-likelihood protocol, over the "
           f"first {TASK_LIMIT['default']} questions of the task (lower is better); bpb_margin_TASK: per question "
           "the best wrong answer's bits per byte minus the gold answer's (> 0: the gold answer is preferred per "
           "byte), averaged; acc_norm_TASK: accuracy when the choice of highest log-likelihood per character wins "
           "(lm-eval's acc_norm; chance 1/choices: 0.25 for sciq, about 0.25 for arc_easy, 0.5 for piqa and "
           "copa); gold_bpb, bpb_margin, acc_norm: means over the tasks measured. A task whose data or metric is "
           "missing is left out"),
    paper="MMLU 18.08% (1 layer) -> 21.63% (6 layers); SQuAD 1.21% -> 5.55% (v1 §4.2, Fig. 5)",
    verdict=verdict,
))
