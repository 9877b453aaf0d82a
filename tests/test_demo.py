"""Shipped paper recipes run on a tiny config; the composition study and the demo run end to end."""

from __future__ import annotations

import json

import pytest
import torch

from growlm.training.metrics import read_metrics
from growlm.training.plan import RECIPE_DIR, Recipe
from growlm.training.run import grow

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


PAPER = sorted(p.stem for p in RECIPE_DIR.glob("paper-*.toml") if "expert_recipe" not in p.read_text())


@pytest.mark.parametrize("name", PAPER)
def test_paper_recipes_run_a_few_steps(name, tiny_data, tmp_path):
    recipe = Recipe.from_dict(shrink(Recipe.load_raw(name), str(tiny_data)))
    grow(recipe, tmp_path / "run", **QUIET)
    ends = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["type"] == "stage_end"]
    assert len(ends) == len(recipe.stages)


def test_paper_recipes_use_the_papers_shape_and_interfaces():
    for name in PAPER:
        raw = Recipe.load_raw(name)
        m, sub = raw["model"], raw["substrate"]
        assert sub["vocab"] in ("bvv241-2-3", "bvv241-abs") and sub["kind"] in ("glyph", "binary"), name
        assert m["n_head"] == 32 and m["block_size"] == 1024, name
        assert m["d_model"] == (4096 if name.startswith("paper-v1-grow6") else 1024), name
        depth = sum(st.get("add", 0) for st in raw["stages"])
        expected = {"paper-v1-grow6": 6, "paper-v1-grow6-head": 6, "paper-v3-binary16": 16,
                    "paper-v1-compose-expert": 16}
        assert depth == expected.get(name, 9), name


def _stage_weights(run, i: int) -> dict:
    from growlm.model.saved import load_model

    return {k: v.clone() for k, v in load_model(run / "stages" / f"stage-{i:02d}").state_dict().items()}


def test_unfrozen_variant_trains_a_random_embedding_in_stage_one_only(tiny_data, tmp_path):
    from growlm.substrate import Substrate

    grow(Recipe.from_dict(shrink(Recipe.load_raw("paper-v3-9layer-unfrozen"), str(tiny_data))), tmp_path / "r", **QUIET)
    w = [_stage_weights(tmp_path / "r", i) for i in range(3)]
    sub = Substrate.build("glyph", "compact", 32)
    assert not torch.allclose(w[0]["embedding"], sub.matrix, atol=1e-3)  # random start, not the substrate
    assert torch.equal(w[0]["embedding"], w[1]["embedding"]) and torch.equal(w[1]["embedding"], w[2]["embedding"])
    assert not torch.equal(w[0]["head.weight"], w[1]["head.weight"])  # the head keeps training


def test_v1_recipe_freezes_the_head_after_stage_one(tiny_data, tmp_path):
    for name, head_trains in [("paper-v1-grow6", False), ("paper-v1-grow6-head", True)]:
        raw = shrink(Recipe.load_raw(name), str(tiny_data))
        raw["stages"] = raw["stages"][:3]  # layers 1-3: the head stage, a plain stage, the first LoRA stage
        grow(Recipe.from_dict(raw), tmp_path / name, **QUIET)
        w = [_stage_weights(tmp_path / name, i) for i in range(3)]
        same = [torch.equal(w[0][k], w[i][k]) for i in (1, 2) for k in ("head.weight", "norm.weight")]
        assert all(same) != head_trains, name
        assert not torch.equal(w[1]["blocks.0.attn.qkv.weight"], w[2]["blocks.0.attn.qkv.weight"])  # LoRA merged


