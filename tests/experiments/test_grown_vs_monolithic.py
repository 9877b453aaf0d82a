"""Study 2 (grown vs monolithic) end to end at its quick shape: arms, matched budgets, FLOPs."""

from __future__ import annotations

import json

import pytest

from growlm.experiments import run_study


def test_grown_vs_monolithic_quick(tiny_data, tmp_path):
    run_study("grown-vs-monolithic", tmp_path / "g", seeds=1, quick=True, data=str(tiny_data), log=lambda *a: None)
    rows = {(r["arm"], r["matched"]): r for r in json.loads((tmp_path / "g" / "seed-0.json").read_text())["rows"]}
    assert set(rows) == {("grown", "-"), ("monolithic frozen", "equal tokens"), ("monolithic frozen", "equal FLOPs"),
                         ("monolithic trainable", "equal tokens"), ("monolithic trainable", "equal FLOPs")}
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
