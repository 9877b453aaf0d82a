"""The demo's FLOP budget: counted from the recipes, equal to what the trainer logs, within 11 TFLOP."""

from __future__ import annotations

import pytest
import torch

from growlm.data.tokens import open_data
from growlm.demo import demo_budget
from growlm.evaluate.bpc import score_split
from growlm.model import Config, GrowLM
from growlm.model.composition import compose
from growlm.training import budget, flops, stages
from growlm.training.metrics import read_metrics
from growlm.training.plan import Recipe
from growlm.training.run import grow

QUIET = dict(progress=False, log=lambda *a: None)
DEMO_LIMIT = 11e12  # issue 11: growlm demo in 8 minutes at 40 GFLOP/s


def test_shipped_demo_fits_its_flop_budget():
    b = demo_budget(exact=False)  # validation counted as val_tokens per language: an upper bound
    assert b.total <= DEMO_LIMIT, budget.budget_table(b)
    assert sum(p.flops for p in b.parts) == pytest.approx(b.total, rel=1e-12)
    assert budget.Budget.from_dict(b.to_dict()).to_dict() == b.to_dict()  # what the demo's summary.json keeps
    names = [p.name for p in b.parts]
    assert names == ["growth", "samples", "experts", "composition", "fine-tuning", "report"]
    for name in ("growth", "samples", "experts", "composition", "fine-tuning"):
        part = b.part(name)
        assert part.flops > 0 and part.flops == pytest.approx(sum(i["flops"] for i in part.items), rel=1e-12)
        assert 0 <= part.validation <= part.flops
    full = demo_budget("demo-full", "compose-demo-full", exact=False)
    assert full.total > 2 * b.total  # --full is the longer demo
    rows = budget.budget_table(b, {"growth": 10.0}, peak=1e11)
    assert rows[-1].startswith("| total | ") and len(rows) == len(names) + 3
    growth_row = next(r for r in rows if r.startswith("| growth |"))
    assert f"{b.part('growth').flops / 10.0 / 1e11:.0%}" in growth_row


def test_training_count_equals_the_trainers_log(tiny_recipe, tmp_path, monkeypatch):
    monkeypatch.setattr(flops, "cpu_peak", lambda: {"fp32": 1e11, "bf16": 1e9})  # not measured: fp32, quickly
    recipe = Recipe.load(tiny_recipe(steps=3, val_every=2))  # a grow, a LoRA and an identity-init stage
    part, depths = budget.grow_part(recipe, [32])
    grow(recipe, tmp_path / "run", **QUIET)
    metrics = read_metrics(tmp_path / "run" / "metrics.jsonl")
    ends = [r for r in metrics if r["type"] == "stage_end"]
    trained = [i for i in part.items if i["what"] == "train"]
    assert len(trained) == len(ends) == 3
    tokens_before = 0
    for item, end in zip(trained, ends):
        logged = {r["flops_per_token"] for r in metrics if r["type"] == "train" and r["stage"] == end["stage"]}
        assert logged == {item["flops_per_token"]}, end["name"]
        assert item["tokens"] == end["tokens"] - tokens_before
        tokens_before = end["tokens"]
    assert [len(m.blocks) for m in depths] == [e["depth"] for e in ends]
    # validations inside the stages (at global steps 2, 4 and 8; step 6 ends a stage) and one at each end
    val_inside = [r for r in metrics if r["type"] == "val"]
    counted = sum(i.get("passes", 0) for i in part.items if i["what"] == "validate")
    assert counted == len(val_inside) + len(ends)


def test_validation_windows_are_the_ones_validation_scores(tiny_recipe, tiny_data):
    recipe = Recipe.load(tiny_recipe())
    data = open_data(tiny_data, "compact")
    model = GrowLM(recipe.config())
    scored = []
    for lang in data.languages:
        scored += score_split(model, data, lang, recipe.train.seq_len, recipe.train.val_tokens).window_tokens
    windows = budget.validation_windows(data, recipe.train)
    assert windows == scored
    bound = budget.validation_bound(data.languages, recipe.train)
    assert sum(bound) >= sum(windows) and budget.forward_flops(model, bound) >= budget.forward_flops(model, windows)


def test_demo_budget_on_tiny_recipes(tiny_recipe, tiny_data, tmp_path):
    expert = tiny_recipe(steps=2, val_every=2, name="expert.toml")
    study = tmp_path / "study.toml"
    study.write_text(f'expert_recipe = "{expert}"\n[experts]\na = {{ en = 1 }}\nb = {{ ru = 1 }}\n'
                     '[compose]\nmethods = ["average", "router"]\nfinetune = ["router"]\nfinetune_steps = 5\n')
    b = demo_budget(str(expert), str(study))
    assert b.total <= demo_budget(str(expert), str(study), exact=False).total
    assert [i["method"] for i in b.part("composition").items] == ["average"]  # router's row: the fine-tune's
    tune = b.part("fine-tuning").items
    assert [i["what"] for i in tune] == ["train", "validate"] and tune[0]["tokens"] == 5 * 4 * 32
    assert tune[1]["passes"] == 4  # the fine-tune validates at steps 0, 2, 4 and 5 (tests/training/test_loop.py)
    assert b.part("experts").flops == pytest.approx(2 * b.part("growth").flops, rel=1e-12)  # same plan twice
    from growlm.cli import main

    assert main(["demo", "--recipe", str(expert), "--compose-recipe", str(study), "--budget"]) == 0


