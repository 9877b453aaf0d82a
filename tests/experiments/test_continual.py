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
    GROW,
    GROW_FROZEN_HEAD,
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
    assert [r["arm"] for r in summary["rows"]] == list(rows)
    claims = verdict(summary)  # one seed: no interval, so no claim can pass its rule
    assert len(claims) == 2 + len(composed) and all(v.verdict == "not reproduced at this scale" for v in claims)


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
    rows = verdict({"rows": summarise(STUDY, seeds)})
    assert [(r.claim.split()[0], r.verdict, r.source) for r in rows] == [  # no posterior rows: no numbers
        ("Growing", "reproduced", "paper"), ("Adding", "not reproduced at this scale", "paper")]
    seeds = {s: [{**r, "forget_heldout": 0.3} if r["arm"] == GROW else r for r in rows_]
             for s, rows_ in seeds.items()}  # growth forgetting more than fine-tuning
    assert verdict({"rows": summarise(STUDY, seeds)})[0].verdict == "not reproduced at this scale"
