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


def _pipeline_recipe(tmp_path, expert_path: str) -> str:
    path = tmp_path / "study.toml"
    path.write_text(f'expert_recipe = "{expert_path}"\n[experts]\nen_ru = {{ en = 1, ru = 1 }}\n'
                    'en_zh = { en = 1, zh = 1 }\n[compose]\nmethods = ["average", "posterior", "adapter", "router"]\n'
                    'finetune = ["adapter", "router"]\nfinetune_steps = 3\nfinetune_lr = { adapter = 3e-4 }\n'
                    'train_heads = true\nwindow = 2\nrank = 4\n')
    return str(path)


def test_pipeline_from_a_recipe_holds_every_rule_once(tiny_recipe, tmp_path):
    from growlm.training.compose_plan import ComposePipeline
    from growlm.training.plan import Recipe

    expert = tiny_recipe(steps=2)
    p = ComposePipeline.from_recipe(load_compose_recipe(_pipeline_recipe(tmp_path, str(expert))))
    assert [e.name for e in p.experts] == ["en_ru", "en_zh"] and p.train == Recipe.load(expert).train
    assert all(st.mixture == "expert" for e in p.experts for st in e.recipe.stages)
    assert p.experts[1].recipe.data.mixtures["expert"] == {"en": 1, "zh": 1}
    got = [(s.label, s.method, s.window, s.train_heads, s.finetune_steps, s.lr, s.rank) for s in p.steps]
    assert got == [("average(en_ru+en_zh)", "average", 0, False, 0, None, 4),
                   ("posterior(en_ru+en_zh)", "posterior", 2, False, 0, None, 4),
                   ("adapter(en_ru+en_zh)", "adapter", 0, True, 3, 3e-4, 4),
                   ("router(en_ru+en_zh)", "router", 0, True, 3, None, 4)]
    assert [s.finetuned for s in p.steps] == [False, False, True, True] and p.seed is None


def test_pipeline_build_copies_the_experts_whose_heads_train_and_seeds_the_fusion(tiny_recipe, tmp_path):
    import torch

    from growlm.model import GrowLM
    from growlm.training.compose_plan import ComposePipeline

    p = ComposePipeline.from_recipe(load_compose_recipe(_pipeline_recipe(tmp_path, str(tiny_recipe(steps=2)))))
    models = {e.name: GrowLM(e.recipe.config()).eval() for e in p.experts}
    for m in models.values():
        m.grow(1)
    average, adapter = p.build(p.steps[0], models), p.build(p.steps[2], models)
    assert all(a is models[n] for a, n in zip(average.experts, ("en_ru", "en_zh")))  # nothing trains: shared
    assert all(a is not models[n] for a, n in zip(adapter.experts, ("en_ru", "en_zh")))  # heads train: copies
    assert all(a.head.weight.requires_grad for a in adapter.experts)
    assert not any(m.head.weight.requires_grad for m in models.values())
    assert p.build(p.steps[1], models).window == 2 and adapter.rank == 4
    p.seed = 7
    first, second = p.build(p.steps[2], models), p.build(p.steps[2], models)
    assert torch.equal(first.adapter.proj, second.adapter.proj)


def test_the_demo_budget_counts_the_pipelines_steps(tiny_recipe, tmp_path):
    from growlm.demo import demo_budget
    from growlm.training.compose_plan import ComposePipeline

    expert = str(tiny_recipe(steps=2, val_every=2))
    study = _pipeline_recipe(tmp_path, expert)
    p = ComposePipeline.from_recipe(load_compose_recipe(study))
    b = demo_budget(expert, study, exact=False)
    assert [i["method"] for i in b.part("composition").items] == [s.method for s in p.steps if not s.finetuned]
    trained = [i for i in b.part("fine-tuning").items if i["what"] == "train"]
    assert [(i["method"], i["steps"]) for i in trained] == [(s.method, s.finetune_steps) for s in p.steps
                                                            if s.finetuned]
    assert {i["expert"] for i in b.part("experts").items} == {e.name for e in p.experts}
