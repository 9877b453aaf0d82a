"""Study 6, continual learning: add Chinese to a model trained on English and Russian, by growing new top blocks, by
composing a Chinese expert, or by fine-tuning the whole model; how much of the old languages does each forget?"""

from __future__ import annotations

import copy
from pathlib import Path

from growlm.data.tokens import open_data
from growlm.experiments.common import last_stage, measure, plan, plan_flops, runtime, train
from growlm.experiments.framework import VERDICTS, SeedContext, Study, Verdict, cell, decide, fmt, paired, register
from growlm.model.composition import METHODS, compose
from growlm.model.saved import load_model, save_model
from growlm.training.plan import Recipe
from growlm.training.validation import validate

BASE_DEPTH = {"default": 2, "quick": 2, "cpu10x": 6, "gpu": 6}  # base stages (one block each) on English + Russian
BASE_STEPS = {"default": 240, "quick": 2, "cpu10x": 75, "gpu": 300}  # per base stage
# steps on the new data, the same for every arm (the expert: split over BASE_DEPTH stages, the base's shape)
NEW_STEPS = {"default": 250, "quick": 2, "cpu10x": 250, "gpu": 1000}
REPLAY = 0.25  # share of old-language (EN+RU) sequences mixed into the Chinese training of (a) and (c)
OLD, NEW = ("en", "ru"), "zh"

BASE = "base (EN+RU)"
GROW = "(a) grow 1 block + replay"
GROW_FROZEN_HEAD = "(a') grow 1 block, head frozen + replay"
COMPOSE = "(b) ZH expert, logit average"
# composition methods of the base with the ZH expert, where this checkout has them (posterior: training-free weights)
COMPOSED = {"average": COMPOSE, "posterior": "(b) ZH expert, posterior mixture"}
EXPERT = "ZH expert alone"
FINETUNE = "(c) fine-tune all + replay"
GROW_NO_REPLAY = "(a0) grow 1 block, no replay"  # growlm's controls: the same arms on ZH alone
FINETUNE_NO_REPLAY = "(c0) fine-tune all, no replay"
NO_REPLAY = {"grow_no_replay": (GROW_NO_REPLAY, GROW), "finetune_no_replay": (FINETUNE_NO_REPLAY, FINETUNE)}

MIXTURES = {"old": {lang: 1.0 for lang in OLD},
            "new": {NEW: 1 - REPLAY, **{lang: REPLAY / len(OLD) for lang in OLD}},
            "zh": {NEW: 1.0}}


