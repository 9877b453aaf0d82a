"""The composition recipe and the one definition of "grow -> compose -> fine-tune" (``ComposePipeline``).

A composition recipe (``recipes/compose-*.toml``) names an expert recipe, the experts' data mixtures and a
``[compose]`` table (``ComposeOptions``: methods, which to fine-tune, steps, rates, rank, window). A
``ComposePipeline`` is what runs: the experts with their growth plans, then the composed models with their
options and fine-tunes, as a list of steps. ``growlm demo`` / ``compose-study`` (``growlm.demo``) run the one
built from a recipe, the composition study (``growlm.experiments.composition``) builds its own, and the FLOP
budget (``growlm.training.budget.composition_parts``) counts the same steps.
"""

from __future__ import annotations

import copy
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from growlm.model.composition import ComposedLM, compose
from growlm.model.composition_methods import METHODS, either, names_where
from growlm.training.finetune import finetune
from growlm.training.plan import Recipe, TrainSpec, resolve_recipe
from growlm.util.fields import AT_LEAST_0, AT_LEAST_1, POSITIVE, check_fields

COMPOSE_KEYS = {"name", "description", "expert_recipe", "experts", "compose"}


@dataclass
class ComposeOptions:
    """The [compose] table of a composition recipe (checked for keys, types and ranges when read)."""

    methods: list[str] = field(default_factory=lambda: ["average"])
    finetune: list[str] = field(default_factory=list)  # methods whose composed model is then fine-tuned
    finetune_steps: int = 50
    finetune_lr: float | dict | None = None  # one rate, or one per method
    rank: int = 8
    train_heads: bool = False  # fine-tune the experts' LM heads too (the paper's "output layer")
    window: int = 0  # posterior: weigh experts by the last `window` tokens (0 = the whole text so far)

    def lr_for(self, method: str) -> float | None:
        """The fine-tuning rate of ``method``: the one rate, or its entry in the table (None: finetune's default)."""
        return self.finetune_lr.get(method) if isinstance(self.finetune_lr, dict) else self.finetune_lr


COMPOSE_OPTIONS = {f.name for f in fields(ComposeOptions)}


@dataclass(kw_only=True)
class ComposeRecipe:
    """A composition recipe, checked (``load_compose_recipe``): experts grown from one plan, then composed."""

    name: str
    description: str = ""
    expert_recipe: str  # the experts' growth plan: a shipped recipe name or a path
    experts: dict[str, dict[str, float]]  # expert name -> its data mixture (language -> weight)
    compose: ComposeOptions = field(default_factory=ComposeOptions)


def load_compose_recipe(name_or_path: str | Path) -> ComposeRecipe:
    """Read a composition recipe (shipped name or path) and check its keys and values."""
    path = resolve_recipe(name_or_path)
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    unknown = set(data) - COMPOSE_KEYS
    if unknown:
        raise ValueError(f"unknown key(s) {sorted(unknown)} in {path}; valid keys are {sorted(COMPOSE_KEYS)}")
    if not isinstance(data.get("compose", {}), dict):
        raise ValueError(f"{path}: [compose] must be a table, got {data['compose']!r}")
    opts = ComposeOptions(**check_fields(ComposeOptions, data.get("compose", {}), "compose",
                                         {"finetune_steps": AT_LEAST_1, "finetune_lr": POSITIVE, "rank": AT_LEAST_1,
                                          "window": AT_LEAST_0}))
    for key in ("methods", "finetune"):
        unknown = set(getattr(opts, key)) - set(METHODS)
        if unknown:
            raise ValueError(f"[compose] {key} names unknown method(s) {sorted(unknown)}; valid are {list(METHODS)}")
    frozen = [m for m in opts.finetune if not METHODS[m].trainable]
    if frozen:
        raise ValueError(f"[compose] finetune names {either(frozen)}, which {'is' if len(frozen) == 1 else 'are'} "
                         f"training-free (no parameters to fine-tune); trainable methods are "
                         f"{either(names_where('trainable'))}")
    missing = set(opts.finetune) - set(opts.methods)
    if missing:
        raise ValueError(f"[compose] finetune names {sorted(missing)}, which methods does not list")
    if isinstance(opts.finetune_lr, dict):
        for method, lr in opts.finetune_lr.items():
            if method not in METHODS:
                raise ValueError(f"[compose] finetune_lr names unknown method {method!r}; valid are {list(METHODS)}")
            if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
                raise ValueError(f"[compose] finetune_lr.{method} must be a number > 0, got {lr!r}")
    for key in ("name", "description", "expert_recipe"):
        if not isinstance(data.get(key, ""), str):
            raise ValueError(f"{path}: {key} must be a string, got {data[key]!r}")
    if "expert_recipe" not in data:
        raise ValueError(f"{path}: expert_recipe is missing: name the experts' growth recipe (a name or a path)")
    experts = data.get("experts", {})
    if not isinstance(experts, dict) or len(experts) < 2:
        raise ValueError(f"{path}: [experts] must name at least two data mixtures")
    for name, mix in experts.items():
        bad = [k for k, w in mix.items() if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0] \
            if isinstance(mix, dict) else [name]
        if bad or not mix:
            raise ValueError(f"[experts] {name} must be a table of language = weight (numbers >= 0), got {mix!r}")
    return ComposeRecipe(name=data.get("name", str(name_or_path)), description=data.get("description", ""),
                         expert_recipe=data["expert_recipe"], experts={k: dict(v) for k, v in experts.items()},
                         compose=opts)


