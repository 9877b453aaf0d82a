"""The composition recipe: two or more experts grown from one plan on different mixtures, then composed.

A composition recipe (``recipes/compose-*.toml``) names an expert recipe, the experts' data mixtures and a
``[compose]`` table (``ComposeOptions``: methods, which to fine-tune, steps, rates, rank, window).
"""

from __future__ import annotations

import copy
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from growlm.model.composition_methods import METHODS, either, names_where
from growlm.training.plan import Recipe, resolve_recipe
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
