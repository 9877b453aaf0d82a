"""Study 4, composition: experts on different language mixtures, composed by every method, measured per language.

Per seed, three experts are grown with one plan on one substrate, each on its own mixture (EN+RU, EN+ZH, RU+ZH).
Two compositions are built from them: the paper's pair (EN+RU with EN+ZH) and all three. Each composition is
measured with every method: ``average`` (the paper's logit average), ``prob`` (mixture of distributions),
``posterior`` over the whole window and over a sliding window (training-free), ``adapter`` and ``router`` after
a short fine-tune on all three languages, and ``average + fine-tune`` (the paper's further training of the merged
model, v1 §4.1: the average with its experts' LM heads trained; its validation bpc before the first step is recorded
as ``val_bpc_step0``). Every model, expert or composed, is scored with the same code: the
validation split of each language and the shipped held-out texts, in bits per character.

The control (issue 20 §2): does merging need the frozen substrate? Two more experts, EN+RU and EN+ZH with the same
plan, data and seed but a learned token embedding (``LEARNED``: each starts from the same random table, as the frozen
experts share one substrate), composed as the paper's pair by the training-free methods and ``average + fine-tune``
(``ComposedLM(own_embeddings=True)``: each expert embeds its input with its own table). Their rows carry the
expert names suffixed ``(learned emb)``.
"""

from __future__ import annotations

import torch

from growlm.data.tokens import open_data
from growlm.experiments.common import (
    DOC_METRICS,
    heldout_row,
    last_stage,
    plan,
    plan_flops,
    runtime,
    scoring,
    size,
    train,
)
from growlm.experiments.framework import (
    VERDICTS,
    SeedContext,
    Study,
    Verdict,
    cell,
    decide,
    fmt,
    mean_interval,
    paired,
    register,
    summary_scale,
)
from growlm.experiments.heldout import LANGUAGES, heldout_scores
from growlm.model.saved import load_model
from growlm.training.compose_plan import ComposePipeline, ComposeStep, ExpertStep
from growlm.training.flops import counted_flops
from growlm.training.plan import Recipe
from growlm.training.validation import validate

DEPTH = {"default": 2, "quick": 1, "cpu10x": 6, "gpu": 6}  # growth stages per expert, one block each
STAGE_STEPS = {"default": 200, "quick": 2, "cpu10x": 75, "gpu": 300}
FINETUNE_STEPS = {"default": 40, "quick": 2, "cpu10x": 40, "gpu": 100}
# the adapter's per-token scales need a small rate (compose-demo); the average's trained heads are the experts'
# own, already trained, so they continue at a small rate too
FINETUNE_LR = {"adapter": 3e-4, "router": 3e-3, "average": 3e-4}
# the sliding-window posterior's tokens (seq_len is 64 / 16)
WINDOW = {"default": 16, "quick": 4, "cpu10x": 32, "gpu": 128}

# expert name -> data mixture (languages of the embedded corpus, equal weights)
EXPERTS = {"en+ru": {"en": 1.0, "ru": 1.0}, "en+zh": {"en": 1.0, "zh": 1.0}, "ru+zh": {"ru": 1.0, "zh": 1.0}}
# row label (the member names joined by ", ") -> members
COMPOSITIONS = {"en+ru, en+zh": ("en+ru", "en+zh"), "en+ru, en+zh, ru+zh": ("en+ru", "en+zh", "ru+zh")}
PAIR = "en+ru, en+zh"
FINETUNED = ("adapter", "router", "average")  # methods with a "+ fine-tune" row (average: its heads train)
AVERAGE_FT = "average + fine-tune"
# the control: experts with a learned token embedding (the same random init for every expert, from the same seed;
# the fairer control, since the frozen substrate is itself one init shared by the experts), composed as the pair
LEARNED = {"trainable_embedding": True, "embedding_init": "random"}
SUFFIX = " (learned emb)"
CONTROL = {f"{n}{SUFFIX}": n for n in PAIR.split(", ")}  # control expert -> the frozen expert whose data it shares
CONTROL_PAIR = ", ".join(CONTROL)
# a seed's raw JSON is read back, not rerun: remove it so the seed reruns (the experts in --work are reused)
RUN_COMMAND = ("rm docs/data/experiments/composition/seed-*.json; growlm experiment composition --out "
               "docs/data/experiments/composition --work runs/experiments/composition")


