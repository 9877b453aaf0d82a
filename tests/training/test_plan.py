"""Growth plans: recipes, validation, budgets, shipped recipes."""

from __future__ import annotations

import pytest

from growlm.training.plan import RECIPE_DIR, Recipe
from growlm.training.stages import plan_budgets

BASE = {"model": {"preset": "tiny", "d_model": 32, "n_head": 2, "block_size": 128},
        "substrate": {"kind": "glyph", "vocab": "compact"}}


def recipe(*stages, **extra):
    return Recipe.from_dict({**BASE, **extra, "stages": list(stages)})


def test_budgets_follow_the_plan():
    r = recipe({"add": 2, "train_newest": 2, "steps": 1}, {"add": 1, "steps": 1},
               {"train_newest": 0, "lora": {"rank": 2}, "steps": 1})
    b = plan_budgets(r)
    assert [s["depth"] for s in b] == [2, 3, 3]
    d = 32  # paper block: qkv, attention output, 4x MLP (all with biases) and two LayerNorms
    per_block = (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d) + 2 * 2 * d
    assert b[0]["active_params"] - b[1]["active_params"] == per_block  # stage 1 trains 2 blocks, stage 2 one
    assert b[1]["total_params"] - b[0]["total_params"] == per_block
    lora_per_block = 2 * ((d + 3 * d) + (d + d) + (d + 4 * d) + (4 * d + d))  # rank 2 on each projection
    assert b[2]["lora_params"] == 3 * lora_per_block  # train_newest 0: every block is frozen and adapted
    assert b[2]["active_params"] == b[1]["active_params"] - per_block + b[2]["lora_params"]


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


def test_head_schedule_keys_leave_older_fingerprints_alone():
    plain = recipe({"add": 1, "steps": 5})
    explicit = recipe({"add": 1, "steps": 5, "head_freeze_steps": 0, "head_warmup_steps": 0})
    assert "head_freeze_steps" not in plain.settings()["stages"][0]  # as before the keys existed: runs still resume
    assert plain.fingerprint() == explicit.fingerprint()
    frozen = recipe({"add": 1, "steps": 5, "head_freeze_steps": 2})
    assert frozen.fingerprint() != plain.fingerprint() and frozen.diff(plain) == ["stages[0]"]
    assert frozen.settings()["stages"][0]["head_freeze_steps"] == 2


# (depth, active parameters, total parameters) of every stage of every shipped recipe (a composition recipe: of its
# expert's plan), as plan_budgets computes them on the meta device; paper-v3-9layer's are derived by hand below.
SHIPPED_BUDGETS = {
    "compose-demo-full": [(1, 2_312_064, 2_312_064), (2, 2_312_064, 2_510_336)],
    "compose-demo": [(1, 2_312_064, 2_312_064), (2, 2_312_064, 2_510_336)],
    "compose-expert-full": [(1, 2_312_064, 2_312_064), (2, 2_312_064, 2_510_336)],
    "compose-expert": [(1, 2_312_064, 2_312_064), (2, 2_312_064, 2_510_336)],
    "demo-full": [
        (1, 2_312_064, 2_312_064), (2, 2_312_064, 2_510_336), (3, 2_312_064, 2_708_608), (3, 2_162_944, 2_757_760),
        (4, 2_312_064, 2_906_880)],
    "demo": [
        (1, 2_312_064, 2_312_064), (2, 2_312_064, 2_510_336), (3, 2_312_064, 2_708_608), (3, 2_162_944, 2_757_760),
        (4, 2_312_064, 2_906_880)],
    "paper-v1-compose-expert": [(16, 268_682_240, 268_682_240)],
    "paper-v1-compose": [(16, 268_682_240, 268_682_240)],
    "paper-v1-grow6-head": [
        (1, 738_377_728, 738_377_728), (2, 738_377_728, 939_749_376), (3, 742_572_032, 1_145_315_328),
        (4, 744_669_184, 1_348_784_128), (5, 746_766_336, 1_552_252_928), (6, 748_863_488, 1_755_721_728)],
    "paper-v1-grow6": [
        (1, 738_377_728, 738_377_728), (2, 201_371_648, 939_749_376), (3, 205_565_952, 1_145_315_328),
        (4, 207_663_104, 1_348_784_128), (5, 209_760_256, 1_552_252_928), (6, 211_857_408, 1_755_721_728)],
    "paper-v3-16bit-9layer-monolithic": [(9, 180_523_008, 180_523_008)],
    "paper-v3-16bit-9layer": [
        (3, 104_957_952, 104_957_952), (6, 104_957_952, 142_740_480), (9, 104_957_952, 180_523_008)],
    "paper-v3-9layer-monolithic": [(9, 180_523_008, 180_523_008)],
    "paper-v3-9layer-trainable": [(9, 247_631_872, 247_631_872)],
    "paper-v3-9layer-unfrozen": [
        (3, 172_066_816, 172_066_816), (6, 104_957_952, 209_849_344), (9, 104_957_952, 247_631_872)],
    "paper-v3-9layer": [(3, 104_957_952, 104_957_952), (6, 104_957_952, 142_740_480), (9, 104_957_952, 180_523_008)],
    "paper-v3-binary16": [
        (4, 117_552_128, 117_552_128), (8, 117_552_128, 167_928_832), (8, 75_564_032, 176_317_440),
        (12, 117_552_128, 218_305_536), (16, 117_552_128, 268_682_240), (16, 83_952_640, 285_459_456)],
}


