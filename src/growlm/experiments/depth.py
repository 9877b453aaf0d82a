"""Study 5, depth -> capability: bits per character and gold-answer bits per byte after each growth stage."""

from __future__ import annotations

from growlm.checkpoint import load_model
from growlm.experiments.common import measure, plan, train
from growlm.experiments.framework import SeedContext, Study, register

DEPTH = 6
STAGE_STEPS = {"default": 100, "quick": 2}
# multiple-choice tasks whose gold-answer bits per byte are measured (those this checkout and its data have)
TASKS = ("arc_easy", "sciq", "piqa", "copa")
TASK_LIMIT = {"default": 200, "quick": 4}


def gold_bpb(model, vocab: str, quick: bool, log) -> dict:
    """Gold answer's bits per byte per task (the evaluation's metric), where the task and its metric exist."""
    from growlm.evaluate.runner import evaluate
    from growlm.substrate import Tokenizer

    tok = Tokenizer.load(vocab)
    out = {}
    for task in TASKS:
        try:
            res = evaluate(model, tok, [task], limit=TASK_LIMIT["quick" if quick else "default"], progress=False)
        except (ValueError, FileNotFoundError, KeyError, ImportError) as e:
            log(f"depth: no gold bits per byte for {task}: {str(e).splitlines()[0][:160]}")
            continue
        value = _find(res["results"].get(task, {}), "gold_bpb")
        if value is not None:
            out[f"gold_bpb_{task}"] = round(value, 4)
    return out


def _find(d, key: str):
    """The first ``key`` in a nested result (a number, or a dict with its mean)."""
    if isinstance(d, dict):
        if key in d:
            v = d[key]
            return v.get("mean") if isinstance(v, dict) else v
        for v in d.values():
            found = _find(v, key)
            if found is not None:
                return found
    return None


def run(ctx: SeedContext) -> list[dict]:
    n = STAGE_STEPS["quick" if ctx.quick else "default"]
    stages = [{"name": f"grow-{i + 1}", "add": 1, "train_newest": 1, "steps": n} for i in range(DEPTH)]
    raw = plan(ctx, stages, name="depth")
    run_dir = train(ctx, raw, "grown")
    rows = []
    for i in range(DEPTH):
        stage = run_dir / "stages" / f"stage-{i:02d}"
        row = {"arm": "grown", "depth": i + 1, **measure(ctx, stage, raw),
               **gold_bpb(load_model(stage), raw["substrate"]["vocab"], ctx.quick, ctx.log)}
        ctx.log(f"depth seed {ctx.seed} depth {i + 1}: val bpc {row['val_bpc']}, held-out {row['heldout_bpc']}")
        rows.append(row)
    return rows


STUDY = register(Study(
    name="depth",
    title="Depth -> capability on a growth run: bpc and gold-answer bits per byte after each stage",
    claim="capability grows with depth: v1-v3 report MMLU/ARC/CSQA/SQuAD scores rising as layers are added "
          "(e.g. v3 Table: the grown 9-layer model's scores increase stage by stage; reasoning tasks such as "
          "SQuAD appear only at greater depth)",
    run=run,
    metrics=("val_bpc", "heldout_bpc", *(f"gold_bpb_{t}" for t in TASKS), "val_bpc_en", "val_bpc_ru", "val_bpc_zh",
             "heldout_bpc_en", "heldout_bpc_ru", "heldout_bpc_zh"),
    group=("arm", "depth"),
    plot_x="depth",
    notes=(f"one growth run of {DEPTH} stages, one block each (the blocks below frozen), measured after every stage",
           "gold_bpb_TASK: the correct answer's bits per UTF-8 byte under the log-likelihood protocol, over the "
           "first questions of the task (lower is better); a task whose data or metric is missing is left out"),
))
