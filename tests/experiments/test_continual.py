"""Study 6 (continual learning): forgetting on hand-made rows, and the study end to end at its quick shape."""

from __future__ import annotations

import json
import math

import pytest

from growlm.experiments import run_study
from growlm.experiments.continual import (
    BASE,
    COMPOSE,
    COMPOSED,
    EXPERT,
    FINETUNE,
    FINETUNE_NO_REPLAY,
    GROW,
    GROW_FROZEN_HEAD,
    GROW_NO_REPLAY,
    arms,
    forgetting,
    study_flops,
    verdict,
)


def test_forgetting_is_after_minus_before():
    base = {"val_bpc_en": 2.0, "val_bpc_ru": 3.0, "heldout_bpc_en": 2.5, "heldout_bpc_ru": 3.5}
    after = {"val_bpc_en": 2.25, "val_bpc_ru": 2.9, "heldout_bpc_en": 3.0, "heldout_bpc_ru": 3.5}
    f = forgetting(after, base)
    assert f == {"forget_val_en": 0.25, "forget_val_ru": -0.1, "forget_val": 0.075, "forget_heldout_en": 0.5,
                 "forget_heldout_ru": 0.0, "forget_heldout": 0.25}
    assert set(forgetting(base, base).values()) == {0.0}


def test_continual_quick(tiny_data, tmp_path):
    summary = run_study("continual", tmp_path / "c", seeds=1, quick=True, data=str(tiny_data), log=lambda *a: None)
    rows = {r["arm"]: r for r in json.loads((tmp_path / "c" / "seed-0.json").read_text())["rows"]}
    assert list(rows) == arms() and COMPOSE in rows
    composed = [a for a in rows if a in COMPOSED.values()]
    base = rows[BASE]
    for arm, r in rows.items():
        for key in ("val_bpc_zh", "heldout_bpc_zh", "val_bpc_en", "heldout_bpc_ru"):
            assert math.isfinite(r[key]) and r[key] > 0, (arm, key)
        if arm == EXPERT:
            assert "forget_heldout" not in r
            continue
        for split in ("val", "heldout"):
            for lang in ("en", "ru"):
                k = f"{split}_bpc_{lang}"
                assert r[f"forget_{split}_{lang}"] == round(r[k] - base[k], 4), (arm, k)
    assert base["forget_heldout"] == base["forget_val"] == 0 and base["added_flops"] == 0
    # every arm grows on the one saved base: (a') keeps the base's head, (a) trains it on
    import torch
    from safetensors.torch import load_file

    work = tmp_path / "c" / "work" / "quick-seed-0"
    base_w = load_file(str(work / "base" / "stages" / "stage-01" / "model.safetensors"))
    frozen = load_file(str(work / "grow_frozen_head-on-base" / "model" / "model.safetensors"))
    grown = load_file(str(work / "grow-on-base" / "model" / "model.safetensors"))
    assert torch.equal(frozen["head.weight"], base_w["head.weight"])
    assert not torch.equal(grown["head.weight"], base_w["head.weight"])
    assert torch.equal(grown["blocks.0.mlp.fc.weight"], base_w["blocks.0.mlp.fc.weight"])
    # FLOPs: the new block's backward is cheaper than the whole model's, without the head cheaper still; the
    # composition costs the expert
    assert 0 < rows[GROW_FROZEN_HEAD]["added_flops"] < rows[GROW]["added_flops"] < rows[FINETUNE]["added_flops"]
    for arm in composed:
        assert rows[arm]["added_flops"] == rows[EXPERT]["train_flops"] > 0
        assert rows[arm]["train_flops"] == base["train_flops"] + rows[EXPERT]["train_flops"]
    assert rows[GROW]["train_flops"] == pytest.approx(base["train_flops"] + rows[GROW]["added_flops"])
    # the no-replay controls: the same stage, trained on ZH alone (same cost, other weights)
    assert rows[GROW_NO_REPLAY]["added_flops"] == rows[GROW]["added_flops"]
    assert rows[FINETUNE_NO_REPLAY]["added_flops"] == rows[FINETUNE]["added_flops"]
    no_replay = load_file(str(work / "grow_no_replay-on-base" / "model" / "model.safetensors"))
    from growlm.experiments.continual import MIXTURES, plans
    from growlm.experiments.framework import SeedContext

    p = plans(SeedContext(seed=0, quick=True, work=work))
    for k, like in (("grow_no_replay", "grow"), ("finetune_no_replay", "finetune")):
        *_, stage = p[k]["stages"]
        assert stage["mixture"] == "zh" and p[k]["data"]["mixtures"]["zh"] == {"zh": 1.0}
        assert {**stage, "mixture": "new"} == p[like]["stages"][-1]  # otherwise the replay arm's stage
    assert MIXTURES["new"]["zh"] == 0.75
    assert torch.equal(no_replay["blocks.0.mlp.fc.weight"], base_w["blocks.0.mlp.fc.weight"])
    assert [r["arm"] for r in summary["rows"]] == list(rows)
    claims = verdict(summary)  # one seed: no interval, so no claim can pass its rule
    assert len(claims) == 2 + len(composed) + 3 and all(v.verdict == "not reproduced at this scale" for v in claims)
    assert [v.source for v in claims[-3:]] == ["growlm"] * 3