@pytest.mark.parametrize("path", sorted(RECIPE_DIR.glob("*.toml")), ids=lambda p: p.stem)
def test_shipped_recipes_parse_and_report_budgets(path):
    """Every shipped recipe loads as written (the author's vocabularies included: a missing one fails here) and its
    stages have exactly the budgets listed."""
    name = path.stem
    if "expert_recipe" in path.read_text():  # a composition recipe: its experts follow a growth plan
        from growlm.training.compose_plan import load_compose_recipe

        path = RECIPE_DIR / f"{load_compose_recipe(path).expert_recipe}.toml"
    r = Recipe.load(path)
    budgets = plan_budgets(r)
    assert [(b["depth"], b["active_params"], b["total_params"]) for b in budgets] == SHIPPED_BUDGETS[name]


def test_shipped_recipes_are_all_listed():
    assert sorted(SHIPPED_BUDGETS) == sorted(p.stem for p in RECIPE_DIR.glob("*.toml"))


def test_paper_v3_9layer_budget_by_hand():
    """The paper's 9-layer model grown 3 blocks at a time on bvv241-2-3 (V = 65,536, d = 1024): a block is
    qkv + attention output + 4x MLP with biases and two weight-only norms; each stage trains its 3 new blocks, the
    head (with bias) and the final norm."""
    d, V = 1024, 65536
    assert Recipe.load(RECIPE_DIR / "paper-v3-9layer.toml").config().vocab_size == V
    block = (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d) + 2 * d
    head, norm = d * V + V, d
    assert SHIPPED_BUDGETS["paper-v3-9layer"] == [(k, 3 * block + head + norm, k * block + head + norm)
                                                  for k in (3, 6, 9)]


@pytest.mark.parametrize("kwargs, message", [
    ({"val_every": -1}, r"\[train\] val_every must be >= 0, got -1"),
    ({"ckpt_every": -2}, r"\[train\] ckpt_every must be >= 0, got -2"),
    ({"batch_size": 0}, r"\[train\] batch_size must be >= 1, got 0"),
    ({"lr": 0.0}, r"\[train\] lr must be > 0, got 0.0"),
])
def test_a_trainspec_built_in_python_is_held_to_the_recipe_ranges(kwargs, message):
    from growlm.training.plan import TrainSpec

    with pytest.raises(ValueError, match=message):
        TrainSpec(**kwargs)


@pytest.mark.parametrize("stage, train, message", [
    ({"steps": -5}, {}, r"\[stages.0\] steps must be >= 0, got -5"),
    ({"steps": 6.5}, {}, r"\[stages.0\] steps must be an integer, got 6.5 \(float\)"),
    ({"steps": 1, "add": True}, {}, r"\[stages.0\] add must be an integer, got True \(bool\)"),
    ({"steps": "abc"}, {}, r"\[stages.0\] steps must be an integer, got 'abc' \(str\)"),
    ({"steps": 1}, {"lr": "fast"}, r"\[train\] lr must be a number, got 'fast' \(str\)"),
    ({"steps": 1}, {"batch_size": 0}, r"\[train\] batch_size must be >= 1, got 0"),
    ({"steps": 1, "lr": 0}, {}, r"\[stages.0\] lr must be > 0, got 0"),
    ({"steps": 1, "lora": {"rank": 2.5}}, {}, r"\[stages.0.lora\] rank must be an integer"),
    ({"steps": 1, "train_head": "no"}, {}, r"\[stages.0\] train_head must be true or false"),
    ({"steps": 1}, {"betas": [0.9]}, r"\[train\] betas must be a list of 2 values"),
    ({"steps": 1}, {"min_lr_ratio": 2}, r"\[train\] min_lr_ratio must be >= 0 and <= 1, got 2"),
    ({"steps": 1, "head_freeze_steps": -1}, {}, r"\[stages.0\] head_freeze_steps must be >= 0, got -1"),
    ({"steps": 1, "head_warmup_steps": 2.5}, {}, r"\[stages.0\] head_warmup_steps must be an integer, got 2.5"),
    ({"steps": 1, "head_warmup_steps": 3, "train_head": False}, {}, "train_head = false freezes"),
])
def test_recipe_values_are_type_and_range_checked_at_plan_time(stage, train, message, tmp_path, capsys):
    import tomllib

    from growlm.cli import main as cli_main

    with pytest.raises(ValueError, match=message):
        recipe({"add": 1, **stage}, train=train)
    lines = [f"{k} = {v!r}".replace("True", "true").replace("'", '"') for k, v in train.items()]
    st = {"add": 1, **stage}
    toml = "\n".join(["[model]", 'preset = "tiny"', "d_model = 32", "n_head = 2", "[substrate]",
                      'kind = "glyph"', 'vocab = "compact"', "[train]", *lines, "[[stages]]"]
                     + [f"{k} = {_toml(v)}" for k, v in st.items()])
    tomllib.loads(toml)  # the test's own TOML is well-formed
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    assert cli_main(["plan", str(path)]) == 2
    assert "Traceback" not in capsys.readouterr().err


