"""Study 3 (the insertion spike): its curve helpers on hand-made curves, and the study end to end at its quick shape."""

from __future__ import annotations

import json
import math

import pytest

from growlm.experiments import run_study
from growlm.experiments.insertion_spike import (
    HEADS,
    INITS,
    NO_BLOCK,
    PRE_WINDOW,
    STEPS,
    WINDOW,
    moving_average,
    peak,
    steps_to_recover,
    study_flops,
    verdict,
)

CURVE = [3.0, 5.0, 4.0, 3.0, 2.0, 2.0, 1.0]


def test_moving_average_and_peak_use_full_windows():
    assert moving_average(CURVE, 2) == [4.0, 4.5, 3.5, 2.5, 2.0, 1.5]
    assert moving_average(CURVE, 3) == [4.0, 4.0, 3.0, 7 / 3, 5 / 3]
    assert peak(CURVE, 2) == 4.5  # not the single batch's 5.0
    assert peak(CURVE, 1) == 5.0
    assert peak(CURVE, 7) == pytest.approx(20 / 7)
    with pytest.raises(ValueError, match="no full window"):
        moving_average(CURVE, 8)
    with pytest.raises(ValueError, match=">= 1"):
        moving_average(CURVE, 0)


def test_steps_to_recover_counts_steps_trained():
    assert steps_to_recover(CURVE, 2, 2.5) == 5  # mean of steps 4 and 5 (3.0, 2.0) first reaches 2.5
    assert steps_to_recover(CURVE, 2, 2.49) == 6
    assert steps_to_recover(CURVE, 3, 4.0) == 3  # already there at the first full window
    assert steps_to_recover(CURVE, 2, 1.0) is None  # the last window's mean is 1.5: not within the curve


def test_insertion_spike_quick(tiny_data, tmp_path):
    summary = run_study("insertion-spike", tmp_path / "s", seeds=1, quick=True, data=str(tiny_data),
                        log=lambda *a: None)
    rows = json.loads((tmp_path / "s" / "seed-0.json").read_text())["rows"]
    arms = [(r["init"], r["head"]) for r in rows]
    assert arms == [(i, h) for i in INITS for h in HEADS] + [(NO_BLOCK, "restarted")]
    curves = {p.name.removesuffix(".curve.json"): json.loads(p.read_text())
              for p in (tmp_path / "s" / "work" / "quick-seed-0" / "arms").glob("*.curve.json")}
    assert len(curves) == 10 and all(len(c) == STEPS["quick"] for c in curves.values())
    from growlm.training.metrics import read_metrics

    base = [r["loss"] for r in read_metrics(tmp_path / "s" / "work" / "quick-seed-0" / "base" / "metrics.jsonl")
            if r["type"] == "train"]
    pre = sum(base[-PRE_WINDOW["quick"]:]) / PRE_WINDOW["quick"]
    w = WINDOW["quick"]
    for r in rows:
        curve = curves[f"insert-{r['init'].split()[0]}-{r['head'].split()[0]}"]
        assert r["pre_loss"] == round(pre, 5)
        assert r["peak_loss"] == round(peak(curve, w), 5) and r["first_loss"] == curve[0]
        assert r["spike"] == pytest.approx(r["peak_loss"] - r["pre_loss"], abs=2e-5)
        rec = steps_to_recover(curve, w, pre)
        assert (r["recover_steps"], r["recovered"]) == ((STEPS["quick"], 0) if rec is None else (rec, 1))
        assert math.isfinite(r["heldout_bpc"]) and math.isfinite(r["val_bpc"]) and r["train_flops"] > 0
    by = {(r["init"], r["head"]): r for r in rows}
    # same batches: arms that start from the very same function see the same first loss (identity = the base model)
    assert by[("identity", "restarted")]["first_loss"] == by[("identity", "frozen")]["first_loss"] \
        == by[(NO_BLOCK, "restarted")]["first_loss"]
    assert by[("fresh", "restarted")]["first_loss"] == by[("fresh", "warmed up")]["first_loss"]
    assert by[("fresh", "frozen")]["train_flops"] == by[("fresh", "restarted")]["train_flops"]
    assert by[(NO_BLOCK, "restarted")]["train_flops"] < by[("fresh", "restarted")]["train_flops"]
    assert len(summary["rows"]) == 10
    claims = verdict(summary)  # one seed: no interval, so no claim can pass its rule
    assert claims and all(v.verdict == "not reproduced at this scale" for v in claims)


def test_default_size_fits_the_flop_budget():
    f = study_flops("default")
    assert 3 * f["seed"] <= 40e12
    assert len(f["arms"]) == 10


def _summary(values: dict[tuple[str, str], list[float]]) -> dict:
    from growlm.experiments.framework import summarise
    from growlm.experiments.insertion_spike import STUDY

    seeds = {s: [{"init": i, "head": h, "spike": v[s]} for (i, h), v in values.items()] for s in range(3)}
    return {"rows": summarise(STUDY, seeds)}


def test_verdict_rules_on_hand_made_seeds():
    values = {("fresh", "restarted"): [0.5, 0.6, 0.55], ("fresh", "warmed up"): [0.1, 0.2, 0.15],
              ("fresh", "frozen"): [0.2, 0.25, 0.3], (NO_BLOCK, "restarted"): [0.4, 0.5, 0.45],
              ("identity", "restarted"): [0.0, 0.02, -0.01]}
    rows = verdict(_summary(values))
    assert [v.verdict for v in rows] == ["reproduced"] * 3
    assert "new, untrained layer" in rows[0].claim and "head's learning rate" in rows[1].claim
    assert "Identity" in rows[2].claim and [v.source for v in rows] == ["paper", "growlm", "growlm"]
    assert "the head's restart explains 55% of it" in rows[0].measured  # 1 - 0.25 / 0.55
    # a frozen head that spikes as much as the restarted one: the restart is not the cause; nor is the block when
    # the no-block control spikes as much; an identity block that still spikes has not removed it
    values[("fresh", "frozen")] = [0.52, 0.58, 0.56]
    values[(NO_BLOCK, "restarted")] = [0.52, 0.58, 0.56]
    values[("identity", "restarted")] = [0.3, 0.32, 0.31]
    assert [v.verdict for v in verdict(_summary(values))] == ["not reproduced at this scale"] * 3
