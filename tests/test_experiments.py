"""Shipped paper recipes run on a tiny config; the composition study and the demo run end to end."""

from __future__ import annotations

import json

import pytest

from growlm.growth import RECIPE_DIR, Recipe
from growlm.metrics import read_metrics
from growlm.train import grow

QUIET = dict(progress=False, log=lambda *a: None)


def shrink(raw: dict, data: str) -> dict:
    """A paper recipe cut down to seconds on CPU: same stages, tiny widths, one step each."""
    raw = json.loads(json.dumps(raw))
    raw["model"].update(d_model=32, n_head=2, block_size=32)
    raw["substrate"]["vocab"] = "compact"
    raw["data"]["path"] = data
    raw["train"].update(batch_size=2, seq_len=16, grad_accum=1, val_tokens=64, val_every=0, ckpt_every=0)
    for st in raw["stages"]:
        st.pop("tokens", None)
        st["steps"] = 1
        if "lora" in st:
            st["lora"]["rank"] = 2
    return raw


@pytest.mark.parametrize("name", sorted(p.stem for p in RECIPE_DIR.glob("paper-*.toml")))
def test_paper_recipes_run_a_few_steps(name, tiny_data, tmp_path):
    recipe = Recipe.from_dict(shrink(Recipe.load(name).raw, str(tiny_data)))
    grow(recipe, tmp_path / "run", **QUIET)
    ends = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["type"] == "stage_end"]
    assert len(ends) == len(recipe.stages)


def test_compose_study_and_demo(tiny_recipe, tiny_data, tmp_path):
    from growlm.experiments import run_demo

    expert = tmp_path / "expert.toml"
    expert.write_text(tiny_recipe(steps=3).read_text())
    study = tmp_path / "study.toml"
    study.write_text(f'''name = "tiny-study"
expert_recipe = "{expert}"
[experts]
en_ru = {{ en = 1, ru = 1 }}
en_zh = {{ en = 1, zh = 1 }}
[compose]
methods = ["average", "prob", "adapter", "router"]
finetune = ["router"]
finetune_steps = 3
''')
    summary = run_demo(tmp_path / "demo", grow_recipe=str(expert), compose_recipe=str(study), **QUIET)
    table = json.loads((tmp_path / "demo" / "compose" / "composition.json").read_text())
    kinds = [r["kind"] for r in table["rows"]]
    assert kinds == ["expert", "expert", "composed", "composed", "composed", "composed", "finetuned"]
    assert all(set(r["bpc"]) == {"en", "ru", "zh"} for r in table["rows"])
    ft = table["rows"][-1]
    router = next(r for r in table["rows"] if r["name"].startswith("router"))
    assert ft["step0_val_loss"] == pytest.approx(router["val_loss"], abs=1e-3)  # fine-tuning starts there
    report = (tmp_path / "demo" / "report" / "report.md").read_text()
    assert ".png" in report and summary["total_seconds"] > 0

    from growlm.cli import main as cli_main

    composed = tmp_path / "demo" / "compose" / "composed-adapter"
    assert cli_main(["finetune", str(composed), "--data", str(tiny_data), "--steps", "2", "--batch-size", "2",
                     "--seq-len", "16", "--val-tokens", "64", "--out", str(tmp_path / "ft")]) == 0
    assert (tmp_path / "ft" / "model" / "model.json").exists()
