"""Study 5, depth -> capability: bits per character and gold-answer bits per byte after each growth stage."""

from __future__ import annotations

from growlm.experiments.common import DOC_METRICS, measure, plan, train
from growlm.experiments.framework import SeedContext, Study, Verdict, cell, decide, fmt, paired, register
from growlm.model.saved import load_model
from growlm.training.plan import Recipe

DEPTH = {"default": 6, "quick": 2}
STAGE_STEPS = {"default": 100, "quick": 2}
# multiple-choice tasks whose gold-answer bits per byte are measured (those this checkout and its data have)
TASKS = ("arc_easy", "sciq", "piqa", "copa")
TASK_LIMIT = {"default": 200, "quick": 2}
QUICK_TASKS = ("sciq",)


def gold_bpb(model, vocab: str, quick: bool, log) -> dict:
    """Gold answer's bits per byte per task (the evaluation's metric), where the task and its metric exist."""
    from growlm.evaluate.runner import evaluate
    from growlm.substrate import Tokenizer

    tok = Tokenizer.load(vocab)
    out = {}
    for task in QUICK_TASKS if quick else TASKS:
        try:
            res = evaluate(model, tok, [task], limit=TASK_LIMIT["quick" if quick else "default"], progress=False)
        except (ValueError, FileNotFoundError, KeyError, ImportError) as e:
            log(f"depth: no gold bits per byte for {task}: {str(e).splitlines()[0][:160]}")
            continue
        value = _find(res["results"].get(task, {}), "gold_bpb")
        if value is not None:
            out[f"gold_bpb_{task}"] = round(value, 4)
    if out:
        out["gold_bpb"] = round(sum(out.values()) / len(out), 4)  # mean over the tasks measured
    return out


def _find(d, key: str):
    """The first ``key`` in a nested result (a number, or a dict with its mean)."""
    if isinstance(d, dict):
        if key in d:
            v = d[key]
            return (v.get("value", v.get("mean"))) if isinstance(v, dict) else v
        for v in d.values():
            found = _find(v, key)
            if found is not None:
                return found
    return None


def run(ctx: SeedContext) -> list[dict]:
    shape = "quick" if ctx.quick else "default"
    n, depth = STAGE_STEPS[shape], DEPTH[shape]
    stages = [{"name": f"grow-{i + 1}", "add": 1, "train_newest": 1, "steps": n} for i in range(depth)]
    raw = plan(ctx, stages, name="depth")
    run_dir = train(ctx, raw, "grown")
    vocab, rows = Recipe.from_dict(raw).substrate.vocab, []
    for i in range(depth):
        stage = run_dir / "stages" / f"stage-{i:02d}"
        row = {"arm": "grown", "depth": i + 1, **measure(ctx, stage, raw),
               **gold_bpb(load_model(stage), vocab, ctx.quick, ctx.log)}
        ctx.log(f"depth seed {ctx.seed} depth {i + 1}: val bpc {row['val_bpc']}, held-out {row['heldout_bpc']}")
        rows.append(row)
    return rows


def verdict(summary: dict) -> list[Verdict]:
    """Does each capability measure improve from depth 1 to the final depth (paired over seeds)?"""
    depths = sorted({r["depth"] for r in summary["rows"]})
    rows = []
    for m in ("heldout_bpc", "val_bpc", "gold_bpb"):
        first, last = cell(summary, m, depth=depths[0]), cell(summary, m, depth=depths[-1])
        if not (first and last):
            continue
        d = paired(last, first)
        if d is None:
            continue
        better = d["ci95"] is not None and d["ci95"][1] < 0
        rows.append(Verdict(
            f"Capability grows with depth: {m}, depth {depths[0]} -> {depths[-1]}",
            "MMLU 18.08% -> 21.63% from 1 to 6 layers",
            f"{fmt(first)} -> {fmt(last)}; change {fmt(d)}; rule: reproduced if the change's 95% interval lies below "
            "0 (lower is better). Depth k has also trained k stages of steps: depth and training are confounded here "
            "(no equal-steps control yet)", decide(better), cite="v1 §4.2, Fig. 5-6"))
    return rows


STUDY = register(Study(
    name="depth",
    title="Depth -> capability on a growth run: bpc and gold-answer bits per byte after each stage",
    claim="Capability grows with depth as blocks are stacked (v1 §4.2: MMLU and SQuAD rise from 1 to 6 layers)",
    run=run,
    metrics=("val_bpc", "heldout_bpc", "gold_bpb", *(f"gold_bpb_{t}" for t in TASKS), "val_bpc_en", "val_bpc_ru",
             "val_bpc_zh", "heldout_bpc_en", "heldout_bpc_ru", "heldout_bpc_zh", *DOC_METRICS),
    group=("arm", "depth"),
    plot_x="depth",
    notes=(f"one growth run of {DEPTH['default']} stages, one block each (the blocks below frozen), measured after "
           "every stage",
           "gold_bpb_TASK: the correct answer's bits per UTF-8 byte under the log-likelihood protocol, over the "
           "first questions of the task (lower is better); a task whose data or metric is missing is left out"),
    paper="MMLU 18.08% (1 layer) -> 21.63% (6 layers); SQuAD 1.21% -> 5.55% (v1 §4.2, Fig. 5)",
    verdict=verdict,
))
