"""Parts the studies share: one model shape per size, training a plan into a seed's directory, measuring it."""

from __future__ import annotations

import contextlib
import copy
import json
from pathlib import Path

import torch

from growlm.experiments.framework import SeedContext
from growlm.experiments.heldout import heldout_scores
from growlm.model.saved import load_model
from growlm.training.budget import plan_flops as counted_plan_flops
from growlm.training.flops import resolve_precision
from growlm.training.loop import autocast
from growlm.training.plan import Recipe
from growlm.training.run import grow

# The shapes a study trains, one per scale (framework.SCALES). "default" is sized by FLOPs to fit a study (all arms, 3
# seeds) into ~20 minutes on 2 CPU cores: at d_model 64 the compact vocabulary's head (64 x ~16K) is most of a step,
# about 7.6 MFLOP per training token for a 4-block model (study 1: 2.3 TFLOP per arm and seed, 35 TFLOP in all);
# "quick" runs in seconds for the tests. "cpu10x" (~3e13 FLOPs per run) widens to d_model 256, where a block
# (~0.79M parameters) is no longer tiny beside the head (256 x 16384 + bias = 4.2M): from 6 blocks on, the blocks are
# over half of the trainable parameters, so the studies grow to 6 blocks at this scale. "gpu" (~1e16 FLOPs per run)
# trains on one CUDA device (``ctx.device``) in bf16 (``precision`` goes into the recipe; ``runtime`` gives both to
# every training, fine-tune and scoring); d_model 1024, where a block is 12.6M parameters and the head 16.8M, so the
# blocks are over half from 2 blocks on. tests/experiments/test_scales.py holds every arm of every study to its
# scale's FLOPs range and the cpu10x/gpu models to blocks >= half.
SIZES = {
    "default": dict(d_model=64, n_head=2, seq_len=64, batch_size=16, lr=2e-3, warmup_steps=20, val_tokens=8192,
                    heldout_chars=None),
    "quick": dict(d_model=32, n_head=2, seq_len=16, batch_size=2, lr=3e-3, warmup_steps=1, val_tokens=34,
                  heldout_chars=120),
    "cpu10x": dict(d_model=256, n_head=4, seq_len=128, batch_size=16, lr=1e-3, warmup_steps=30, val_tokens=16384,
                   heldout_chars=None),
    "gpu": dict(d_model=1024, n_head=16, seq_len=512, batch_size=32, lr=3e-4, warmup_steps=50, val_tokens=65536,
                heldout_chars=None, precision="bf16"),
}


def size(ctx: SeedContext) -> dict:
    """The shared shape of the context's scale."""
    return SIZES[ctx.scale]


def runtime(ctx: SeedContext) -> tuple[torch.device, str]:
    """The device and the resolved precision ("fp32" or "bf16") a study trains, fine-tunes and scores in:
    ``ctx.device`` (cuda at the gpu scale, else the CPU) and the scale's ``precision`` (the recipe's "auto" where the
    scale names none). Every device and precision of a study comes from here (tests/experiments/test_devices.py)."""
    device = torch.device(ctx.device)
    return device, resolve_precision(size(ctx).get("precision", "auto"), device)


def scoring(ctx: SeedContext) -> contextlib.AbstractContextManager:
    """The context held-out and gold-answer scoring run in: the scale's precision where the scale names one (bf16
    autocast at gpu, as its training and validation); none at the CPU scales, which score in fp32 as they always
    have."""
    if "precision" not in size(ctx):
        return contextlib.nullcontext()
    return autocast(*runtime(ctx))


def plan(ctx: SeedContext, stages: list[dict], kind: str = "glyph", model: dict | None = None,
         substrate: dict | None = None, name: str = "study") -> dict:
    """A recipe (as a dict) at the context's size and seed: compact vocabulary, paper-style block."""
    s = size(ctx)
    return {"name": name,
            "model": {"preset": "demo", "d_model": s["d_model"], "n_head": s["n_head"], "n_layer": 0,
                      "block_size": s["seq_len"], **(model or {})},
            "substrate": {"kind": kind, "vocab": "compact", **(substrate or {})},
            "data": {"path": ctx.data},
            "train": {"batch_size": s["batch_size"], "seq_len": s["seq_len"], "lr": s["lr"],
                      "warmup_steps": s["warmup_steps"], "val_tokens": s["val_tokens"], "val_every": 0,
                      "ckpt_every": 0 if ctx.quick else 200, "log_every": 10, "seed": 1000 + ctx.seed,
                      **({"precision": s["precision"]} if "precision" in s else {})},
            "stages": copy.deepcopy(stages)}