def methods(shape: str) -> list[tuple[str, str, int]]:
    """(row label, composition method, posterior window) for every method of the study."""
    w = WINDOW[shape]
    return [("average", "average", 0), ("prob", "prob", 0), ("posterior", "posterior", 0),
            (f"posterior (window {w})", "posterior", w),
            *[(f"{m} + fine-tune", m, 0) for m in FINETUNED]]


def control_methods(shape: str) -> list[tuple[str, str, int]]:
    """The methods the learned-embedding control runs: the training-free ones and ``average + fine-tune`` (the
    adapter and router would apply too, each expert embedding its own input, but are left out to save budget)."""
    return [m for m in methods(shape) if not is_finetuned(m[0]) or m[0] == AVERAGE_FT]


def run_name(name: str) -> str:
    """The run directory of expert ``name``: ``expert-en-ru``, ``expert-en-ru-learned``."""
    return "expert-" + name.removesuffix(SUFFIX).replace("+", "-") + ("-learned" if name.endswith(SUFFIX) else "")


def is_finetuned(label: str) -> bool:
    """Whether a row label of ``methods`` names a fine-tuned composition."""
    return label.endswith(" + fine-tune")


def expert_plan(ctx: SeedContext, name: str) -> dict:
    """The growth plan of one expert: DEPTH stages of one block each, every stage on the expert's mixture (a
    ``CONTROL`` expert: its frozen twin's plan with a learned embedding)."""
    shape = ctx.shape
    stages = [{"name": f"grow-{i + 1}", "add": 1, "train_newest": 1, "steps": STAGE_STEPS[shape],
               "mixture": "expert"} for i in range(DEPTH[shape])]
    raw = plan(ctx, stages, name=run_name(name), model=dict(LEARNED) if name in CONTROL else None)
    raw["data"]["mixtures"] = {"expert": dict(EXPERTS[CONTROL.get(name, name)])}
    return raw


def score(ctx: SeedContext, model: torch.nn.Module, data, raw: dict, heldout: bool = True) -> dict:
    """Validation-split and held-out bits per character per language (and their means), the same for any model on
    the scale's device and in its precision (``heldout=False``: the validation split only)."""
    spec = Recipe.from_dict(raw).train
    device, precision = runtime(ctx)
    model.to(device).eval()
    val = validate(model, data, spec, device, precision=precision)["val_bpc"]
    row = {f"val_bpc_{k}": v for k, v in val.items()}
    if heldout:
        with scoring(ctx):
            held = heldout_scores(model, raw["substrate"]["vocab"], spec.seq_len,
                                  max_chars=size(ctx)["heldout_chars"])
        row.update(heldout_row(held))
    row["val_bpc"] = round(sum(val.values()) / len(val), 4)
    return row


def gaps(row: dict, members: list[dict]) -> dict:
    """Worst relative gap to the best member expert over the languages: max_L (bpc_L / min_k bpc_k,L - 1)."""
    out = {}
    for split in ("val", "heldout"):
        rel = [row[f"{split}_bpc_{lang}"] / min(m[f"{split}_bpc_{lang}"] for m in members) - 1
               for lang in LANGUAGES if f"{split}_bpc_{lang}" in row]
        out[f"gap_{split}"] = round(max(rel), 5)
    return out


def finetune_flops(model, raw: dict, steps: int) -> float:
    """Training FLOPs of ``steps`` fine-tuning steps of a composed model (counted by running one sequence where the
    model is)."""
    seq, batch = raw["train"]["seq_len"], raw["train"]["batch_size"]
    device = next(model.parameters()).device
    return counted_flops(model, seq, model.vocab_size, device).total * seq * batch * steps


