"""Experiments built from the library's parts: the composition study and the README's demo.

``compose_experiment`` follows the paper's section 4.1 at small scale: two
experts grown with the same plan on different data mixtures (English+Russian,
English+Chinese) over one substrate, composed by every method, the trainable
compositions fine-tuned briefly, and all of them measured on held-out English,
Russian and Chinese text in bits per character.
"""

from __future__ import annotations

import copy
import json
import time
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from growlm.checkpoint import load_model, save_model
from growlm.compose import METHODS, compose
from growlm.fields import AT_LEAST_1, POSITIVE, check_fields
from growlm.growth import RECIPE_DIR, Recipe
from growlm.train import finetune, grow, open_data, validate

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


COMPOSE_OPTIONS = {f.name for f in fields(ComposeOptions)}


def load_compose_recipe(name_or_path: str | Path) -> dict:
    """Read a composition recipe (shipped name or path) and check its keys."""
    path = Path(name_or_path)
    if not path.exists():
        path = RECIPE_DIR / f"{name_or_path}.toml"
    if not path.exists():
        raise FileNotFoundError(f"composition recipe {name_or_path!r} not found")
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    unknown = set(data) - COMPOSE_KEYS
    if unknown:
        raise ValueError(f"unknown key(s) {sorted(unknown)} in {path}; valid keys are {sorted(COMPOSE_KEYS)}")
    opts = check_fields(ComposeOptions, data.get("compose", {}), "compose",
                        {"finetune_steps": AT_LEAST_1, "finetune_lr": POSITIVE, "rank": AT_LEAST_1})
    for key in ("methods", "finetune"):
        unknown = set(opts.get(key, [])) - set(METHODS)
        if unknown:
            raise ValueError(f"[compose] {key} names unknown method(s) {sorted(unknown)}; valid are {list(METHODS)}")
    missing = set(opts.get("finetune", [])) - set(opts.get("methods", ["average"]))
    if missing:
        raise ValueError(f"[compose] finetune names {sorted(missing)}, which methods does not list")
    if not isinstance(data.get("expert_recipe", ""), str):
        raise ValueError(f"{path}: expert_recipe must be a recipe name or path, got {data['expert_recipe']!r}")
    experts = data.get("experts", {})
    if not isinstance(experts, dict) or len(experts) < 2:
        raise ValueError(f"{path}: [experts] must name at least two data mixtures")
    for name, mix in experts.items():
        bad = [k for k, w in mix.items() if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0] \
            if isinstance(mix, dict) else [name]
        if bad or not mix:
            raise ValueError(f"[experts] {name} must be a table of language = weight (numbers >= 0), got {mix!r}")
    return data


def expert_recipe(base: Recipe, name: str, mixture: dict[str, float]) -> Recipe:
    """The base growth plan with every stage trained on ``mixture``."""
    raw = copy.deepcopy(base.raw)
    raw["name"] = f"{base.name}-{name}"
    raw.setdefault("data", {}).setdefault("mixtures", {})["expert"] = dict(mixture)
    for st in raw["stages"]:
        st["mixture"] = "expert"
    return Recipe.from_dict(raw)


def compose_experiment(recipe: str | Path, out: str | Path, progress: bool = True, log=print) -> dict:
    """Grow the experts, compose them by each method, fine-tune the trainable ones; write a bpc table."""
    spec = load_compose_recipe(recipe)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = Recipe.load(spec["expert_recipe"])
    opts = spec.get("compose", {})
    t0 = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"  # where grow() trained the experts
    experts, rows = [], []
    data = None
    for name, mixture in spec["experts"].items():
        run = out / f"expert-{name}"
        r = expert_recipe(base, name, mixture)
        if not (run / "model" / "model.json").exists():
            log(f"== expert {name}: mixture {mixture}")
            grow(r, run, resume=(run / "checkpoints").exists(), progress=progress, log=log)
        model = load_model(run).to(device)
        data = data or open_data(r.data.path, model.substrate_spec["vocab"])
        experts.append((name, model))
        rows.append({"name": name, "kind": "expert", **_bpc(model, data, r)})
        log(f"expert {name}: bits/char {rows[-1]['bpc']}")
    train = base.train
    for method in opts.get("methods", ["average"]):
        heads = bool(opts.get("train_heads", False)) and method in opts.get("finetune", [])
        members = [copy.deepcopy(m) if heads else m for _, m in experts]  # fine-tuned heads stay out of the rest
        composed = compose(members, method=method, rank=opts.get("rank", 8), train_heads=heads,
                           names=[n for n, _ in experts])
        label = f"{method}({'+'.join(n for n, _ in experts)})"
        save_model(composed, out / f"composed-{method}")
        rows.append({"name": label, "kind": "composed", **_bpc(composed, data, base)})
        log(f"composed {label}: bits/char {rows[-1]['bpc']}")
        if method in opts.get("finetune", []):
            lr = opts.get("finetune_lr")
            lr = lr.get(method) if isinstance(lr, dict) else lr  # one rate, or one per method
            res = finetune(composed, data, out / f"finetuned-{method}", opts.get("finetune_steps", 50), train,
                           lr=lr, progress=progress, log=log)
            rows.append({"name": f"{label} + fine-tune", "kind": "finetuned", "bpc": res["after"]["val_bpc"],
                         "val_loss": res["after"]["val_loss"], "step0_val_loss": res["before"]["val_loss"]})
            log(f"fine-tuned {label}: bits/char {rows[-1]['bpc']}")
    table = {"rows": rows, "seconds": round(time.perf_counter() - t0, 1), "recipe": spec.get("name", str(recipe))}
    (out / "composition.json").write_text(json.dumps(table, indent=1))
    return table


def _bpc(model, data, recipe: Recipe) -> dict:
    v = validate(model, data, recipe.train, next(model.parameters()).device)
    return {"bpc": v["val_bpc"], "val_loss": v["val_loss"]}


def run_demo(out: str | Path = "runs/demo", grow_recipe: str = "demo", compose_recipe: str = "compose-demo",
             progress: bool = True, log=print) -> dict:
    """The README's main job: grow a small model, compose two experts, write the report."""
    from growlm.report import write_report

    out = Path(out)
    t0 = time.perf_counter()
    run = out / "grow"
    if not (run / "model" / "model.json").exists():
        log(f"== growing {grow_recipe} into {run}")
        grow(Recipe.load(grow_recipe), run, resume=(run / "checkpoints").exists(), progress=progress, log=log)
    grow_s = time.perf_counter() - t0
    from growlm.commands.generate import depth_samples

    depth_samples(run)  # a short sample per depth, shown in the report next to the bpc table
    log("== composing experts")
    table = compose_experiment(compose_recipe, out / "compose", progress=progress, log=log)
    report = write_report([run], out / "report", composition=out / "compose" / "composition.json")
    summary = {"run": str(run), "compose": str(out / "compose"), "report": str(report),
               "grow_seconds": round(grow_s, 1), "compose_seconds": table["seconds"],
               "total_seconds": round(time.perf_counter() - t0, 1)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
