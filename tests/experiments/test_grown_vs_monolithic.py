"""Study 2 (grown vs monolithic) end to end at its quick shape: arms, matched budgets, FLOPs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from growlm.experiments import run_study
from growlm.experiments.grown_vs_monolithic import LORA


def test_grown_vs_monolithic_quick(tiny_data, tmp_path):
    run_study("grown-vs-monolithic", tmp_path / "g", seeds=1, quick=True, data=str(tiny_data), log=lambda *a: None)
    rows = {(r["arm"], r["matched"]): r for r in json.loads((tmp_path / "g" / "seed-0.json").read_text())["rows"]}
    assert set(rows) == {("grown", "-"), ("monolithic frozen", "equal tokens"), ("monolithic frozen", "equal FLOPs"),
                         ("monolithic trainable", "equal tokens"), ("monolithic trainable", "equal FLOPs"),
                         ("grown + LoRA", "-"), ("grown (binary)", "-"), ("monolithic frozen (binary)", "equal FLOPs")}
    grown = rows["grown", "-"]
    for arm in ("monolithic frozen", "monolithic trainable"):
        tok, fl = rows[arm, "equal tokens"], rows[arm, "equal FLOPs"]
        assert tok["tokens"] == grown["tokens"]
        # the grown run's backward skips the frozen blocks below: fewer FLOPs for the same tokens
        assert grown["train_flops"] < tok["train_flops"]
        per_step = tok["train_flops"] / tok["steps"]
        assert abs(fl["train_flops"] - grown["train_flops"]) <= per_step / 2 + 1  # the nearest whole step
    assert grown["active_params"] < rows["monolithic frozen", "equal tokens"]["active_params"] \
        < rows["monolithic trainable", "equal tokens"]["active_params"]
    assert all(r["heldout_bpc"] > 0 and r["val_bpc"] > 0 for r in rows.values())
    assert grown["steps"] == pytest.approx(rows["monolithic frozen", "equal tokens"]["steps"])
    assert all(math.isfinite(r[k]) for r in rows.values() for k in ("heldout_bpc", "val_bpc", "train_flops"))

    # LoRA during growth: the same steps and tokens; its adapters train, and each frozen block below costs per token
    # at least the base linears' input gradients (2 x 9 d^2: 12 d^2 of weights, block 0's qkv needs none), the
    # adapters' forward (2 r x 16 d over qkv, proj, fc, mlp proj) and their weight gradients (as much again)
    lora = rows["grown + LoRA", "-"]
    assert (lora["steps"], lora["tokens"]) == (grown["steps"], grown["tokens"])
    assert lora["lora_params"] > 0 and lora["active_params"] == grown["active_params"] + lora["lora_params"]
    d, r, depth, per_stage = 32, LORA["rank"], 2, grown["tokens"] // 2  # quick shape: d_model 32, 2 stages
    frozen_passes = depth * (depth - 1) // 2  # stage k has k - 1 frozen blocks below
    per_block = 2 * 9 * d * d + 2 * (2 * r * 16 * d)
    assert lora["train_flops"] - grown["train_flops"] >= per_stage * frozen_passes * per_block
    assert lora["heldout_bpc"] != grown["heldout_bpc"]  # its own run, not the grown one reused

    # the binary interface: the same plan on another substrate (its own run), monolithic frozen at its FLOPs
    gb, mb = rows["grown (binary)", "-"], rows["monolithic frozen (binary)", "equal FLOPs"]
    assert gb["train_flops"] == grown["train_flops"] and gb["heldout_bpc"] != grown["heldout_bpc"]
    assert abs(mb["train_flops"] - gb["train_flops"]) <= mb["train_flops"] / mb["steps"] / 2 + 1


def _summary(arms: dict[tuple[str, str], list[float]]) -> dict:
    from growlm.experiments.framework import get_study, summarise

    study = get_study("grown-vs-monolithic")
    seeds = {s: [{"arm": a, "matched": m, "heldout_bpc": v[s], "val_bpc": v[s] - 0.5, "train_flops": 1e12 + s}
                 for (a, m), v in arms.items()] for s in range(3)}
    return {"rows": summarise(study, seeds)}


OLD = {("grown", "-"): [6.2, 6.3, 6.25], ("monolithic frozen", "equal FLOPs"): [6.0, 6.1, 6.05],
       ("monolithic frozen", "equal tokens"): [6.0, 6.1, 6.05],
       ("monolithic trainable", "equal FLOPs"): [5.9, 6.0, 5.95],
       ("monolithic trainable", "equal tokens"): [5.9, 6.0, 5.95]}
BINARY, LORA_CLAIM = "binary interface", "LoRA on the frozen blocks"


def _rows(arms: dict) -> dict:
    from growlm.experiments.grown_vs_monolithic import verdict

    return {key: [v for v in verdict(_summary(arms)) if key in v.claim] for key in (BINARY, LORA_CLAIM)}


@pytest.mark.parametrize("grown_binary, lora, verdicts", [
    # binary grown +1.6% of binary monolithic; LoRA lowers held-out bpc on every seed
    ([6.6, 6.7, 6.65], [6.1, 6.2, 6.15], ("reproduced", "reproduced")),
    # binary grown +9%, every seed worse; LoRA raises it
    ([7.1, 7.2, 7.15], [6.3, 6.4, 6.35], ("not reproduced at this scale", "not reproduced at this scale")),
])
def test_the_control_verdicts_follow_their_rules(grown_binary, lora, verdicts):
    rows = _rows({**OLD, ("grown + LoRA", "-"): lora, ("grown (binary)", "-"): grown_binary,
                  ("monolithic frozen (binary)", "equal FLOPs"): [6.5, 6.6, 6.55]})
    (binary,), (lora_row,) = rows[BINARY], rows[LORA_CLAIM]
    assert (binary.verdict, lora_row.verdict) == verdicts
    assert (binary.source, binary.cite, lora_row.source, lora_row.cite) == ("paper", "v3 abstract", "growlm", "v1 §3.2")
    # grown binary against grown glyph is reported beside the rule
    assert f"grown (glyph): {grown_binary[0] - 6.2:.4f}" in binary.measured


def test_a_summary_without_the_control_arms_gives_not_run_yet():
    rows = _rows(OLD)
    assert [v.verdict for key in (BINARY, LORA_CLAIM) for v in rows[key]] == ["not run yet", "not run yet"]
    assert all("growlm experiment grown-vs-monolithic" in v.measured for key in rows for v in rows[key])


def test_the_report_renders_the_committed_summaries():
    from growlm.experiments.results import render

    text = render(Path(__file__).resolve().parents[2] / "docs")
    assert "Growth stays viable on the 16-bit binary interface" in text and "LoRA on the frozen blocks" in text
    assert "## grown-vs-monolithic" in text