def pipeline(ctx: SeedContext) -> ComposePipeline:
    """The study's grow -> compose -> fine-tune steps: every expert, then each composition by every method; the
    FINETUNED methods fine-tuned on all three languages at the study's own rates (FINETUNE_LR)."""
    shape = ctx.shape
    experts = [ExpertStep(name, Recipe.from_dict(expert_plan(ctx, name))) for name in (*EXPERTS, *CONTROL)]
    runs = [(names, methods(shape)) for names in COMPOSITIONS.values()] + [(tuple(CONTROL), control_methods(shape))]
    steps = [ComposeStep(label=row_label, experts=tuple(names), method=method, window=window,
                         finetune_steps=FINETUNE_STEPS[shape] if is_finetuned(row_label) else 0,
                         lr=FINETUNE_LR[method] if is_finetuned(row_label) else None,
                         train_heads=is_finetuned(row_label) and method == "average",
                         mixture={lang: 1.0 for lang in LANGUAGES} if is_finetuned(row_label) else None,
                         own_embeddings=names[0] in CONTROL)
             for names, labels in runs for row_label, method, window in labels]
    train_spec = experts[0].recipe.train  # the shared shape: sequence length, batch, validation, seed
    return ComposePipeline(experts, steps, train_spec, seed=train_spec.seed)  # seeded: the adapter's projection


def run(ctx: SeedContext) -> list[dict]:
    plan_ = pipeline(ctx)
    device = runtime(ctx)[0]  # experts, compositions and fine-tunes all live there (a fine-tune trains where it is)
    experts, rows, by_name = {}, [], {}
    data = None
    for ex in plan_.experts:
        name, raw = ex.name, ex.recipe.raw
        run_dir = train(ctx, raw, run_name(name))
        experts[name] = load_model(last_stage(run_dir)).to(device).eval()
        data = data or open_data(ctx.data, raw["substrate"]["vocab"])
        row = {"experts": name, "method": "expert", **score(ctx, experts[name], data, raw), **plan_flops(raw)}
        ctx.log(f"composition seed {ctx.seed} expert {name}: val bpc {row['val_bpc']}, held-out {row['heldout_bpc']}")
        rows.append(row)
        by_name[name] = row
    raw = plan_.experts[0].recipe.raw  # the shared shape, as a dict (scoring, fine-tune FLOPs)
    for step in plan_.steps:
        label, names = ", ".join(step.experts), step.experts
        model = plan_.build(step, experts).to(device)  # an adapter's or router's new weights are made on the CPU
        flops, step0 = 0.0, {}
        if step.finetuned:
            if step.train_heads:  # the paper's curve starts at the merged model's loss before further training
                step0 = {"val_bpc_step0": score(ctx, model, data, raw, heldout=False)["val_bpc"]}
            out = ctx.work / (f"finetune-{step.method}{'-heads' if step.train_heads else ''}-{len(names)}"
                              f"{'-learned' if step.own_embeddings else ''}")
            flops = finetune_flops(model, raw, step.finetune_steps)
            if (out / "model" / "model.json").exists():
                model = load_model(out / "model").to(device)
            else:
                ctx.log(f"-- fine-tune {step.method} ({label})")
                plan_.finetune(step, model, data, out, progress=False, log=lambda *a, **k: None,
                               validation=False)  # scored below, as every other row
        row = {"experts": label, "method": step.label, **score(ctx, model, data, raw), **step0}
        row.update(gaps(row, [by_name[n] for n in names]))
        row["train_flops"] = flops
        ctx.log(f"composition seed {ctx.seed} {step.label} ({label}): val bpc {row['val_bpc']}, held-out "
                f"{row['heldout_bpc']}, worst gap to the best expert {row['gap_val']:+.2%} (val), "
                f"{row['gap_heldout']:+.2%} (held-out)")
        rows.append(row)
    return rows


GOAL = 0.02  # the goal for the training-free posterior: within 2% of the best expert on every language
NEAR = 0.05  # "approaches the experts": the averaged model within 5% of the best expert on every language


def _gap_text(summary: dict, experts: str, method: str) -> tuple[str, float | None]:
    """'val gap x, held-out gap y' of one row, and the larger of the two means (None when absent)."""
    v, h = cell(summary, "gap_val", experts=experts, method=method), cell(summary, "gap_heldout", experts=experts,
                                                                          method=method)
    if not (v and h):
        return "not measured", None
    return (f"worst-language gap to the best expert {_pct(v)} (validation), {_pct(h)} (held-out)",
            max(v["mean"], h["mean"]))


