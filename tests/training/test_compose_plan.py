"""Tests for growlm.training.compose_plan: the typed composition recipe."""

from __future__ import annotations

import pytest

from growlm.training.compose_plan import ComposeOptions, ComposeRecipe, load_compose_recipe

HEAD = 'expert_recipe = "compose-expert"\n[experts]\na = { en = 1 }\nb = { ru = 1 }\n'


def test_a_recipe_reads_into_typed_fields_with_the_defaults_written_once(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(HEAD)
    spec = load_compose_recipe(path)
    assert isinstance(spec, ComposeRecipe) and spec.compose == ComposeOptions()
    assert (spec.name, spec.description, spec.expert_recipe) == (str(path), "", "compose-expert")
    assert spec.experts == {"a": {"en": 1}, "b": {"ru": 1}}
    assert spec.compose.lr_for("average") is None
    path.write_text('name = "x"\ndescription = "d"\n' + HEAD + '[compose]\nmethods = ["average", "adapter", "router"]'
                    '\nfinetune = ["adapter", "router"]\nfinetune_lr = { adapter = 3e-4, router = 3e-3 }\nrank = 4\n')
    spec = load_compose_recipe(path)
    assert (spec.name, spec.description, spec.compose.rank, spec.compose.finetune_steps) == ("x", "d", 4, 50)
    assert (spec.compose.lr_for("adapter"), spec.compose.lr_for("router"), spec.compose.lr_for("average")) == (
        3e-4, 3e-3, None)
    path.write_text(HEAD + '[compose]\nfinetune_lr = 1e-4\n')
    assert load_compose_recipe(path).compose.lr_for("router") == 1e-4


def test_the_shipped_composition_recipes_read():
    demo = load_compose_recipe("compose-demo")
    assert demo.name == "compose-demo" and demo.expert_recipe == "compose-expert"
    assert demo.compose.finetune == ["adapter", "router"] and demo.compose.finetune_steps == 12
    paper = load_compose_recipe("paper-v1-compose")
    assert paper.compose.train_heads and paper.compose.lr_for("average") == 1e-4


@pytest.mark.parametrize("text, message", [
    (HEAD + "[compose]\nfinetune_lr = { adpater = 1e-3 }\n", r"finetune_lr names unknown method 'adpater'"),
    (HEAD + '[compose]\nfinetune_lr = { router = -1 }\n', r"finetune_lr.router must be a number > 0, got -1"),
    (HEAD + '[compose]\nfinetune_lr = { router = "fast" }\n', r"finetune_lr.router must be a number > 0"),
    (HEAD.replace('expert_recipe = "compose-expert"\n', ""), "expert_recipe is missing"),
    ("name = 3\n" + HEAD, "name must be a string, got 3"),
    ("compose = 3\n" + HEAD, r"\[compose\] must be a table"),
])
def test_bad_recipes_are_refused_with_the_reason(tmp_path, text, message):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_compose_recipe(path)
