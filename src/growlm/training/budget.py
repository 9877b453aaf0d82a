"""The model FLOPs a run will spend, counted from its recipes before anything trains.

Every count uses ``growlm.training.flops.step_flops`` on a shape-only (meta device) model set up
as the trainer sets it up, so a planned training stage costs exactly what the trainer
logs for it (``flops_per_token`` x tokens in ``metrics.jsonl``):

- training: steps x batch_size x seq_len x the stage's step FLOPs per token;
- validation: a forward pass over the windows ``growlm.training.validation.validate`` scores (seq_len
  predicted tokens each, the last one shorter), per language;
- samples: the prompt's prefill (the head on its last position only) and one cached
  decoding step per further token, at each depth;
- composition: the experts' forwards plus the fusion's own matmuls; the fine-tuning's
  backward only through what trains (the adapter or router, the heads if asked).

``demo_budget`` adds up ``growlm demo``; ``budget_table`` sets the plan next to the
elapsed time of each part and the fraction of the machine's peak it reached.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from growlm.data.documents import corpus_files, default_corpus_dir
from growlm.data.tokens import TokenData
from growlm.evaluate.bpc import split_stream
from growlm.model import GrowLM, lora
from growlm.training import flops, plan, stages
from growlm.training.compose_plan import ComposePipeline
from growlm.training.plan import Recipe

TERA = 1e12


@dataclass
class Part:
    """One part of a run: its model FLOPs (validation forwards included) and what they are made of."""

    name: str
    flops: float = 0.0
    validation: float = 0.0  # of ``flops``: validation forward passes
    items: list[dict] = field(default_factory=list)  # the counted pieces

    def add(self, what: str, amount: float, validation: bool = False, **detail) -> None:
        """Count ``amount`` FLOPs under ``what``."""
        self.flops += amount
        if validation:
            self.validation += amount
        self.items.append({"what": what, "flops": amount, **detail})


@dataclass
class Budget:
    """The parts of a run and their FLOPs."""

    parts: list[Part]

    @property
    def total(self) -> float:
        return sum(p.flops for p in self.parts)

    def part(self, name: str) -> Part:
        """The part called ``name``."""
        for p in self.parts:
            if p.name == name:
                return p
        raise KeyError(f"no part {name!r}; parts are {[p.name for p in self.parts]}")

    def to_dict(self) -> dict:
        """Plain data (for JSON)."""
        return {"total_flops": self.total, "parts": [{"name": p.name, "flops": p.flops, "validation_flops":
                                                       p.validation, "items": p.items} for p in self.parts]}

    @classmethod
    def from_dict(cls, d: dict) -> Budget:
        """The inverse of ``to_dict``."""
        return cls([Part(p["name"], p["flops"], p["validation_flops"], list(p["items"])) for p in d["parts"]])


# --------------------------------------------------------------------------- forward passes


def _forward_line(model: nn.Module) -> tuple[float, float]:
    """(a, b) with forward FLOPs per token = a + b * (T + 1) / 2 over a causal window of T tokens."""
    one = flops.step_flops(model, 1, train=False).forward
    three = flops.step_flops(model, 3, train=False).forward
    return 2 * one - three, three - one


def forward_flops(model: nn.Module, windows: list[int]) -> float:
    """FLOPs of forward passes of a GrowLM (or ``ComposedLM``) over windows of the given token counts."""
    if isinstance(model, GrowLM):
        a, b = _forward_line(model)
    else:
        a, b = _composed_line(model)
    return sum(t * (a + b * (t + 1) / 2) for t in windows)


def validation_windows(data, train: plan.TrainSpec) -> list[int]:
    """Predicted tokens of each window ``growlm.training.validation.validate`` scores, over all languages of
    ``data``."""
    out: list[int] = []
    for lang in data.languages:
        ids, _, _ = split_stream(data, lang, train.val_tokens)
        out += _windows(len(ids) - 1, train.seq_len)
    return out


def validation_bound(languages: list[str], train: plan.TrainSpec) -> list[int]:
    """Windows of a validation that scores ``val_tokens`` per language: never fewer FLOPs than the real one
    (which keeps the whole documents within ``val_tokens``), and needs no token files."""
    return [w for _ in languages for w in _windows(train.val_tokens, train.seq_len)]


def _windows(n: int, seq_len: int) -> list[int]:
    return [seq_len] * (n // seq_len) + ([n % seq_len] if n % seq_len else [])


def data_languages(path: str) -> list[str]:
    """The languages of a recipe's ``[data] path`` without tokenising anything (``default``: the embedded corpus)."""
    if str(path) == "default":
        return sorted({p.name.split(".")[0] for p in corpus_files(default_corpus_dir())})
    return TokenData.open(path).languages