def _pct(c: dict) -> str:
    """A gap cell (a fraction) as ``+x.xx% ± y.yy%``."""
    half = f" ± {100 * (c['ci95'][1] - c['mean']):.2f}%" if c.get("ci95") else ""
    return f"{100 * c['mean']:+.2f}%{half}"


def _beats(summary: dict, metric: str) -> tuple[str, bool] | None:
    """'average a vs expert b (difference d), ...' over the pair's experts, and whether the average is lower than
    each of them with the paired difference's 95% interval below 0."""
    avg = cell(summary, metric, experts=PAIR, method="average")
    parts, ok = [], avg is not None
    for name in PAIR.split(", "):
        e = cell(summary, metric, experts=name, method="expert")
        d = paired(avg, e)
        if not d:
            return None
        parts.append(f"{name} {fmt(e)} (difference {fmt(d)})")
        ok = ok and d["ci95"] is not None and d["ci95"][1] < 0
    return f"{metric.replace('_', ' ')}: average {fmt(avg)} vs {', '.join(parts)}", ok


def _further_training(summary: dict) -> Verdict:
    """The paper's further training of the merged model: the average, its heads fine-tuned, ends below its own step-0
    loss and below the better expert ("not run yet" for a summary made before the arm existed)."""
    claim = ("Trained further, the merged model converges below its step-0 loss (the logit average of EN+RU and EN+ZH "
             "experts, then fine-tuned)")
    paper = "step-0 validation loss 2.7, then 2.044 after further training (best_bvv_moe, Fig. 1; Fig. 2 alike)"
    start, end = (cell(summary, m, experts=PAIR, method=AVERAGE_FT) for m in ("val_bpc_step0", "val_bpc"))
    if not (start and end):
        return Verdict(claim, paper, f"not run yet: the arm {AVERAGE_FT!r} is newer than this summary "
                       f"(`{RUN_COMMAND}`)", VERDICTS[3], cite="v1 §4.1, Fig. 1-2")
    d, shape = paired(end, start), summary_scale(summary)
    best = min((c for c in (cell(summary, "val_bpc", experts=n, method="expert") for n in PAIR.split(", ")) if c),
               key=lambda c: c["mean"], default=None)
    ok = d is not None and d["ci95"] is not None and d["ci95"][1] < 0
    return Verdict(
        claim, paper,
        f"validation bpc of the average at step 0 {fmt(start)}, after {FINETUNE_STEPS[shape]} fine-tuning steps of "
        f"its experts' heads on EN+RU+ZH {fmt(end)} (difference {fmt(d)}); the better expert's "
        f"final {fmt(best)}; rule: reproduced if the fine-tuned loss is below the step-0 loss with the paired "
        "difference's 95% interval below 0", decide(ok), cite="v1 §4.1, Fig. 1-2")


def average_gain(summary: dict, experts: str, metric: str) -> list[float | None] | None:
    """Per seed, the logit average's ``metric`` relative to its better member expert's, avg / min_k expert_k - 1
    (below 0: the average is better); None where the summary lacks the rows."""
    avg = cell(summary, metric, experts=experts, method="average")
    members = [cell(summary, metric, experts=n, method="expert") for n in experts.split(", ")]
    if not avg or not all(members):
        return None
    out = []
    for i, a in enumerate(avg["values"]):
        own = [m["values"][i] for m in members]
        out.append(None if a is None or None in own else a / min(own) - 1)
    return out