def test_default_size_fits_the_flop_budget():
    f = study_flops("default")
    assert 3 * f["seed"] <= 40e12
    assert f["grow"] - f["base"] < f["finetune"] - f["base"]


def test_verdict_rules_on_hand_made_seeds():
    from growlm.experiments.continual import STUDY
    from growlm.experiments.framework import summarise

    forget = {GROW: [0.01, 0.02, 0.015], FINETUNE: [0.2, 0.25, 0.22], COMPOSE: [0.05, 0.04, 0.06]}
    zh = {GROW: [3.0, 3.1, 3.05], FINETUNE: [2.95, 3.0, 3.0], COMPOSE: [4.0, 4.1, 4.0]}  # composed: ZH far worse
    seeds = {s: [{"arm": a, "forget_heldout": forget[a][s], "heldout_bpc_zh": zh[a][s]} for a in forget]
             for s in range(3)}
    rows = verdict({"rows": summarise(STUDY, seeds)})[:-3]  # the last 3: the no-replay controls (not run yet)
    assert [(r.claim.split()[0], r.verdict, r.source) for r in rows] == [  # no posterior rows: no numbers
        ("Growing", "reproduced", "paper"), ("Adding", "not reproduced at this scale", "paper")]
    seeds = {s: [{**r, "forget_heldout": 0.3} if r["arm"] == GROW else r for r in rows_]
             for s, rows_ in seeds.items()}  # growth forgetting more than fine-tuning
    assert verdict({"rows": summarise(STUDY, seeds)})[0].verdict == "not reproduced at this scale"


def test_no_replay_controls_rules_and_not_run_yet():
    from growlm.experiments.continual import STUDY
    from growlm.experiments.framework import summarise

    forget = {GROW: [0.01, 0.02, 0.015], FINETUNE: [0.2, 0.25, 0.22]}
    old = {s: [{"arm": a, "forget_heldout": forget[a][s], "heldout_bpc_zh": 3.0} for a in forget] for s in range(3)}
    rows = verdict({"rows": summarise(STUDY, old)})[-3:]  # a summary made before the no-replay arms
    assert [(r.verdict, r.source) for r in rows] == [("not run yet", "growlm")] * 3
    assert all("growlm experiment continual" in r.measured for r in rows)
    forget.update({GROW_NO_REPLAY: [0.1, 0.12, 0.11], FINETUNE_NO_REPLAY: [0.5, 0.55, 0.6]})
    seeds = {s: [{"arm": a, "forget_heldout": forget[a][s], "heldout_bpc_zh": 3.0} for a in forget] for s in range(3)}
    rows = verdict({"rows": summarise(STUDY, seeds)})[-3:]
    assert [r.verdict for r in rows] == ["reproduced"] * 3
    forget[GROW_NO_REPLAY] = [0.0, 0.01, 0.02]  # growth without replay forgets no more than with it
    seeds = {s: [{"arm": a, "forget_heldout": forget[a][s], "heldout_bpc_zh": 3.0} for a in forget] for s in range(3)}
    assert [r.verdict for r in verdict({"rows": summarise(STUDY, seeds)})[-3:]] == [
        "not reproduced at this scale", "reproduced", "reproduced"]