def expert_recipe(base: Recipe, name: str, mixture: dict[str, float]) -> Recipe:
    """The base growth plan with every stage trained on ``mixture``."""
    raw = copy.deepcopy(base.raw)
    raw["name"] = f"{base.name}-{name}"
    raw.setdefault("data", {}).setdefault("mixtures", {})["expert"] = dict(mixture)
    for st in raw["stages"]:
        st["mixture"] = "expert"
    return Recipe.from_dict(raw)


@dataclass(frozen=True)
class ExpertStep:
    """One expert of a pipeline: its name and its growth plan."""

    name: str
    recipe: Recipe


@dataclass(frozen=True)
class ComposeStep:
    """One composed model of a pipeline: which experts, how they are combined, and its fine-tune (0 steps: none)."""

    label: str  # the model's row in the results
    experts: tuple[str, ...]  # names of ``ExpertStep``s, in order
    method: str
    window: int = 0
    rank: int = ComposeOptions.rank
    train_heads: bool = False  # the experts' heads train in the fine-tune (on copies, not the shared experts)
    finetune_steps: int = 0
    lr: float | None = None  # None: finetune's default (the train spec's rate)
    mixture: dict[str, float] | None = None  # the fine-tune's data mixture (None: finetune's default)
    own_embeddings: bool = False  # the experts trained their own token embeddings (``ComposedLM``'s option)

    @property
    def finetuned(self) -> bool:
        return self.finetune_steps > 0


@dataclass
class ComposePipeline:
    """Grow the experts, compose them step by step, fine-tune the steps that say so: the sequence as data.

    ``train`` is the fine-tunes' and the scoring's shape (batch, sequence length, validation); ``seed``, when set,
    seeds torch before each composition is built (the adapter's random projection).
    """

    experts: list[ExpertStep]
    steps: list[ComposeStep]
    train: TrainSpec
    seed: int | None = None

    @classmethod
    def from_recipe(cls, spec: ComposeRecipe) -> ComposePipeline:
        """The recipe's experts, each on its mixture, composed by each of its methods; its ``finetune`` ones tuned."""
        base, o = Recipe.load(spec.expert_recipe), spec.compose
        names = tuple(spec.experts)
        steps = [ComposeStep(label=f"{m}({'+'.join(names)})", experts=names, method=m,
                             window=o.window if METHODS[m].windowed else 0, rank=o.rank,
                             train_heads=o.train_heads and m in o.finetune,
                             finetune_steps=o.finetune_steps if m in o.finetune else 0, lr=o.lr_for(m))
                 for m in o.methods]
        return cls([ExpertStep(n, expert_recipe(base, n, mix)) for n, mix in spec.experts.items()], steps, base.train)

    def build(self, step: ComposeStep, models: dict) -> ComposedLM:
        """The composed model of ``step`` from the trained experts (by name); experts whose heads will train are
        copied, so the other steps keep theirs."""
        members = [copy.deepcopy(models[n]) if step.train_heads else models[n] for n in step.experts]
        if self.seed is not None:
            torch.manual_seed(self.seed)
        return compose(members, step.method, rank=step.rank, train_heads=step.train_heads, window=step.window,
                       names=list(step.experts), own_embeddings=step.own_embeddings)

    def finetune(self, step: ComposeStep, model: ComposedLM, data, out: str | Path, **kw) -> dict:
        """Fine-tune ``step``'s composed model (``growlm.training.finetune.finetune``; kw: progress, log, ...)."""
        return finetune(model, data, out, step.finetune_steps, self.train, lr=step.lr, mixture=step.mixture, **kw)