def _needs_substrate(summary: dict) -> Verdict | None:
    """The control: the average's gain over its better expert, frozen substrate vs learned embeddings, paired over
    seeds (None for a summary with no average; "not run yet" for one made before the control existed)."""
    claim = ("Merging by logit averaging needs the shared frozen substrate: the average of EN+RU and EN+ZH experts "
             "gains more over its better expert on the frozen glyph substrate than with learned embeddings")
    if average_gain(summary, PAIR, "val_bpc") is None:
        return None
    if average_gain(summary, CONTROL_PAIR, "val_bpc") is None:
        return Verdict(claim, "– (the paper's argument, not a measurement)", "not run yet: the learned-embedding "
                       f"experts are newer than this summary (`{RUN_COMMAND}`)", VERDICTS[3], source="growlm")
    parts, ok = [], True
    for metric in ("val_bpc", "heldout_bpc"):
        frozen, learned = average_gain(summary, PAIR, metric), average_gain(summary, CONTROL_PAIR, metric)
        if frozen is None or learned is None:
            return None
        d = [f - c for f, c in zip(frozen, learned) if f is not None and c is not None]
        if not d:
            return None
        diff = mean_interval(d)
        mean = {k: mean_interval([v for v in vs if v is not None]) for k, vs in (("f", frozen), ("l", learned))}
        parts.append(f"{metric.replace('_', ' ')}: average / better expert - 1 = {_pct(mean['f'])} frozen, "
                     f"{_pct(mean['l'])} learned (paired difference {_pct(diff)})")
        ok = ok and diff["ci95"] is not None and diff["ci95"][1] < 0
    gaps_ = [f"{e}: {_gap_text(summary, e, 'average')[0]}" for e in (PAIR, CONTROL_PAIR)]
    return Verdict(
        claim, "– (the paper's argument for the frozen substrate, not a measurement)",
        f"{'; '.join(parts)}; worst-language gaps, {'; '.join(gaps_)}; rule: reproduced if the frozen-substrate "
        "average's gain is larger (its relative bpc lower) with the paired difference's 95% interval below 0, on "
        "validation and held-out", decide(ok), source="growlm")


def verdict(summary: dict) -> list[Verdict]:
    """The paper's merge claims on the logit average (it beats each of its experts; its loss before any further
    training is close to the experts' final loss), growlm's stricter per-language rule, and growlm's goal for the
    training-free posterior."""
    rows = []
    checks = [r for r in (_beats(summary, m) for m in ("val_bpc", "heldout_bpc", "val_bpc_en", "heldout_bpc_en")) if r]
    if checks:
        rows.append(Verdict(
            "Experts trained on EN+RU and EN+ZH merged by averaging their logits, with no re-training, beat each of "
            "their experts", "the merged model surpasses its constituent experts (MMLU, Fig. 3; no per-language "
            "figure)", f"{'; '.join(t for t, _ in checks)} (the three-language mean and English, the language both "
            "experts share); rule: reproduced if the average is below each expert with the paired difference's 95% "
            "interval below 0, on every one of these", decide(all(ok for _, ok in checks)),
            cite="v1 abstract, §4.1, Fig. 3"))
    avg = cell(summary, "val_bpc", experts=PAIR, method="average")
    best = min((c for c in (cell(summary, "val_bpc", experts=n, method="expert") for n in PAIR.split(", ")) if c),
               key=lambda c: c["mean"], default=None)
    if avg and best:
        rel = avg["mean"] / best["mean"] - 1
        rows.append(Verdict(
            "The merged model starts from a low loss, close to its experts' final loss, before any further training",
            "step-0 validation loss 2.7, close to the experts' final loss; 2.044 after further training (Fig. 1)",
            f"validation bpc of the untrained average {fmt(avg)} vs the better expert's final {fmt(best)} "
            f"({rel:+.1%}); rule: reproduced if the average is at most {NEAR:.0%} above the better expert",
            decide(rel <= NEAR), cite="v1 §4.1, Fig. 1-2"))
    if avg:
        rows.append(_further_training(summary))
    text, worst = _gap_text(summary, PAIR, "average")
    if worst is not None:
        rows.append(Verdict(
            "The logit average of EN+RU and EN+ZH experts comes within 5% of the best expert on every language "
            "(growlm's stricter reading of the merge claim)", "– (no per-language figure)",
            f"average of the two experts: {text}; rule: reproduced if both mean gaps are <= {NEAR:.0%}",
            decide(worst <= NEAR), source="growlm"))
    text, worst = _gap_text(summary, PAIR, "posterior")
    if worst is not None:
        window = f"posterior (window {WINDOW[summary_scale(summary)]})"
        extra = [f"{m} of {e}: {_gap_text(summary, e, m)[0]}"
                 for e, m in ((PAIR, window), ("en+ru, en+zh, ru+zh", "posterior"))]
        rows.append(Verdict(
            f"Weighting each expert by its posterior given the text so far comes within {GOAL:.0%} of the best expert "
            "on every language, with no training (issue 10's goal)", "–",
            f"posterior of the two experts: {text}; rule: reproduced if both mean gaps are <= {GOAL:.0%}. "
            f"Also {'; '.join(extra)}", decide(worst <= GOAL), source="growlm"))
    control = _needs_substrate(summary)
    if control:
        rows.append(control)
    return rows