def generation_flops(model: GrowLM, prompt: int, new_tokens: int) -> float:
    """FLOPs of sampling ``new_tokens`` after a ``prompt``-token prefill with the KV cache (head: last position)."""
    if prompt < 1 or new_tokens < 1:
        raise ValueError(f"prompt and new_tokens must be >= 1, got {prompt} and {new_tokens}")
    a, b = _forward_line(model)
    head = 2.0 * model.head.in_features * model.head.out_features
    prefill = prompt * (a - head) + b * prompt * (prompt + 1) / 2 + head
    # each further step feeds one token at position p and attends over p + 1 keys
    decode = sum(a + b * (p + 1) for p in range(prompt, prompt + new_tokens - 1))
    return prefill + decode


# --------------------------------------------------------------------------- growth


def _tokens_per_step(recipe: Recipe) -> int:
    return recipe.train.batch_size * recipe.train.seq_len  # what the trainer counts per optimiser step


def grow_part(recipe: Recipe, val_windows: list[int], name: str = "growth") -> tuple[Part, list[GrowLM]]:
    """A growth plan's training and validation FLOPs, stage by stage; also the model after each stage (meta)."""
    part, train, depths = Part(name), recipe.train, []
    with torch.device("meta"):
        model = GrowLM(recipe.config())
        step = 0
        for si, st in enumerate(recipe.stages):
            stages.begin_stage(model, st)
            steps = recipe.stage_steps(st)
            per_token = flops.step_flops(model, train.seq_len).total
            tokens = steps * _tokens_per_step(recipe)
            part.add("train", per_token * tokens, stage=si, name=st.name, steps=steps, tokens=tokens,
                     flops_per_token=per_token)
            if train.val_every:  # inside the stage, with its adapters still attached
                n_val = sum(1 for s in range(step + 1, step + steps) if s % train.val_every == 0)
                if n_val:
                    part.add("validate", n_val * forward_flops(model, val_windows), validation=True, stage=si,
                             passes=n_val)
            step += steps
            if st.lora:  # stages.end_stage, less its finiteness check (meta weights have no values)
                lora.merge_all(model, safe=False)
            part.add("validate", forward_flops(model, val_windows), validation=True, stage=si, passes=1)
            depths.append(copy.deepcopy(model))
    return part, depths


def plan_stages(recipe: Recipe) -> list[dict]:
    """Every stage of a plan as it trains: its parameter budget (``stages.plan_budgets``: depth, trainable parameters,
    LoRA adapters among them, total) with its tokens and training FLOPs (``grow_part`` without validation)."""
    part, _ = grow_part(recipe, [])
    trained = [it for it in part.items if it["what"] == "train"]
    return [{**b, "tokens": it["tokens"], "train_flops": it["flops"]}
            for b, it in zip(stages.plan_budgets(recipe), trained, strict=True)]


def plan_flops(recipe: Recipe) -> dict:
    """Training FLOPs and tokens of a whole plan, and the trainable parameters of its last stage as that stage
    trains, LoRA adapters included (``plan_stages`` summed)."""
    planned = plan_stages(recipe)
    return {"train_flops": sum(st["train_flops"] for st in planned), "tokens": sum(st["tokens"] for st in planned),
            "active_params": planned[-1]["active_params"]}


def plan_stages_table(recipe: Recipe, planned: list[dict]) -> list[str]:
    """Markdown lines of ``plan_stages``: the model in one line, a row per stage, the totals."""
    cfg, train = recipe.config(), recipe.train
    head = (f"{recipe.name}: {cfg.block} block, d_model {cfg.d_model}, {cfg.n_head} heads, vocabulary "
            f"{recipe.substrate.vocab} ({cfg.vocab_size:,} ids) on the {recipe.substrate.kind} substrate"
            f"{' (trainable)' if cfg.trainable_embedding else ''}; seq_len {train.seq_len}, batch {train.batch_size}"
            f"{f' in {train.grad_accum} micro-batches' if train.grad_accum > 1 else ''}, lr {train.lr:g}, "
            f"precision {train.precision}")
    rows = [head, "", "| stage | kind | steps | depth | trains | of which LoRA | total params | tokens | TFLOP |",
            "|---|---|---|---|---|---|---|---|---|"]
    rows += [f"| {st['stage']} | {st['kind']} | {st['steps']:,} | {st['depth']} | {st['active_params']:,} | "
             f"{st['lora_params']:,} | {st['total_params']:,} | {st['tokens']:,} | {st['train_flops'] / 1e12:.3g} |"
             for st in planned]
    rows += ["", f"total: {sum(st['steps'] for st in planned):,} steps, {sum(st['tokens'] for st in planned):,} "
             f"tokens, {sum(st['train_flops'] for st in planned) / 1e12:.3g} TFLOP of training (model FLOPs: the "
             "matmuls of forward and backward as each stage runs; validation not counted)"]
    return rows