def train(ctx: SeedContext, raw: dict, name: str) -> Path:
    """Grow ``raw`` into ``ctx.work/name`` (resumed if it was interrupted, reused if finished); the run dir.

    A run directory is reused or resumed only if the plan it stores (``plan.json``) is ``raw``'s; one made by another
    plan (the study's recipe changed since) is refused, never reused and never deleted (``check_same_plan``)."""
    run = ctx.work / name
    check_same_plan(run, raw)
    if not (run / "model" / "model.json").exists():
        ctx.log(f"-- {name}")
        grow(Recipe.from_dict(raw), run, resume=(run / "checkpoints").exists(), progress=ctx.progress,
             log=ctx.log if ctx.progress else (lambda *a, **k: None), device=str(runtime(ctx)[0]))
    return run


def check_same_plan(run: Path, raw: dict) -> None:
    """Refuse a run directory that holds (or began) a run of another plan than ``raw``.

    Refused rather than retrained under a fresh name: what a study builds on a run (fine-tunes, composed models, arms
    started from a saved base) sits beside it under fixed names and would silently keep the old run's results."""
    saved = run / "plan.json"
    if not saved.exists():
        if (run / "model" / "model.json").exists():
            raise ValueError(f"{run} holds a finished run with no plan.json, so it cannot be checked against the "
                             "study's plan; remove it (or pass another --work) and rerun")
        return
    wanted, old = Recipe.from_dict(raw), Recipe.load(saved)
    if wanted.fingerprint() != old.fingerprint():
        raise ValueError(f"{run} holds a run of another plan than the study's (it differs in "
                         f"{', '.join(wanted.diff(old)) or 'its fingerprint'}): the study changed since it was "
                         "trained. It is neither reused nor deleted: remove it, with what the study built on it in "
                         f"{run.parent} (or that whole directory), or pass another --work, then rerun")


def measure(ctx: SeedContext, model_dir: Path, raw: dict) -> dict:
    """Validation-split and held-out bits per character per language of a saved stage, and their language means.

    The validation figures are the ones training measured at the end of that stage (saved with it); the held-out
    texts are scored here with the same definition (``growlm.evaluate.bpc``)."""
    meta = json.loads((model_dir / "model.json").read_text(encoding="utf-8"))
    if "val_bpc" not in meta:
        raise ValueError(f"{model_dir} carries no validation bits per character; measure a stage directory")
    val = meta["val_bpc"]
    recipe = Recipe.from_dict(raw)
    with scoring(ctx):
        scores = heldout_scores(load_model(model_dir).to(runtime(ctx)[0]), recipe.substrate.vocab,
                                recipe.train.seq_len, max_chars=size(ctx)["heldout_chars"])
    row = {f"val_bpc_{k}": v for k, v in val.items()}
    row.update(heldout_row(scores))
    row["val_bpc"] = round(sum(val.values()) / len(val), 4)
    return row


def heldout_row(scores: dict) -> dict:
    """Held-out bpc per language and their mean, and per language with several documents the half-width of its 95%
    bootstrap interval over documents (``heldout_doc_hw_LANG``: the texts' sampling error, beside the seeds')."""
    row = {f"heldout_bpc_{k}": round(s.bpc, 4) for k, s in scores.items()}
    row["heldout_bpc"] = round(sum(s.bpc for s in scores.values()) / len(scores), 4)
    for k, s in scores.items():
        ci = s.interval()
        if ci is not None:
            row[f"heldout_doc_hw_{k}"] = round((ci[1] - ci[0]) / 2, 4)
    return row


DOC_METRICS = tuple(f"heldout_doc_hw_{k}" for k in ("en", "ru", "zh"))  # summarised where a study lists them


def last_stage(run: Path) -> Path:
    """The directory of a finished run's last stage (its model, with the validation training measured)."""
    stages = sorted((run / "stages").glob("stage-*"))
    if not stages:
        raise ValueError(f"{run} has no saved stage")
    return stages[-1]


def plan_flops(raw: dict) -> dict:
    """Training FLOPs of a plan given as a dict (``growlm.training.budget.plan_flops``)."""
    return counted_plan_flops(Recipe.from_dict(raw))
