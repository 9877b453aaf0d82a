"""Study 6, continual learning: add Chinese to a model trained on English and Russian, by growing new top blocks, by
composing a Chinese expert, or by fine-tuning the whole model; how much of the old languages does each forget?"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from growlm.experiments.common import last_stage, measure, plan, plan_flops, train
from growlm.experiments.framework import SeedContext, Study, cell, fmt, paired, register

BASE_STEPS = {"default": 250, "quick": 2}  # per base stage; the base has two (depth 2) on English + Russian
NEW_STEPS = {"default": 250, "quick": 2}  # steps on the new data, the same for every arm (the expert: over 2 stages)
REPLAY = 0.25  # share of old-language (EN+RU) sequences mixed into the Chinese training of (a) and (c)
OLD, NEW = ("en", "ru"), "zh"

BASE = "base (EN+RU)"
GROW = "(a) grow 1 block + replay"
COMPOSE = "(b) ZH expert, logit average"
# composition methods of the base with the ZH expert, where this checkout has them (posterior: training-free weights)
COMPOSED = {"average": COMPOSE, "posterior": "(b) ZH expert, posterior mixture"}
EXPERT = "ZH expert alone"
FINETUNE = "(c) fine-tune all + replay"

MIXTURES = {"old": {lang: 1.0 for lang in OLD},
            "new": {NEW: 1 - REPLAY, **{lang: REPLAY / len(OLD) for lang in OLD}},
            "zh": {NEW: 1.0}}


def plans(ctx: SeedContext) -> dict[str, dict]:
    """The recipes of one seed: the base followed by (a) a grown block or (c) a whole-model fine-tune, and (b)'s
    expert; (a) and (c) share the base's stages, so they grow the very same base (the trainer is deterministic)."""
    shape = "quick" if ctx.quick else "default"
    nb, n_new = BASE_STEPS[shape], NEW_STEPS[shape]
    base = [{"name": f"grow-{i + 1}", "add": 1, "train_newest": 1, "steps": nb, "mixture": "old"} for i in range(2)]

    def recipe(stages: list[dict], name: str) -> dict:
        raw = plan(ctx, stages, name=name)
        raw["data"]["mixtures"] = copy.deepcopy(MIXTURES)
        return raw

    expert_steps = [n_new // 2, n_new - n_new // 2]
    grow = {"name": "grow-zh", "add": 1, "train_newest": 1, "steps": n_new, "mixture": "new"}
    finetune = {"name": "finetune-zh", "add": 0, "train_newest": 2, "steps": n_new, "mixture": "new"}
    return {"base": recipe(base, "continual-base"),
            "grow": recipe([*base, grow], "continual-grow"),
            "finetune": recipe([*base, finetune], "continual-finetune"),
            "expert": recipe([{"name": f"zh-{i + 1}", "add": 1, "train_newest": 1, "steps": s, "mixture": "zh"}
                              for i, s in enumerate(expert_steps)], "continual-zh-expert")}


def forgetting(row: dict, base: dict) -> dict:
    """Each old language's bpc change from the base (after - before; > 0 is forgetting), validation and held-out,
    and their means over the old languages."""
    out = {}
    for split in ("val", "heldout"):
        deltas = [round(row[f"{split}_bpc_{lang}"] - base[f"{split}_bpc_{lang}"], 4) for lang in OLD]
        out.update({f"forget_{split}_{lang}": d for lang, d in zip(OLD, deltas)})
        out[f"forget_{split}"] = round(sum(deltas) / len(deltas), 4)
    return out


def arms() -> list[str]:
    """The rows of one seed, in order (the composition methods this checkout has)."""
    from growlm.compose import METHODS

    return [BASE, GROW, *(label for m, label in COMPOSED.items() if m in METHODS), FINETUNE, EXPERT]


def composed_dir(ctx: SeedContext, method: str, base_dir: Path, expert_dir: Path, raw: dict) -> Path:
    """The base and the Chinese expert composed by ``method``, validated and saved (reused if saved)."""
    import torch

    from growlm.checkpoint import load_model, save_model
    from growlm.compose import compose
    from growlm.growth import Recipe
    from growlm.train import open_data, validate

    out = ctx.work / f"composed-{method}"
    if not (out / "model.json").exists():
        composed = compose([load_model(base_dir), load_model(expert_dir)], method=method, names=["base", "zh"])
        t = Recipe.from_dict(raw).train
        val = validate(composed, open_data(raw["data"]["path"], raw["substrate"]["vocab"]), t, torch.device("cpu"))
        save_model(composed, out, extra=val)
    return out


def run(ctx: SeedContext) -> list[dict]:
    from growlm.compose import METHODS

    p = plans(ctx)
    grow_run = train(ctx, p["grow"], "grow")
    finetune_run = train(ctx, p["finetune"], "finetune")
    expert_run = train(ctx, p["expert"], "zh-expert")
    base_dir = grow_run / "stages" / "stage-01"  # the base, as (a) and (c) both grew it
    same = [json.loads((r / "stages" / "stage-01" / "model.json").read_text(encoding="utf-8"))["val_bpc"]
            for r in (grow_run, finetune_run)]
    if same[0] != same[1]:  # the trainer is deterministic on CPU; say so where it was not
        ctx.log(f"continual seed {ctx.seed}: (a) and (c) grew different bases (val bpc {same[0]} vs {same[1]}); "
                "forgetting is measured from (a)'s")
    base_flops = plan_flops(p["base"])
    base = {"arm": BASE, **measure(ctx, base_dir, p["base"]), **base_flops, "added_flops": 0.0}
    expert = {"arm": EXPERT, **measure(ctx, last_stage(expert_run), p["expert"]), **plan_flops(p["expert"])}
    expert["added_flops"] = expert["train_flops"]
    rows = [base]
    composed = [(label, p["base"], composed_dir(ctx, m, base_dir, last_stage(expert_run), p["base"]))
                for m, label in COMPOSED.items() if m in METHODS]
    for arm, raw, model_dir in ((GROW, p["grow"], last_stage(grow_run)), *composed,
                                (FINETUNE, p["finetune"], last_stage(finetune_run))):
        row = {"arm": arm, **measure(ctx, model_dir, raw)}
        if arm in COMPOSED.values():  # the base's training and the expert's
            row.update(train_flops=base_flops["train_flops"] + expert["train_flops"],
                       tokens=base_flops["tokens"] + expert["tokens"], added_flops=expert["train_flops"])
        else:
            row.update(plan_flops(raw))
            row["added_flops"] = row["train_flops"] - base_flops["train_flops"]
        rows.append(row)
    rows.append(expert)
    for row in rows:
        if row["arm"] != EXPERT:
            row.update(forgetting(row, base))
        ctx.log(f"continual seed {ctx.seed} {row['arm']}: held-out bpc " +
                ", ".join(f"{lang} {row[f'heldout_bpc_{lang}']}" for lang in (*OLD, NEW)) +
                (f"; forgetting (held-out, EN/RU mean) {row['forget_heldout']:+.4f}" if "forget_heldout" in row
                 else "") + f"; {row['added_flops']:.3g} FLOPs added")
    return rows


def verdict(summary: dict) -> list[tuple[str, str, str, str]]:
    """Growth (and composition) against whole-model fine-tuning: less forgetting of EN/RU at comparable ZH bpc."""
    rows = []
    ft_forget, ft_zh = cell(summary, "forget_heldout", arm=FINETUNE), cell(summary, "heldout_bpc_zh", arm=FINETUNE)
    claims = [(GROW, "Growing new layers adds a language with less forgetting than fine-tuning the whole model (v1 "
                     "discussion: growth enables continual learning)")]
    claims += [(label, f"Adding a new expert ({label.split(', ')[1]}) adds a language with less forgetting than "
                       "fine-tuning the whole model (v1 discussion)") for label in COMPOSED.values()]
    for arm, claim in claims:
        forget, zh = cell(summary, "forget_heldout", arm=arm), cell(summary, "heldout_bpc_zh", arm=arm)
        if not (forget and ft_forget and zh and ft_zh):
            continue
        d, dz = paired(forget, ft_forget), paired(zh, ft_zh)
        if not (d and dz):
            continue
        less = d["ci95"] is not None and d["ci95"][1] < 0
        comparable = dz["mean"] <= 0.05 * ft_zh["mean"]
        rows.append((claim, "qualitative: 'drastically reducing the risk of catastrophic forgetting' (no number)",
                     f"EN/RU held-out bpc change from the base: {arm} {fmt(forget)} vs fine-tuning {fmt(ft_forget)} "
                     f"(difference {fmt(d)}); ZH held-out bpc {fmt(zh)} vs {fmt(ft_zh)} (difference {fmt(dz)}); "
                     "rule: reproduced if the forgetting difference's 95% interval lies below 0 and the ZH bpc is "
                     "at most 5% above fine-tuning's", "reproduced" if less and comparable
                     else "not reproduced at this scale"))
    return rows


# common.plan_flops at the default size; the tests check the study stays under 40 TFLOP for 3 seeds
FLOPS_NOTE = ("training FLOPs at the default size (common.plan_flops): the base 3.4 TFLOP, trained twice (as the start "
              "of (a) and of (c)); (a) adds 1.75, (c) 1.77, the expert 1.71 TFLOP: 12.1 TFLOP per seed, 36.2 for "
              "3 seeds; added_flops: the arm's training beyond the base (the composed arm: the expert's)")


def study_flops(shape: str = "default") -> dict:
    """Training FLOPs of one seed as the study runs it ((a) and (c) each grow the base, then the expert)."""
    p = plans(SeedContext(seed=0, quick=shape == "quick", work=Path(".")))
    f = {k: plan_flops(raw)["train_flops"] for k, raw in p.items()}
    return {**f, "seed": f["grow"] + f["finetune"] + f["expert"]}


STUDY = register(Study(
    name="continual",
    title="Continual learning: add Chinese to an English+Russian model by growth, by composing an expert, or by "
          "fine-tuning the whole model; forgetting of the old languages and bpc on the new one",
    claim="Growth and composition let a model learn new data 'drastically reducing the risk of catastrophic "
          "forgetting' (v1 discussion; never measured in the paper)",
    run=run,
    metrics=("forget_heldout", "heldout_bpc_zh", "forget_val", "val_bpc_zh", "added_flops", "forget_heldout_en",
             "forget_heldout_ru", "forget_val_en", "forget_val_ru", "heldout_bpc_en", "heldout_bpc_ru", "val_bpc_en",
             "val_bpc_ru", "heldout_bpc", "val_bpc", "train_flops", "tokens"),
    notes=(f"base: 2 growth stages of {BASE_STEPS['default']} steps on EN+RU (1:1); every arm then trains "
           f"{NEW_STEPS['default']} steps on new data: (a) one new top block and the head on ZH with {REPLAY:.0%} "
           "replay of EN+RU (the base's blocks frozen); (c) every block and the head on the same mixture; (b) a "
           "ZH-only expert of the same shape grown from scratch on the same substrate (2 stages, the same steps in "
           "all), composed with the base by logit averaging (and, where growlm.compose has it, by the training-free "
           "posterior mixture); nothing trained after composing; 'ZH expert alone' for reference",
           "forget_SPLIT_LANG: the old language's bpc after minus the base's (> 0: forgotten; the base row is 0); "
           "forget_SPLIT: the mean over EN and RU; val = validation split, held-out = the shipped texts",
           FLOPS_NOTE),
    paper="v1 discussion: new knowledge added by new expert modules or new layers, 'drastically reducing the risk of "
          "catastrophic forgetting' (no measurement)",
    verdict=verdict,
))
