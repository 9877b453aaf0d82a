"""The demo and the composition study: grow, compose, fine-tune and measure, and the FLOPs that will cost.

``compose_experiment`` follows the paper's section 4.1 at small scale: two experts grown with the same plan on
different data mixtures (English+Russian, English+Chinese) over one substrate, composed by every method, the
trainable compositions fine-tuned briefly, all measured on held-out text in bits per character. ``run_demo`` is
``growlm demo``: a growth run, its samples by depth, the composition study and the report. ``demo_budget``
counts the demo's model FLOPs from the same recipes before anything runs (``growlm demo --budget``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from growlm.data.tokens import open_data
from growlm.model.sampling import SAMPLE_MAX_TOKENS, SAMPLE_PROMPT, depth_samples
from growlm.model.saved import load_model, save_model
from growlm.substrate import Tokenizer
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
from growlm.training.compose_plan import ComposePipeline, load_compose_recipe
from growlm.training.metrics import read_metrics
from growlm.training.plan import Recipe, TrainSpec
from growlm.training.run import grow
from growlm.training.validation import validate
from growlm.util.fileio import claim_output_dir


def demo_budget(grow_recipe: str = "demo", compose_recipe: str = "compose-demo", data=None,
                exact: bool = True) -> Budget:
    """The model FLOPs of ``growlm demo`` with these recipes, part by part.

    ``exact``: validation is counted on the token files (``data``, opened from the recipe when None; the
    embedded corpus is tokenised on first use); otherwise as ``val_tokens`` per language, an upper bound.
    The composition's parts are counted from the pipeline ``compose_experiment`` runs.
    """
    recipe = Recipe.load(grow_recipe)
    pipeline = ComposePipeline.from_recipe(load_compose_recipe(compose_recipe))
    expert_data = {e.recipe.data.path for e in pipeline.experts}
    if expert_data != {recipe.data.path}:
        raise ValueError(f"the demo's expert recipe reads {sorted(expert_data)}, its growth recipe "
                         f"{recipe.data.path!r}; the budget counts one data set")
    vocab = recipe.substrate.vocab
    if exact:
        data = data or open_data(recipe.data.path, vocab)
        windows, comp_windows = validation_windows(data, recipe.train), validation_windows(data, pipeline.train)
    else:
        langs = data.languages if data is not None else data_languages(recipe.data.path)
        windows, comp_windows = validation_bound(langs, recipe.train), validation_bound(langs, pipeline.train)
    grow, depths = grow_part(recipe, windows)
    prompt = len(Tokenizer.load(vocab).encode(SAMPLE_PROMPT))
    return Budget([grow, samples_part(depths, prompt, SAMPLE_MAX_TOKENS), *composition_parts(pipeline, comp_windows),
                   Part("report")])


def compose_experiment(recipe: str | Path, out: str | Path, progress: bool = True, log=print) -> dict:
    """Grow the experts, compose them by each method, fine-tune the trainable ones; write a bpc table.

    The steps are the recipe's ``ComposePipeline`` (the one ``demo_budget`` counts). The table's ``timings`` gives
    the seconds of each part: ``experts`` (their growth, stage-end validation included), ``composition``
    (evaluating the composed models that are not fine-tuned) and ``fine-tuning`` (whose validation before the
    first step is the composed model's row). An expert's row is its run's last validation, read back rather than
    computed again.
    """
    spec = load_compose_recipe(recipe)
    pipeline = ComposePipeline.from_recipe(spec)
    out = claim_output_dir(out, "compose-study", legacy=_is_legacy_study)  # before anything trains
    t0 = time.perf_counter()
    timings = {"experts": 0.0, "composition": 0.0, "fine-tuning": 0.0}
    device = "cuda" if torch.cuda.is_available() else "cpu"  # where grow() trained the experts
    models, rows = {}, []
    data = None
    for ex in pipeline.experts:
        t = time.perf_counter()
        run = out / f"expert-{ex.name}"
        if not (run / "model" / "model.json").exists():
            log(f"== expert {ex.name}: mixture {spec.experts[ex.name]}")
            grow(ex.recipe, run, resume=(run / "checkpoints").exists(), progress=progress, log=log)
        model = load_model(run).to(device)
        data = data or open_data(ex.recipe.data.path, model.substrate_spec["vocab"])
        models[ex.name] = model
        rows.append({"name": ex.name, "kind": "expert",
                     **(_last_validation(run, model) or _bpc(model, data, pipeline.train))})
        log(f"expert {ex.name}: bits/char {rows[-1]['bpc']}")
        timings["experts"] += time.perf_counter() - t
    for step in pipeline.steps:
        t = time.perf_counter()
        composed = pipeline.build(step, models)
        save_model(composed, out / f"composed-{step.method}")
        if not step.finetuned:
            rows.append({"name": step.label, "kind": "composed", **_bpc(composed, data, pipeline.train)})
            log(f"composed {step.label}: bits/char {rows[-1]['bpc']}")
            timings["composition"] += time.perf_counter() - t
            continue
        res = pipeline.finetune(step, composed, data, out / f"finetuned-{step.method}", progress=progress, log=log)
        before = res["before"]  # the composed model as composed: its validation before the first step
        rows.append({"name": step.label, "kind": "composed", "bpc": before["val_bpc"], "val_loss": before["val_loss"]})
        log(f"composed {step.label}: bits/char {rows[-1]['bpc']}")
        rows.append({"name": f"{step.label} + fine-tune", "kind": "finetuned", "bpc": res["after"]["val_bpc"],
                     "val_loss": res["after"]["val_loss"], "step0_val_loss": before["val_loss"]})
        log(f"fine-tuned {step.label}: bits/char {rows[-1]['bpc']}")
        timings["fine-tuning"] += time.perf_counter() - t
    table = {"rows": rows, "seconds": round(time.perf_counter() - t0, 1), "recipe": spec.name,
             "timings": {k: round(v, 1) for k, v in timings.items()}}
    (out / "composition.json").write_text(json.dumps(table, indent=1))
    return table


def _last_validation(run: Path, model) -> dict | None:
    """The bpc and loss of a finished growth run's last stage-end validation, if it matches ``model``'s depth."""
    path = run / "metrics.jsonl"
    ends = [r for r in read_metrics(path) if r.get("type") == "stage_end"] if path.exists() else []
    if not ends or ends[-1].get("depth") != len(model.blocks):
        return None
    return {"bpc": ends[-1]["val_bpc"], "val_loss": ends[-1]["val_loss"]}


def _bpc(model, data, train: TrainSpec) -> dict:
    v = validate(model, data, train, next(model.parameters()).device)
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
    from growlm.report import write_report  # deferred: matplotlib takes a while to import; only the end needs it

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