def _notes() -> tuple[str, ...]:
    d = DEPTH["default"]
    return (
        f"experts: {d} growth stages of one block ({STAGE_STEPS['default']} steps each, the block and the head "
        f"trained), each on its own mixture of the embedded corpus ({', '.join(EXPERTS)}, equal weights)",
        "methods: average = weighted logits (the paper); prob = mixture of the distributions; posterior = mixture "
        "weighted by each expert's posterior given the text so far (whole window, or the last "
        f"{WINDOW['default']} tokens); adapter / router fine-tuned {FINETUNE_STEPS['default']} steps on EN+RU+ZH "
        f"(lr {FINETUNE_LR['adapter']:g} / {FINETUNE_LR['router']:g}), the experts frozen; average + fine-tune = the "
        f"paper's further training of the merged model: the average with its experts' LM heads (copies) trained as "
        f"many steps at lr {FINETUNE_LR['average']:g}, the rest frozen; val_bpc_step0 = its validation bpc before "
        "the first step",
        "gap_val, gap_heldout: the largest, over EN/RU/ZH, of bpc / (best member expert's bpc) - 1, per seed; "
        "below 0 means better than every member on every language",
        "train_flops: expert rows: the growth plan's training FLOPs (the backward covers only what trains); composed "
        "rows: what the composition itself trained (0 for the training-free methods)",
        "size (common.plan_flops, growlm.training.flops): at d_model 64, seq_len 64, batch 16 (compact vocabulary) "
        "an expert "
        "trains 2.73 TFLOP and the six fine-tunes 2.41 TFLOP together (adapter 0.23 / 0.35, router 0.37 / 0.55, "
        "average + fine-tune 0.37 / 0.55 for two / three experts; growlm.training.budget.composition_parts); the "
        "learned-embedding control adds two experts (2.75 TFLOP each, the embedding's gradient included) and one "
        "average + fine-tune (0.37), so a seed trains 16.5 TFLOP and 3 seeds 50 TFLOP; scoring the 24 models of a "
        "seed (forward only, N experts each) costs about 3.8 TFLOP more; train_flops gives the shape run",
        f"control (does merging need the frozen substrate?): experts en+ru{SUFFIX} and en+zh{SUFFIX}, the same plan, "
        "data and seed as en+ru and en+zh but with a learned token embedding (trainable, random N(0, init_std) init, "
        "the same table at the start for both: the frozen substrate is itself one shared init), composed as the pair "
        "by the training-free methods and average + fine-tune, each expert embedding its input with its own table "
        "(ComposedLM own_embeddings); adapter + fine-tune and router + fine-tune apply too but are left out of the "
        "control to keep it within budget",
        "bpc: bits per character (lower is better); val = validation split of the training corpus, held-out = the "
        "shipped texts no training source contains; posterior's context is one scoring window (seq_len tokens)",
    )


STUDY = register(Study(
    name="composition",
    title="Experts on EN+RU / EN+ZH / RU+ZH composed by every method: bits per character per language",
    claim="Experts trained separately on one frozen substrate can be merged post hoc (logit averaging) into one "
          "model that keeps each expert's competence, with no re-training (v1 Sec. 3.1, 4.1)",
    run=run,
    metrics=("gap_val", "gap_heldout", "val_bpc", "heldout_bpc", "val_bpc_step0", "val_bpc_en", "val_bpc_ru",
             "val_bpc_zh", "heldout_bpc_en", "heldout_bpc_ru", "heldout_bpc_zh", "train_flops", *DOC_METRICS),
    group=("experts", "method"),
    notes=_notes(),
    paper="merged model's step-0 validation loss 2.7, close to the experts' final loss, then 2.044 after fine-tuning; "
          "it beats its experts on MMLU (Fig. 1, 3; no per-language figure)",
    verdict=verdict,
))