def samples_part(depths: list[GrowLM], prompt_tokens: int, max_tokens: int) -> Part:
    """``depth_samples``: one sample of up to ``max_tokens`` tokens per stage's model."""
    part = Part("samples")
    for si, m in enumerate(depths):
        part.add("generate", generation_flops(m, prompt_tokens, max_tokens), stage=si, depth=len(m.blocks))
    return part


# --------------------------------------------------------------------------- composition


def _composed_line(model: nn.Module) -> tuple[float, float]:
    """``_forward_line`` of a ``ComposedLM``: its experts' forwards plus the fusion's own matmuls (its method's
    ``forward_flops``)."""
    a = b = 0.0
    for e in model.experts:
        ea, eb = _forward_line(e)
        a, b = a + ea, b + eb
    a += model.combiner.forward_flops(model)
    return a, b


def composed_step_flops(model: nn.Module, seq_len: int) -> float:
    """FLOPs per token of a fine-tuning step of a ``ComposedLM`` (experts frozen below their heads): the forward,
    then the backward through what trains (its method's ``backward_flops``)."""
    a, b = _composed_line(model)
    fwd = a + b * (seq_len + 1) / 2
    heads = any(e.head.weight.requires_grad for e in model.experts)
    return fwd + model.combiner.backward_flops(model, heads)


def composition_parts(pipeline: ComposePipeline, data_windows: list[int]) -> list[Part]:
    """The experts' growth and the compositions' evaluation and fine-tuning: the steps of ``pipeline``, the one
    ``growlm.demo.compose_experiment`` runs."""
    experts_part, finals = Part("experts"), {}
    for ex in pipeline.experts:
        part, depths = grow_part(ex.recipe, data_windows, ex.name)
        for item in part.items:
            what = item.pop("what")
            experts_part.add(what, item.pop("flops"), validation=what == "validate", expert=ex.name, **item)
        finals[ex.name] = depths[-1]
    # an expert's row is its run's last validation (counted above); a fine-tuned step's composed row is the
    # fine-tune's validation before its first step (``compose_experiment``)
    evaluate, tune = Part("composition"), Part("fine-tuning")
    train = pipeline.train
    with torch.device("meta"):
        for step in pipeline.steps:
            composed = pipeline.build(step, {n: copy.deepcopy(m) for n, m in finals.items()})
            val = forward_flops(composed, data_windows)
            if not step.finetuned:
                evaluate.add("validate composed", val, validation=True, method=step.method)
                continue
            steps = step.finetune_steps
            tokens = steps * train.batch_size * train.seq_len  # what the trainer counts per optimiser step
            per_token = composed_step_flops(composed, train.seq_len)
            tune.add("train", per_token * tokens, method=step.method, steps=steps, tokens=tokens,
                     flops_per_token=per_token)
            ve = train.val_every  # before the first step, every val_every steps, after the last
            passes = 2 + sum(1 for s in range(1, steps) if ve and s % ve == 0)
            tune.add("validate", passes * val, validation=True, method=step.method, passes=passes)
    return [experts_part, evaluate, tune]


# --------------------------------------------------------------------------- the table


def budget_table(budget: Budget, seconds: dict[str, float] | None = None, peak: float | None = None) -> list[str]:
    """Markdown rows: part, planned TFLOP (of which validation) and, given ``seconds`` per part, the elapsed
    seconds and the fraction of ``peak`` (FLOP/s) reached; a total row last."""
    timed = seconds is not None
    seconds = seconds or {}
    rows = ["| part | planned TFLOP | of which validation |" + (" elapsed s | fraction of peak |" if timed else ""),
            "|---|---|---|" + ("---|---|" if timed else "")]

    def row(name: str, fl: float, val: float, s: float | None) -> str:
        out = f"| {name} | {fl / TERA:.3f} | {val / TERA:.3f} |"
        if not timed:
            return out
        frac = f"{fl / s / peak:.0%}" if s and peak and fl else "-"
        return out + f" {'-' if s is None else f'{s:.1f}'} | {frac} |"

    for p in budget.parts:
        rows.append(row(p.name, p.flops, p.validation, seconds.get(p.name)))
    known = [seconds[p.name] for p in budget.parts if p.name in seconds]
    total_s = seconds.get("total", sum(known) if known else None)
    rows.append(row("total", budget.total, sum(p.validation for p in budget.parts), total_s))
    return rows
