"""Recipe overrides (--set KEY=VALUE) and recipes started from a shipped template (growlm init-recipe)."""

from __future__ import annotations

from pathlib import Path

import pytest

from growlm.training.plan import Recipe, apply_overrides, recipe_from_template


def test_overrides_set_values_checked_as_the_file_is() -> None:
    r = Recipe.load("demo", overrides=["train.lr=1e-3", "stages.1.steps=50", "train.betas=[0.9, 0.99]",
                                       "data.path=data/mine", "stages.3.lora.rank=4"])
    assert r.train.lr == 1e-3 and r.stages[1].steps == 50 and r.train.betas == (0.9, 0.99)
    assert r.data.path == "data/mine" and r.stages[3].lora.rank == 4
    assert r.raw["stages"][1]["steps"] == 50 and r.source == ""  # raw is what a run saves as plan.json
    assert Recipe.load("demo").stages[1].steps == 36  # the shipped file is untouched
    for bad, match in [("train.lrr=1", r"unknown key.*lrr"), ("stages.9.steps=1", r"stages 0 \.\. 4"),
                       ("stages.1.steps=-1", "steps must be >= 0"), ("train.lr", "KEY=VALUE"),
                       ("train.lr.x=1", "is a value"), ("stages.1=3", "not the stage itself"),
                       ("train.lr=fast", "lr")]:
        with pytest.raises(ValueError, match=match):
            Recipe.load("demo", overrides=[bad])


def test_overrides_leave_the_parsed_recipe_alone() -> None:
    raw = Recipe.load_raw("demo")
    apply_overrides(raw, ["train.lr=1", "stages.0.steps=2"])
    assert raw["train"]["lr"] == 2e-3 and raw["stages"][0]["steps"] == 56


def test_init_recipe_copies_a_shipped_recipe(tmp_path: Path) -> None:
    out = recipe_from_template("demo", tmp_path / "mine.toml", data="data/mine")
    text = out.read_text()
    assert text.startswith("# Started from the shipped recipe 'demo'") and "# paper-style block" in text
    r = Recipe.load(out)
    assert r.name == "mine" and r.data.path == "data/mine"
    assert r.settings()["stages"] == Recipe.load("demo").settings()["stages"]
    with pytest.raises(FileExistsError, match="exists"):
        recipe_from_template("demo", out)
    with pytest.raises(FileNotFoundError, match="shipped recipes"):
        recipe_from_template("nope", tmp_path / "x.toml")