V, T = 512, 16


def _experts(n: int = 2) -> list[GrowLM]:
    torch.manual_seed(0)
    return [GrowLM(Config.from_preset("tiny", vocab_size=V, d_model=32, n_head=2, n_layer=k + 1, block_size=T))
            for k in range(n)]


@pytest.mark.parametrize("method, heads", [("router", False), ("adapter", False), ("adapter", True),
                                           ("prob", True), ("router", True)])
def test_composed_step_count_matches_torch_flop_counter(method, heads):
    composed = compose(_experts(), method=method, rank=4, train_heads=heads)
    counted = flops.counted_flops(composed, T, V)
    attention = sum(4 * (T + 1) / 2 * 32 * len(e.blocks) for e in composed.experts)  # not counted on CPU
    assert counted.total == pytest.approx(budget.composed_step_flops(composed, T) - attention, rel=1e-9)


@pytest.mark.parametrize("method", ["average", "prob", "adapter", "router"])
def test_composed_forward_count_matches_torch_flop_counter(method):
    from torch.utils.flop_counter import FlopCounterMode

    composed = compose(_experts(), method=method, rank=4)
    idx = torch.randint(0, V, (1, T + 1))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        composed(idx[:, :-1], idx[:, 1:])
    attention = sum(4 * (T + 1) / 2 * 32 * len(e.blocks) for e in composed.experts)
    assert counter.get_total_flops() == pytest.approx(budget.forward_flops(composed, [T]) - T * attention, rel=1e-9)


def test_generation_count():
    m = _experts(1)[0]
    a = flops.step_flops(m, 1, train=False).forward  # one token, one key
    head = 2.0 * 32 * V
    assert budget.generation_flops(m, 1, 1) == pytest.approx(a)
    # a 4-token prefill is 4 tokens' blocks over 1..4 keys and one head; then 2 steps at 5 and 6 keys
    b = flops.step_flops(m, 3, train=False).forward - a
    prefill = 4 * (a - b - head) + b * (1 + 2 + 3 + 4) + head
    assert budget.generation_flops(m, 4, 3) == pytest.approx(prefill + 2 * (a - b) + b * (5 + 6))
    with pytest.raises(ValueError, match="prompt and new_tokens must be >= 1"):
        budget.generation_flops(m, 0, 3)


def test_plan_flops_counts_the_last_stages_lora_adapters():
    """A plan whose last stage trains LoRA adapters on the frozen blocks: its active parameters are those the stage
    trains (adapters included), not the merged model's after the stage ends."""
    raw = Recipe.load_raw("demo")
    raw["stages"][-1]["lora"] = {"rank": 4, "alpha": 8}
    recipe = Recipe.from_dict(raw)
    last = stages.plan_budgets(recipe)[-1]
    assert last["lora_params"] > 0
    assert budget.plan_flops(recipe)["active_params"] == last["active_params"]
    raw["stages"][-1].pop("lora")
    plain = budget.plan_flops(Recipe.from_dict(raw))["active_params"]
    assert plain == stages.plan_budgets(Recipe.from_dict(raw))[-1]["active_params"]
    assert last["active_params"] == plain + last["lora_params"]


def test_plan_stages_gives_each_stage_its_budget_tokens_and_flops():
    """``growlm plan``'s numbers: per stage the parameter budget, tokens (steps x batch x seq_len) and the training
    FLOPs the demo's budget counts for that stage; their sums are ``plan_flops``; the table shows each."""
    recipe = Recipe.load("demo")
    planned = budget.plan_stages(recipe)
    assert [st["stage"] for st in planned] == [st.name for st in recipe.stages]
    assert [{k: st[k] for k in ("stage", "kind", "steps", "depth", "active_params", "lora_params", "total_params")}
            for st in planned] == stages.plan_budgets(recipe)
    for st in planned:
        assert st["tokens"] == st["steps"] * recipe.train.batch_size * recipe.train.seq_len
    growth = demo_budget(exact=False).part("growth")
    trained = [it["flops"] for it in growth.items if it["what"] == "train"]
    assert [st["train_flops"] for st in planned] == trained
    assert budget.plan_flops(recipe)["train_flops"] == sum(trained)
    table = budget.plan_stages_table(recipe, planned)
    rows = [r for r in table if r.startswith("| ") and not r.startswith("| stage")]
    assert len(rows) == len(planned) and rows[3].startswith("| lora-1 | lora | 16 | 3 | ")
    assert f"{sum(trained) / 1e12:.3g} TFLOP of training" in table[-1]
    assert table[0].startswith("demo: paper block, d_model 128, 4 heads, vocabulary compact (16,384 ids)")
