"""The demo and the composition study: grow, compose, fine-tune and measure, and the FLOPs that will cost.

``compose_experiment`` follows the paper's section 4.1 at small scale: two experts grown with the same plan on
different data mixtures (English+Russian, English+Chinese) over one substrate, composed by every method, the
trainable compositions fine-tuned briefly, all measured on held-out text in bits per character. ``run_demo`` is
``growlm demo``: a growth run, its samples by depth, the composition study and the report. ``demo_budget``
counts the demo's model FLOPs from the same recipes before anything runs (``growlm demo --budget``).
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import torch

from growlm.data.tokens import open_data
from growlm.model.composition import compose
from growlm.model.composition_methods import METHODS
from growlm.model.saved import load_model, save_model
from growlm.training import flops
from growlm.training.budget import (
    Budget,
    Part,
    composition_parts,
    data_languages,
    grow_part,
    samples_part,
    validation_bound,
    validation_windows,
)
from growlm.training.compose_plan import expert_recipe, load_compose_recipe
from growlm.training.finetune import finetune
from growlm.training.plan import Recipe
from growlm.training.run import grow
from growlm.training.validation import validate
from growlm.util.fileio import claim_output_dir


def demo_budget(grow_recipe: str = "demo", compose_recipe: str = "compose-demo", data=None,
                exact: bool = True) -> Budget:
    """The model FLOPs of ``growlm demo`` with these recipes, part by part.

    ``exact``: validation is counted on the token files (``data``, opened from the recipe when None; the
    embedded corpus is tokenised on first use); otherwise as ``val_tokens`` per language, an upper bound.
    """
    from growlm.data.tokens import open_data
    from growlm.model.sampling import SAMPLE_MAX_TOKENS, SAMPLE_PROMPT
    from growlm.substrate import Tokenizer
    from growlm.training.compose_plan import load_compose_recipe

    recipe = Recipe.load(grow_recipe)
    spec = load_compose_recipe(compose_recipe)
    base = Recipe.load(spec.expert_recipe)
    if base.data.path != recipe.data.path:
        raise ValueError(f"the demo's expert recipe reads {base.data.path!r}, its growth recipe "
                         f"{recipe.data.path!r}; the budget counts one data set")
    vocab = recipe.substrate.get("vocab", "compact")
    if exact:
        data = data or open_data(recipe.data.path, vocab)
        windows, comp_windows = validation_windows(data, recipe.train), validation_windows(data, base.train)
    else:
        langs = data.languages if data is not None else data_languages(recipe.data.path)
        windows, comp_windows = validation_bound(langs, recipe.train), validation_bound(langs, base.train)
    grow, depths = grow_part(recipe, windows)
    prompt = len(Tokenizer.load(vocab).encode(SAMPLE_PROMPT))
    return Budget([grow, samples_part(depths, prompt, SAMPLE_MAX_TOKENS), *composition_parts(spec, comp_windows),
                   Part("report")])


def compose_experiment(recipe: str | Path, out: str | Path, progress: bool = True, log=print) -> dict:
    """Grow the experts, compose them by each method, fine-tune the trainable ones; write a bpc table.

    The table's ``timings`` gives the seconds of each part: ``experts`` (their growth, stage-end validation
    included), ``composition`` (evaluating the composed models that are not fine-tuned) and ``fine-tuning``
    (whose validation before the first step is the composed model's row). An expert's row is its run's last
    validation, read back rather than computed again.
    """
    spec = load_compose_recipe(recipe)
    out = claim_output_dir(out, "compose-study", legacy=_is_legacy_study)  # before anything trains
    base = Recipe.load(spec.expert_recipe)
    opts = spec.compose
    t0 = time.perf_counter()
    timings = {"experts": 0.0, "composition": 0.0, "fine-tuning": 0.0}
    device = "cuda" if torch.cuda.is_available() else "cpu"  # where grow() trained the experts
    experts, rows = [], []
    data = None
    for name, mixture in spec.experts.items():
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
    for method in opts.methods:
        t = time.perf_counter()
        tuned = method in opts.finetune
        heads = opts.train_heads and tuned
        members = [copy.deepcopy(m) if heads else m for _, m in experts]  # fine-tuned heads stay out of the rest
        composed = compose(members, method=method, rank=opts.rank, train_heads=heads,
                           window=opts.window if METHODS[method].windowed else 0,
                           names=[n for n, _ in experts])
        label = f"{method}({'+'.join(n for n, _ in experts)})"
        save_model(composed, out / f"composed-{method}")
        if not tuned:
            rows.append({"name": label, "kind": "composed", **_bpc(composed, data, base)})
            log(f"composed {label}: bits/char {rows[-1]['bpc']}")
            timings["composition"] += time.perf_counter() - t
            continue
        res = finetune(composed, data, out / f"finetuned-{method}", opts.finetune_steps, train,
                       lr=opts.lr_for(method), progress=progress, log=log)
        before = res["before"]  # the composed model as composed: its validation before the first step
        rows.append({"name": label, "kind": "composed", "bpc": before["val_bpc"], "val_loss": before["val_loss"]})
        log(f"composed {label}: bits/char {rows[-1]['bpc']}")
        rows.append({"name": f"{label} + fine-tune", "kind": "finetuned", "bpc": res["after"]["val_bpc"],
                     "val_loss": res["after"]["val_loss"], "step0_val_loss": before["val_loss"]})
        log(f"fine-tuned {label}: bits/char {rows[-1]['bpc']}")
        timings["fine-tuning"] += time.perf_counter() - t
    table = {"rows": rows, "seconds": round(time.perf_counter() - t0, 1), "recipe": spec.name,
             "timings": {k: round(v, 1) for k, v in timings.items()}}
    (out / "composition.json").write_text(json.dumps(table, indent=1))
    return table


def _last_validation(run: Path, model) -> dict | None:
    """The bpc and loss of a finished growth run's last stage-end validation, if it matches ``model``'s depth."""
    from growlm.training.metrics import read_metrics

    path = run / "metrics.jsonl"
    ends = [r for r in read_metrics(path) if r.get("type") == "stage_end"] if path.exists() else []
    if not ends or ends[-1].get("depth") != len(model.blocks):
        return None
    return {"bpc": ends[-1]["val_bpc"], "val_loss": ends[-1]["val_loss"]}


def _bpc(model, data, recipe: Recipe) -> dict:
    v = validate(model, data, recipe.train, next(model.parameters()).device)
    return {"bpc": v["val_bpc"], "val_loss": v["val_loss"]}


DEMO_ENTRIES = {"grow", "compose", "report", "summary.json", ".growlm.lock"}  # what a demo directory holds


def _is_legacy_study(d: Path) -> bool:
    """A composition study's directory written before growlm marked its outputs."""
    return all(p.name == "composition.json" or p.name.startswith(("expert-", "composed-", "finetuned-"))
               for p in d.iterdir())


def run_demo(out: str | Path = "runs/demo", grow_recipe: str = "demo", compose_recipe: str = "compose-demo",
             progress: bool = True, log=print) -> dict:
    """The README's main job: grow a small model, compose two experts, write the report.

    The model FLOPs of every part are counted from the recipes before anything runs (``growlm.training.budget``);
    the summary holds that budget next to each part's elapsed seconds and the machine's peak FLOP/s.
    """
    from growlm.demo import demo_budget
    from growlm.model.sampling import depth_samples
    from growlm.report import write_report

    out = claim_output_dir(out, "demo", legacy=lambda d: {p.name for p in d.iterdir()} <= DEMO_ENTRIES)
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