def plans(ctx: SeedContext) -> dict[str, dict]:
    """The recipes of one seed, each arm written as the base's stages followed by its own stage (what it costs from
    scratch): (a) a grown block, (a') the same with the LM head frozen, (c) a whole-model fine-tune; and (b)'s
    expert. The arms are trained on the one saved base (``on_base``)."""
    shape = ctx.shape
    nb, n_new, k = BASE_STEPS[shape], NEW_STEPS[shape], BASE_DEPTH[shape]
    base = [{"name": f"grow-{i + 1}", "add": 1, "train_newest": 1, "steps": nb, "mixture": "old"} for i in range(k)]

    def recipe(stages: list[dict], name: str) -> dict:
        raw = plan(ctx, stages, name=name)
        raw["data"]["mixtures"] = copy.deepcopy(MIXTURES)
        return raw

    expert_steps = [n_new // k] * (k - 1) + [n_new - n_new // k * (k - 1)]
    grow = {"name": "grow-zh", "add": 1, "train_newest": 1, "steps": n_new, "mixture": "new"}
    frozen_head = {**grow, "name": "grow-zh-head-frozen", "train_head": False}
    finetune = {"name": "finetune-zh", "add": 0, "train_newest": 2, "steps": n_new, "mixture": "new"}
    return {"base": recipe(base, "continual-base"),
            "grow": recipe([*base, grow], "continual-grow"),
            "grow_no_replay": recipe([*base, {**grow, "mixture": "zh"}], "continual-grow-no-replay"),
            "finetune_no_replay": recipe([*base, {**finetune, "mixture": "zh"}], "continual-finetune-no-replay"),
            "grow_frozen_head": recipe([*base, frozen_head], "continual-grow-head-frozen"),
            "finetune": recipe([*base, finetune], "continual-finetune"),
            "expert": recipe([{"name": f"zh-{i + 1}", "add": 1, "train_newest": 1, "steps": s, "mixture": "zh"}
                              for i, s in enumerate(expert_steps)], "continual-zh-expert")}


def on_base(raw: dict, base_model: Path) -> dict:
    """An arm's recipe as trained: its own stage grown on the saved base (``[model] init_from``)."""
    out = copy.deepcopy(raw)
    out["model"] = {"init_from": str(base_model)}
    out["stages"] = out["stages"][-1:]
    return out


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
    return [BASE, GROW, GROW_FROZEN_HEAD, *(label for m, label in COMPOSED.items() if m in METHODS), FINETUNE,
            GROW_NO_REPLAY, FINETUNE_NO_REPLAY, EXPERT]


def composed_dir(ctx: SeedContext, method: str, base_dir: Path, expert_dir: Path, raw: dict) -> Path:
    """The base and the Chinese expert composed by ``method``, validated (on the scale's device, in its precision)
    and saved (reused if saved)."""
    out = ctx.work / f"composed-{method}"
    if not (out / "model.json").exists():
        device, precision = runtime(ctx)
        composed = compose([load_model(base_dir).to(device), load_model(expert_dir).to(device)], method=method,
                           names=["base", "zh"])
        r = Recipe.from_dict(raw)
        val = validate(composed, open_data(r.data.path, r.substrate.vocab), r.train, device, precision=precision)
        save_model(composed, out, extra=val)
    return out


def run(ctx: SeedContext) -> list[dict]:
    p = plans(ctx)
    base_dir = last_stage(train(ctx, p["base"], "base"))  # trained once; every arm starts from it
    arm_runs = {k: train(ctx, on_base(p[k], base_dir), f"{k}-on-base")
                for k in ("grow", "grow_frozen_head", "finetune", *NO_REPLAY)}
    expert_run = train(ctx, p["expert"], "zh-expert")
    base_flops = plan_flops(p["base"])
    base = {"arm": BASE, **measure(ctx, base_dir, p["base"]), **base_flops, "added_flops": 0.0}
    expert = {"arm": EXPERT, **measure(ctx, last_stage(expert_run), p["expert"]), **plan_flops(p["expert"])}
    expert["added_flops"] = expert["train_flops"]
    rows = [base]
    composed = [(label, p["base"], composed_dir(ctx, m, base_dir, last_stage(expert_run), p["base"]))
                for m, label in COMPOSED.items() if m in METHODS]
    for arm, raw, model_dir in ((GROW, p["grow"], last_stage(arm_runs["grow"])),
                                (GROW_FROZEN_HEAD, p["grow_frozen_head"], last_stage(arm_runs["grow_frozen_head"])),
                                *composed, (FINETUNE, p["finetune"], last_stage(arm_runs["finetune"])),
                                *((NO_REPLAY[k][0], p[k], last_stage(arm_runs[k])) for k in NO_REPLAY)):
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


# the base's steps changed with these arms: rerun every seed from scratch (raw JSON and work both removed)
RUN_COMMAND = ("rm -r docs/data/experiments/continual/seed-*.json runs/experiments/continual; growlm experiment "
               "continual --out docs/data/experiments/continual --work runs/experiments/continual")


def _no_replay_rows(summary: dict) -> list[Verdict]:
    """growlm's replay controls: each arm without replay forgets more than with it, and growth without replay still
    forgets less than fine-tuning without replay ("not run yet" for a summary made before these arms existed)."""
    claims = [(f"Replaying {REPLAY:.0%} EN+RU while growing a block on ZH reduces forgetting (against growing on ZH "
               "alone)", GROW_NO_REPLAY, GROW, "more"),
              (f"Replaying {REPLAY:.0%} EN+RU while fine-tuning the whole model on ZH reduces forgetting (against "
               "fine-tuning on ZH alone)", FINETUNE_NO_REPLAY, FINETUNE, "more"),
              ("Without replay, growing a block on ZH forgets less than fine-tuning the whole model on ZH",
               GROW_NO_REPLAY, FINETUNE_NO_REPLAY, "less")]
    rows = []
    for claim, a, b, direction in claims:
        fa, fb = cell(summary, "forget_heldout", arm=a), cell(summary, "forget_heldout", arm=b)
        if not (fa and fb):
            rows.append(Verdict(claim, "–", f"not run yet: the arm {a!r} is newer than this summary "
                                f"(`{RUN_COMMAND}`)", VERDICTS[3], source="growlm"))
            continue
        d, side = paired(fa, fb), "above" if direction == "more" else "below"
        ok = d is not None and d["ci95"] is not None and (d["ci95"][0] > 0 if direction == "more" else d["ci95"][1] < 0)
        rows.append(Verdict(
            claim, "–", f"EN/RU held-out bpc change from the base: {a} {fmt(fa)} vs {b} {fmt(fb)} (difference "
            f"{fmt(d)}); rule: reproduced if the difference's 95% interval lies {side} 0",
            decide(ok), source="growlm"))
    return rows


def verdict(summary: dict) -> list[Verdict]:
    """Growth (and composition) against whole-model fine-tuning: less forgetting of EN/RU at comparable ZH bpc; and
    growlm's replay controls (the arms without replay)."""
    rows = []
    ft_forget, ft_zh = cell(summary, "forget_heldout", arm=FINETUNE), cell(summary, "heldout_bpc_zh", arm=FINETUNE)
    claims = [(GROW, "Growing new layers adds a language with less forgetting than fine-tuning the whole model",
               "paper", "v1 §5.3 (continual learning by extending the core model with new layers)"),
              (GROW_FROZEN_HEAD, "Growing new layers with the LM head frozen (only the new layer trains) adds a "
                                 "language with less forgetting than fine-tuning the whole model", "paper",
               "v1 §3.2 (only the newest layer trains) and §5.3")]
    claims += [(label, f"Adding a new expert ({label.split(', ')[1]}) adds a language with less forgetting than "
                       "fine-tuning the whole model", "growlm" if "posterior" in label else "paper",
                "" if "posterior" in label else "v1 §5.3 (adding new expert modules)")
               for label in COMPOSED.values()]
    for arm, claim, source, cite in claims:
        forget, zh = cell(summary, "forget_heldout", arm=arm), cell(summary, "heldout_bpc_zh", arm=arm)
        if not (forget and ft_forget and zh and ft_zh):
            continue
        d, dz = paired(forget, ft_forget), paired(zh, ft_zh)
        if not (d and dz):
            continue
        less = d["ci95"] is not None and d["ci95"][1] < 0
        comparable = dz["mean"] <= 0.05 * ft_zh["mean"]
        rows.append(Verdict(
            claim, "qualitative: 'drastically reducing the risk of catastrophic forgetting' (no number)"
            if source == "paper" else "–",
            f"EN/RU held-out bpc change from the base: {arm} {fmt(forget)} vs fine-tuning {fmt(ft_forget)} "
            f"(difference {fmt(d)}); ZH held-out bpc {fmt(zh)} vs {fmt(ft_zh)} (difference {fmt(dz)}); rule: "
            "reproduced if the forgetting difference's 95% interval lies below 0 and the ZH bpc is at most 5% above "
            "fine-tuning's", decide(less and comparable), source=source, cite=cite))
    if cell(summary, "forget_heldout", arm=FINETUNE):  # the study has data at all
        rows += _no_replay_rows(summary)
    return rows


# common.plan_flops at the default size; the tests check the study stays under 40 TFLOP for 3 seeds
FLOPS_NOTE = ("training FLOPs at the default size (common.plan_flops): the base 3.28 TFLOP, trained once per seed; "
              "on it (a) and (a0) add 1.75 each, (a') 1.21, (c) and (c0) 1.77 each, and the expert 1.71 TFLOP: 13.24 "
              "TFLOP per seed, 39.7 for 3 seeds (the base's stages went from 250 to 240 steps to make room for the "
              "no-replay arms); train_flops: the base plus the arm's stage (the composed arms: the base plus the "
              "expert); added_flops: the arm's own")


def study_flops(shape: str = "default") -> dict:
    """Training FLOPs of one seed as the study runs it (the base once, each arm's own stage on it, the expert)."""
    p = plans(SeedContext(seed=0, scale=shape, work=Path(".")))
    f = {k: plan_flops(raw)["train_flops"] for k, raw in p.items()}
    arms_added = sum(f[k] - f["base"] for k in ("grow", "grow_frozen_head", "finetune", *NO_REPLAY))
    return {**f, "seed": f["base"] + arms_added + f["expert"]}


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
    notes=(f"base: {BASE_DEPTH['default']} growth stages of {BASE_STEPS['default']} steps on EN+RU (1:1); every arm "
           f"then trains {NEW_STEPS['default']} steps on new data, starting from the one saved base: (a) one new top "
           f"block and the head on ZH with {REPLAY:.0%} replay of EN+RU (the base's blocks frozen); (a') the same with "
           "the head frozen too (only the new block trains, as paper v1 section 3.2 says); (c) every block and the "
           "head on the same mixture; (a0) and (c0): (a) and (c) on ZH alone, no replay (growlm's controls); (b) a "
           "ZH-only expert of the same shape grown from scratch on the same substrate (as many stages, the same "
           "steps in all), composed with the base by logit averaging (and, where growlm.model.composition has it, "
           "by the training-free posterior mixture); nothing trained after composing; 'ZH expert alone' for reference",
           "forget_SPLIT_LANG: the old language's bpc after minus the base's (> 0: forgotten; the base row is 0); "
           "forget_SPLIT: the mean over EN and RU; val = validation split, held-out = the shipped texts",
           FLOPS_NOTE),
    paper="v1 discussion: new knowledge added by new expert modules or new layers, 'drastically reducing the risk of "
          "catastrophic forgetting' (no measurement)",
    verdict=verdict,
))