def _toml(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml(x)}" for k, x in v.items()) + " }"
    return repr(v)


def test_model_section_is_type_checked():
    with pytest.raises(ValueError, match=r"\[model\] d_model must be an integer, got '32'"):
        Recipe.from_dict({**BASE, "model": {"preset": "tiny", "d_model": "32"}, "stages": [{"add": 1, "steps": 1}]})
    with pytest.raises(ValueError, match=r"\[model\] n_head must be >= 1, got 0"):
        Recipe.from_dict({**BASE, "model": {"preset": "tiny", "n_head": 0}, "stages": [{"add": 1, "steps": 1}]})
    with pytest.raises(ValueError, match=r"\[data.mixtures\] m.en must be a finite number >= 0"):
        recipe({"add": 1, "steps": 1}, data={"mixtures": {"m": {"en": "lots"}}})


# --------------------------------------------------------------------------- preflight


def _tiny(tiny_data, **train) -> dict:
    return {"model": {"preset": "tiny", "d_model": 32, "n_head": 2, "block_size": 32},
            "substrate": {"kind": "glyph", "vocab": "compact"}, "data": {"path": str(tiny_data)},
            "train": {"batch_size": 2, "seq_len": 16, "val_tokens": 64, "ckpt_every": 0, "log_every": 1, **train},
            "stages": [{"name": "g1", "add": 1, "steps": 2}, {"name": "g2", "add": 1, "steps": 2}]}


def _refused_before_the_run_exists(raw: dict, tmp_path, message: str) -> None:
    from growlm.training.run import grow

    out = tmp_path / "run"
    with pytest.raises(ValueError, match=message):
        grow(Recipe.from_dict(raw), out, progress=False, log=lambda *a: None)
    assert not out.exists()  # nothing trained, nothing written


def test_preflight_unknown_mixture_language(tiny_data, tmp_path):
    raw = _tiny(tiny_data)
    raw["data"]["mixtures"] = {"en_fr": {"en": 1, "fr": 1}}
    raw["stages"][1]["mixture"] = "en_fr"  # the second stage: today the first one trains before this fails
    _refused_before_the_run_exists(raw, tmp_path, r"stage g2: mixture 'en_fr' .*\['fr'\]")


def test_preflight_seq_len_longer_than_validation(tiny_data, tmp_path):
    _refused_before_the_run_exists(_tiny(tiny_data, seq_len=16, val_tokens=10), tmp_path,
                                   r"validation uses 10 tokens .*val_tokens = 10.*seq_len \+ 1 = 17")


def test_preflight_empty_validation_split(tiny_corpus, tmp_path):
    from growlm.data.prepare import prepare

    data = tmp_path / "tokens"
    with pytest.warns(UserWarning, match="no validation document"):
        prepare(tiny_corpus, data, vocab="compact", val_fraction=0.0)  # no document held out
    _refused_before_the_run_exists(_tiny(data), tmp_path, r"empty validation split")


def test_preflight_batch_not_divisible(tiny_data, tmp_path):
    _refused_before_the_run_exists(_tiny(tiny_data, batch_size=3, grad_accum=2), tmp_path,
                                   r"batch_size 3 is not divisible by grad_accum 2")


def test_prepare_warns_when_no_validation_document_is_held_out(tmp_path):
    from growlm.data.prepare import prepare

    corpus = tmp_path / "one"
    corpus.mkdir()
    (corpus / "en.jsonl").write_text('{"text": "A single short document."}\n', encoding="utf-8")
    with pytest.warns(UserWarning, match=r"no validation document was held out for \['en'\]"):
        prepare(corpus, tmp_path / "tokens", vocab="compact")


def test_the_substrate_section_is_typed_and_the_fingerprint_unchanged():
    from dataclasses import FrozenInstanceError

    from growlm.substrate import SubstratePlan

    stages = [{"add": 1, "steps": 2}, {"name": "", "add": 1, "steps": 2}]
    r = Recipe.from_dict({"model": BASE["model"], "stages": stages})
    assert r.substrate == SubstratePlan() and [s.name for s in r.stages] == ["stage-0", "stage-1"]
    # the plan's fingerprint hashes the [substrate] table as written (as before it was typed): saved runs resume
    assert r.settings()["substrate"] == {"kind": "glyph", "vocab": "compact"}
    only_kind = Recipe.from_dict({**r.raw, "substrate": {"kind": "binary"}})
    assert only_kind.settings()["substrate"] == {"kind": "binary"} and only_kind.substrate.vocab == "compact"
    with pytest.raises(FrozenInstanceError):  # a variant is a new recipe, never an edit of a validated one
        r.train.lr = 1.0
