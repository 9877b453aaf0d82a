"""Growth plans: recipes, validation, budgets, shipped recipes."""

from __future__ import annotations

import pytest

from growlm.growth import RECIPE_DIR, Recipe, plan_budgets

BASE = {"model": {"preset": "tiny", "d_model": 32, "n_head": 2}, "substrate": {"kind": "glyph", "vocab": "compact"}}


def recipe(*stages, **extra):
    return Recipe.from_dict({**BASE, **extra, "stages": list(stages)})


def test_budgets_follow_the_plan():
    r = recipe({"add": 2, "train_newest": 2, "steps": 1}, {"add": 1, "steps": 1},
               {"train_newest": 0, "lora": {"rank": 2}, "steps": 1})
    b = plan_budgets(r)
    assert [s["depth"] for s in b] == [2, 3, 3]
    per_block = (b[0]["active_params"] - b[1]["active_params"])
    assert per_block > 0 and b[1]["total_params"] - b[0]["total_params"] == per_block
    assert b[2]["lora_params"] > 0 and b[2]["active_params"] == b[1]["active_params"] - per_block + b[2]["lora_params"]


def test_stage_that_trains_nothing_is_refused():
    with pytest.raises(ValueError, match="trains nothing"):
        recipe({"add": 1, "train_newest": 0, "train_head": False, "steps": 1})


def test_unknown_keys_name_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['stpes'\] in \[stages.0\]; valid keys are"):
        recipe({"add": 1, "stpes": 3})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['batch'\] in \[train\]"):
        recipe({"add": 1, "steps": 1}, train={"batch": 3})
    with pytest.raises(ValueError, match="unknown recipe section"):
        Recipe.from_dict({**BASE, "stage": [], "stages": [{"add": 1, "steps": 1}]})


def test_steps_or_tokens_and_mixtures():
    with pytest.raises(ValueError, match="exactly one of steps or tokens"):
        recipe({"add": 1})
    with pytest.raises(ValueError, match="names mixture 'xx'"):
        recipe({"add": 1, "steps": 1, "mixture": "xx"})
    r = recipe({"add": 1, "tokens": 10000}, train={"batch_size": 4, "seq_len": 32})
    assert r.stage_steps(r.stages[0]) == 79


def test_fingerprint_and_diff():
    a = recipe({"add": 1, "steps": 5})
    b = recipe({"add": 1, "steps": 6})
    assert a.fingerprint() != b.fingerprint()
    assert a.diff(b) == ["stages[0]"]


@pytest.mark.parametrize("path", sorted(RECIPE_DIR.glob("*.toml")), ids=lambda p: p.stem)
def test_shipped_recipes_parse_and_report_budgets(path):
    if "expert_recipe" in path.read_text():  # a composition recipe: its experts follow a growth plan
        from growlm.experiments import load_compose_recipe

        path = RECIPE_DIR / f"{load_compose_recipe(path)['expert_recipe']}.toml"
    r = Recipe.load(path)
    budgets = plan_budgets(r)
    assert len(budgets) == len(r.stages) and all(b["active_params"] > 0 for b in budgets)