def test_paper_composition_study_runs_in_one_command(tiny_data, tmp_path):
    from growlm.cli import main as cli_main
    from growlm.training.compose_plan import load_compose_recipe

    spec = load_compose_recipe("paper-v1-compose")
    expert = shrink(Recipe.load_raw(spec.expert_recipe), str(tiny_data))
    (tmp_path / "expert.json").write_text(json.dumps(expert))
    study = (RECIPE_DIR / "paper-v1-compose.toml").read_text()
    study = study.replace('expert_recipe = "paper-v1-compose-expert"', f'expert_recipe = "{tmp_path / "expert.json"}"')
    study = study.replace("finetune_steps = 2000", "finetune_steps = 3")
    (tmp_path / "study.toml").write_text(study)
    assert cli_main(["compose-study", str(tmp_path / "study.toml"), "--out", str(tmp_path / "out"),
                     "--no-progress"]) == 0
    rows = json.loads((tmp_path / "out" / "composition.json").read_text())["rows"]
    assert [r["kind"] for r in rows] == ["expert", "expert", "composed", "finetuned"]
    assert rows[3]["step0_val_loss"] == pytest.approx(rows[2]["val_loss"], abs=1e-3)  # starts at the average
    from growlm.model.saved import load_model

    tuned = load_model(tmp_path / "out" / "finetuned-average" / "model")
    expert0 = load_model(tmp_path / "out" / "expert-en_ru")
    assert not torch.equal(tuned.experts[0].head.weight, expert0.head.weight)  # the output layer trained
    assert torch.equal(tuned.experts[0].blocks[0].attn.qkv.weight, expert0.blocks[0].attn.qkv.weight)


def test_compose_study_and_demo(tiny_recipe, tiny_data, tmp_path):
    from growlm.demo import run_demo

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
    parts = [p["name"] for p in summary["budget"]["parts"]]  # growlm.training.budget's plan, next to the time spent
    assert set(summary["seconds"]) == {*parts, "total"} and summary["peak_flops"] > 0
    assert summary["budget"]["parts"][0]["items"][0]["tokens"] == 3 * 4 * 32  # growth's first stage: 3 steps
    samples = json.loads((tmp_path / "demo" / "grow" / "samples.json").read_text(encoding="utf-8"))
    assert [r["depth"] for r in samples] == [1, 1, 2] and all(r["sample"] for r in samples)
    assert "What the model writes at each depth" in report
    escaped = samples[2]["sample"].replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ⏎ ")
    assert f"| 2 | 2 | {escaped} |" in report

    from growlm.cli import main as cli_main

    composed = tmp_path / "demo" / "compose" / "composed-adapter"
    assert cli_main(["finetune", str(composed), "--data", str(tiny_data), "--steps", "2", "--batch-size", "2",
                     "--seq-len", "16", "--val-tokens", "64", "--out", str(tmp_path / "ft")]) == 0
    assert (tmp_path / "ft" / "model" / "model.json").exists()


@pytest.mark.parametrize("compose, message", [
    ('finetune_steps = "abc"', r"\[compose\] finetune_steps must be an integer, got 'abc'"),
    ("finetune_steps = 0", r"\[compose\] finetune_steps must be >= 1, got 0"),
    ("rank = 2.5", r"\[compose\] rank must be an integer"),
    ("train_heads = 1", r"\[compose\] train_heads must be true or false"),
    ('methods = ["avg"]', r"\[compose\] methods names unknown method\(s\) \['avg'\]"),
    ('finetune = ["router"]', r"\[compose\] finetune names \['router'\], which methods does not list"),
    ('methods = ["posterior"]\nfinetune = ["posterior"]', r"\[compose\] finetune names 'posterior', which is "
     "training-free"),
    ("window = -1", r"\[compose\] window must be >= 0, got -1"),
])
def test_composition_recipe_values_are_checked(compose, message, tmp_path):
    from growlm.training.compose_plan import load_compose_recipe

    path = tmp_path / "c.toml"
    path.write_text(f'expert_recipe = "compose-expert"\n[experts]\na = {{ en = 1 }}\nb = {{ ru = 1 }}\n'
                    f'[compose]\n{compose}\n')
    with pytest.raises(ValueError, match=message):
        load_compose_recipe(path)
