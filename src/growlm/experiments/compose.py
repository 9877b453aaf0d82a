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
from growlm.fields import AT_LEAST_0, AT_LEAST_1, POSITIVE, check_fields
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
    window: int = 0  # posterior: weigh experts by the last `window` tokens (0 = the whole text so far)


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
                        {"finetune_steps": AT_LEAST_1, "finetune_lr": POSITIVE, "rank": AT_LEAST_1,
                         "window": AT_LEAST_0})
    for key in ("methods", "finetune"):
        unknown = set(opts.get(key, [])) - set(METHODS)
        if unknown:
            raise ValueError(f"[compose] {key} names unknown method(s) {sorted(unknown)}; valid are {list(METHODS)}")
    if "posterior" in opts.get("finetune", []):
        raise ValueError("[compose] finetune names 'posterior', which is training-free (no parameters to fine-tune)")
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
    """Grow the experts, compose them by each method, fine-tune the trainable ones; write a bpc table.

    The table's ``timings`` gives the seconds of each part: ``experts`` (their growth, stage-end validation
    included), ``composition`` (evaluating the composed models that are not fine-tuned) and ``fine-tuning``
    (whose validation before the first step is the composed model's row). An expert's row is its run's last
    validation, read back rather than computed again.
    """
    spec = load_compose_recipe(recipe)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = Recipe.load(spec["expert_recipe"])
    opts = spec.get("compose", {})
    t0 = time.perf_counter()
    timings = {"experts": 0.0, "composition": 0.0, "fine-tuning": 0.0}
    device = "cuda" if torch.cuda.is_available() else "cpu"  # where grow() trained the experts
    experts, rows = [], []
    data = None
    for name, mixture in spec["experts"].items():
        t = time.perf_counter()
        run = out / f"expert-{name}"
        r = expert_recipe(base, name, mixture)
        if not (run / "model" / "model.json").exists():
            log(f"== expert {name}: mixture {mixture}")
            grow(r, run, resume=(run / "checkpoints").exists(), progress=progress, log=log)
        model = load_model(run).to(device)
        data = data or open_data(r.data.path, model.substrate_spec["vocab"])
        experts.append((name, model))
        rows.append({"name": name, "kind": "expert", **(_last_validation(run, model) or _bpc(model, data, r))})
        log(f"expert {name}: bits/char {rows[-1]['bpc']}")
        timings["experts"] += time.perf_counter() - t
    train = base.train
    for method in opts.get("methods", ["average"]):
        t = time.perf_counter()
        tuned = method in opts.get("finetune", [])
        heads = bool(opts.get("train_heads", False)) and tuned
        members = [copy.deepcopy(m) if heads else m for _, m in experts]  # fine-tuned heads stay out of the rest
        composed = compose(members, method=method, rank=opts.get("rank", 8), train_heads=heads,
                           window=opts.get("window", 0) if method == "posterior" else 0,
                           names=[n for n, _ in experts])
        label = f"{method}({'+'.join(n for n, _ in experts)})"
        save_model(composed, out / f"composed-{method}")
        if not tuned:
            rows.append({"name": label, "kind": "composed", **_bpc(composed, data, base)})
            log(f"composed {label}: bits/char {rows[-1]['bpc']}")
            timings["composition"] += time.perf_counter() - t
            continue
        lr = opts.get("finetune_lr")
        lr = lr.get(method) if isinstance(lr, dict) else lr  # one rate, or one per method
        res = finetune(composed, data, out / f"finetuned-{method}", opts.get("finetune_steps", 50), train,
                       lr=lr, progress=progress, log=log)
        before = res["before"]  # the composed model as composed: its validation before the first step
        rows.append({"name": label, "kind": "composed", "bpc": before["val_bpc"], "val_loss": before["val_loss"]})
        log(f"composed {label}: bits/char {rows[-1]['bpc']}")
        rows.append({"name": f"{label} + fine-tune", "kind": "finetuned", "bpc": res["after"]["val_bpc"],
                     "val_loss": res["after"]["val_loss"], "step0_val_loss": before["val_loss"]})
        log(f"fine-tuned {label}: bits/char {rows[-1]['bpc']}")
        timings["fine-tuning"] += time.perf_counter() - t
    table = {"rows": rows, "seconds": round(time.perf_counter() - t0, 1), "recipe": spec.get("name", str(recipe)),
             "timings": {k: round(v, 1) for k, v in timings.items()}}
    (out / "composition.json").write_text(json.dumps(table, indent=1))
    return table


def _last_validation(run: Path, model) -> dict | None:
    """The bpc and loss of a finished growth run's last stage-end validation, if it matches ``model``'s depth."""
    from growlm.metrics import read_metrics

    path = run / "metrics.jsonl"
    ends = [r for r in read_metrics(path) if r.get("type") == "stage_end"] if path.exists() else []
    if not ends or ends[-1].get("depth") != len(model.blocks):
        return None
    return {"bpc": ends[-1]["val_bpc"], "val_loss": ends[-1]["val_loss"]}


def _bpc(model, data, recipe: Recipe) -> dict:
    v = validate(model, data, recipe.train, next(model.parameters()).device)
    return {"bpc": v["val_bpc"], "val_loss": v["val_loss"]}


def run_demo(out: str | Path = "runs/demo", grow_recipe: str = "demo", compose_recipe: str = "compose-demo",
             progress: bool = True, log=print) -> dict:
    """The README's main job: grow a small model, compose two experts, write the report.

    The model FLOPs of every part are counted from the recipes before anything runs (``growlm.budget``);
    the summary holds that budget next to each part's elapsed seconds and the machine's peak FLOP/s.
    """
    from growlm import flops
    from growlm.budget import demo_budget
    from growlm.commands.generate import depth_samples
    from growlm.report import write_report

    out = Path(out)
    t0 = time.perf_counter()
    budget = demo_budget(grow_recipe, compose_recipe)
    log(f"== budget: {budget.total / 1e12:.2f} TFLOP of model compute "
        f"({', '.join(f'{p.name} {p.flops / 1e12:.2f}' for p in budget.parts if p.flops)})")
    seconds: dict[str, float] = {}
    run = out / "grow"
    recipe = Recipe.load(grow_recipe)
    t = time.perf_counter()
    if not (run / "model" / "model.json").exists():
        log(f"== growing {grow_recipe} into {run}")
        grow(recipe, run, resume=(run / "checkpoints").exists(), progress=progress, log=log)
    seconds["growth"] = time.perf_counter() - t
    t = time.perf_counter()
    depth_samples(run)  # a short sample per depth, shown in the report next to the bpc table
    seconds["samples"] = time.perf_counter() - t
    log("== composing experts")
    table = compose_experiment(compose_recipe, out / "compose", progress=progress, log=log)
    seconds.update(table["timings"])
    t = time.perf_counter()
    report = write_report([run], out / "report", composition=out / "compose" / "composition.json")
    seconds["report"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t0
    device = "cuda" if torch.cuda.is_available() else "cpu"
    precision = flops.resolve_precision(recipe.train.precision, device)
    summary = {"run": str(run), "compose": str(out / "compose"), "report": str(report),
               "grow_seconds": round(seconds["growth"], 1), "compose_seconds": table["seconds"],
               "total_seconds": round(seconds["total"], 1), "seconds": {k: round(v, 1) for k, v in seconds.items()},
               "budget": budget.to_dict(), "peak_flops": flops.peak_flops(device, precision), "precision": precision,
               "device": device}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
