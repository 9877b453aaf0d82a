"""Every study at every scale, sized without training: each arm's plan FLOPs within its scale's range, and at the
larger scales the blocks at least half of the trainable parameters."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from growlm.experiments import common, composition, continual, depth, grown_vs_monolithic, insertion_spike, substrates
from growlm.experiments.framework import SCALES, SeedContext, load_studies
from growlm.training.plan import Recipe, parameter_budget

# FLOPs per run (plan_flops) each scale must keep to: cpu10x ~10x the default's ~3e12, gpu ~1e16
RANGES = {"cpu10x": (1.5e13, 6e13), "gpu": (3e15, 3e16)}
GPU_SEED_FLOPS = 0.4 * 989e12 * 8 * 60  # one seed's arms in 8 minutes on one H100 at an assumed 40% bf16 MFU


def _grown(shape_steps: int, n: int) -> list[dict]:
    return [{"name": f"grow-{i + 1}", "add": 1, "train_newest": 1, "steps": shape_steps} for i in range(n)]


def arm_plans(study: str, ctx: SeedContext) -> dict[str, dict]:
    """The recipe of every trained arm of one seed, written from scratch (what it costs to train alone)."""
    s = ctx.shape
    if study == "substrates":
        stages = [{"name": "all", "add": substrates.DEPTH[s], "train_newest": substrates.DEPTH[s],
                   "steps": substrates.STEPS[s]}]
        return {arm: common.plan(ctx, stages, kind=kind, model=model) for arm, (kind, model) in substrates.ARMS.items()}
    if study == "grown-vs-monolithic":  # its equal-FLOPs arms train the grown runs' FLOPs by construction
        g = grown_vs_monolithic
        n, d = g.STAGE_STEPS[s], g.DEPTH[s]
        mono = [{"name": "all", "add": d, "train_newest": d, "steps": d * n}]
        lora = [dict(st, lora=dict(g.LORA)) if i else st for i, st in enumerate(_grown(n, d))]
        return {"grown": common.plan(ctx, _grown(n, d)), g.GROWN_LORA: common.plan(ctx, lora),
                g.GROWN_BINARY: common.plan(ctx, _grown(n, d), kind="binary"),
                "monolithic frozen": common.plan(ctx, mono, model=g.FROZEN),
                "monolithic trainable": common.plan(ctx, mono, model=g.TRAINABLE)}
    if study == "depth":  # and the equal-steps control of the final depth (those of smaller depths are shorter)
        k = depth.DEPTH[s]
        stages = depth.growth_stages(s)
        return {"grown": common.plan(ctx, stages),
                f"equal steps {k}": common.plan(ctx, [*stages[:k - 1], depth.extension(k, s)])}
    if study == "composition":  # the experts (frozen substrate, and the learned-embedding control)
        return {name: composition.expert_plan(ctx, name) for name in (*composition.EXPERTS, *composition.CONTROL)}
    if study == "continual":
        return continual.plans(ctx)
    if study == "insertion-spike":
        base = common.plan(ctx, _grown(insertion_spike.BASE_STEPS[s], insertion_spike.BASE_DEPTH[s]))
        out = {}
        for init, head in insertion_spike.arms():
            raw = copy.deepcopy(base)
            raw["stages"].append(insertion_spike.insertion_stage(init, head, s))
            out[f"{init} / {head}"] = raw
        return out
    raise KeyError(study)


STUDY_NAMES = ("substrates", "grown-vs-monolithic", "depth", "composition", "continual", "insertion-spike")


def test_every_registered_study_is_sized_here():
    assert set(load_studies()) == set(STUDY_NAMES)


def blocks_share(raw: dict) -> float:
    """The blocks' share of the final model's trainable parameters on the frozen substrate (blocks, norm, head)."""
    recipe = Recipe.from_dict(raw)
    depth_ = sum(st.add for st in recipe.stages)
    b = parameter_budget(recipe.config().__class__.from_dict({**recipe.config().to_dict(), "n_layer": depth_}))
    return b["per_block"] * b["n_layer"] / b["frozen_interface"]


@pytest.mark.parametrize("scale", [s for s in SCALES if s in RANGES])
@pytest.mark.parametrize("study", STUDY_NAMES)
def test_every_arm_of_every_study_fits_its_scale(study, scale):
    ctx = SeedContext(seed=0, scale=scale, work=Path("."))
    plans = arm_plans(study, ctx)
    assert plans
    low, high = RANGES[scale]
    for arm, raw in plans.items():
        f = common.plan_flops(raw)["train_flops"]
        assert low <= f <= high, f"{study} {arm} at {scale}: {f:.3g} FLOPs, outside [{low:.1g}, {high:.1g}]"
        if arm.startswith("equal steps"):  # depth k-1 by definition (the depth study measures every depth)
            continue
        share = blocks_share(raw)
        assert share >= 0.5, f"{study} {arm} at {scale}: blocks are {share:.0%} of the trainable parameters"
        assert raw["model"]["d_model"] == common.SIZES[scale]["d_model"]
    if scale == "gpu":
        assert all(raw["train"]["precision"] == "bf16" for raw in plans.values())


@pytest.mark.parametrize("study", STUDY_NAMES)
def test_gpu_seed_fits_eight_minutes_at_forty_percent_mfu(study):
    """One seed's training at the gpu scale, as the study runs it (shared bases counted once), fits 8 H100 minutes
    at an assumed 40% of 989 TFLOP/s bf16 (fine-tunes and scoring are smaller and come on top)."""
    ctx = SeedContext(seed=0, scale="gpu", work=Path("."))
    if study == "continual":
        total = continual.study_flops("gpu")["seed"]
    elif study == "insertion-spike":
        total = insertion_spike.study_flops("gpu")["seed"]
    elif study == "depth":
        total = sum(depth.study_flops("gpu").values())
    else:
        plans = arm_plans(study, ctx)
        total = sum(common.plan_flops(raw)["train_flops"] for raw in plans.values())
        if study == "grown-vs-monolithic":  # three more arms at equal FLOPs: two the grown run's, one the binary's
            f = {k: common.plan_flops(plans[k])["train_flops"] for k in ("grown", grown_vs_monolithic.GROWN_BINARY)}
            total += 2 * f["grown"] + f[grown_vs_monolithic.GROWN_BINARY]
    assert total <= GPU_SEED_FLOPS, f"{study}: {total:.3g} FLOPs per seed at gpu scale"


def test_default_and_quick_shapes_are_unchanged():
    """The scales left today's shapes alone: the committed runs' plans (and so their fingerprints) still match."""
    assert common.SIZES["default"]["d_model"] == 64 and common.SIZES["quick"]["d_model"] == 32
    ctx = SeedContext(seed=0, scale="default", work=Path("."))
    raw = arm_plans("grown-vs-monolithic", ctx)["grown"]
    assert "precision" not in raw["train"] and common.plan_flops(raw)["train_flops"] < 6e12


def test_the_cli_names_the_scale(capsys):
    from growlm.cli import main

    assert main(["experiment", "depth", "--scale", "huge"]) == 2
    assert "unknown --scale 'huge'; the scales are quick, default, cpu10x, gpu" in capsys.readouterr().err
    assert main(["experiment", "depth", "--quick", "--scale", "gpu"]) == 2
    assert "--quick is --scale quick" in capsys.readouterr().err
