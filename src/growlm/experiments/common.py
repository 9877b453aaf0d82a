"""Parts the studies share: one model shape per size, training a plan into a seed's directory, measuring it."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from growlm.experiments.framework import SeedContext
from growlm.experiments.heldout import heldout_scores
from growlm.training.plan import Recipe

# The shapes a study trains. "default" is sized by FLOPs to fit a study (all arms, 3 seeds) into ~20 minutes on
# 2 CPU cores: at d_model 64 the compact vocabulary's head (64 x ~16K) is most of a step, about 7.6 MFLOP per
# training token for a 4-block model (study 1: 2.3 TFLOP per arm and seed, 35 TFLOP in all); "quick" runs in
# seconds for the tests.
SIZES = {
    "default": dict(d_model=64, n_head=2, seq_len=64, batch_size=16, lr=2e-3, warmup_steps=20, val_tokens=8192,
                    heldout_chars=None),
    "quick": dict(d_model=32, n_head=2, seq_len=16, batch_size=2, lr=3e-3, warmup_steps=1, val_tokens=34,
                  heldout_chars=120),
}


def size(ctx: SeedContext) -> dict:
    return SIZES["quick" if ctx.quick else "default"]


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
                      "ckpt_every": 0 if ctx.quick else 200, "log_every": 10, "seed": 1000 + ctx.seed},
            "stages": copy.deepcopy(stages)}


def train(ctx: SeedContext, raw: dict, name: str) -> Path:
    """Grow ``raw`` into ``ctx.work/name`` (resumed if it was interrupted, reused if finished); the run dir."""
    from growlm.training.run import grow

    run = ctx.work / name
    if not (run / "model" / "model.json").exists():
        ctx.log(f"-- {name}")
        grow(Recipe.from_dict(raw), run, resume=(run / "checkpoints").exists(), progress=ctx.progress,
             log=ctx.log if ctx.progress else (lambda *a, **k: None))
    return run


def measure(ctx: SeedContext, model_dir: Path, raw: dict) -> dict:
    """Validation-split and held-out bits per character per language of a saved stage, and their language means.

    The validation figures are the ones training measured at the end of that stage (saved with it); the held-out
    texts are scored here with the same definition (``growlm.evaluate.bpc``)."""
    from growlm.model.saved import load_model

    meta = json.loads((model_dir / "model.json").read_text(encoding="utf-8"))
    if "val_bpc" not in meta:
        raise ValueError(f"{model_dir} carries no validation bits per character; measure a stage directory")
    val = meta["val_bpc"]
    recipe = Recipe.from_dict(raw)
    scores = heldout_scores(load_model(model_dir), recipe.substrate.vocab, recipe.train.seq_len,
                            max_chars=size(ctx)["heldout_chars"])
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
    from growlm.training.budget import plan_flops as counted

    return counted(Recipe.from_dict(raw))
