"""Study 5 (depth -> capability) end to end at its quick shape, its equal-steps control and its verdict rules."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from growlm.experiments import run_study
from growlm.experiments.depth import CONTROL_ARM, GOLD, GROWN, STUDY, study_flops, verdict
from growlm.experiments.framework import summarise

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_depth_quick(tiny_data, tmp_path):
    summary = run_study("depth", tmp_path / "d", seeds=1, quick=True, data=str(tiny_data), log=lambda *a: None)
    rows = json.loads((tmp_path / "d" / "seed-0.json").read_text())["rows"]
    assert [(r["arm"], r["depth"], r["train_steps"]) for r in rows] == [(GROWN, 1, 2), (GROWN, 2, 4),
                                                                        (CONTROL_ARM, 1, 4)]
    for r in rows:
        assert math.isfinite(r["heldout_bpc"]) and math.isfinite(r["val_bpc"])
        for m in GOLD:
            tasks = [k for k in r if k.startswith(f"{m}_")]
            assert tasks, f"no {m} measured"
            assert all(math.isfinite(r[k]) for k in tasks)
            assert r[m] == round(sum(r[k] for k in tasks) / len(tasks), 4)
        assert 0 <= r["acc_norm"] <= 1
    assert [(r["arm"], r["depth"]) for r in summary["rows"]] == [(GROWN, 1), (GROWN, 2), (CONTROL_ARM, 1)]
    assert (tmp_path / "d" / "plot.png").is_file()

    # the control grew on the run's saved depth 1, added no block and trained one more stage of steps on its own seed
    work = tmp_path / "d" / "work" / "quick-seed-0"
    plan = json.loads((work / "equal-steps-2" / "plan.json").read_text())
    grown_plan = json.loads((work / GROWN / "plan.json").read_text())
    assert plan["model"] == {"init_from": str(work / GROWN / "stages" / "stage-00")}
    assert [(s["add"], s["steps"]) for s in plan["stages"]] == [(0, grown_plan["stages"][1]["steps"])]
    assert plan["train"]["seed"] != grown_plan["train"]["seed"]
    meta = json.loads((work / "equal-steps-2" / "model" / "model.json").read_text())
    assert meta["config"]["n_layer"] == 1
    from safetensors.torch import load_file

    before = load_file(str(work / GROWN / "stages" / "stage-00" / "model.safetensors"))
    after = load_file(str(work / "equal-steps-2" / "model" / "model.safetensors"))
    assert before.keys() == after.keys()
    assert any(not (before[k] == after[k]).all() for k in before if k.startswith("blocks.0."))


def test_the_notes_state_the_study_flops():
    f = study_flops("default")
    note = next(n for n in STUDY.notes if n.startswith("equal steps"))
    stated = (f"{f[GROWN] / 1e12:.2f} TFLOP for the growth run, +{f[CONTROL_ARM] / 1e12:.2f} TFLOP "
              f"(+{f[CONTROL_ARM] / f[GROWN]:.1%})")
    assert stated in note
    assert f[CONTROL_ARM] <= 0.6 * f[GROWN]


def _summary(control: list[float], grown6: list[float]) -> dict:
    """Three seeds: held-out bpc falling with depth, the controls at depths 1, 3 and 5 given."""
    seeds = {}
    for s in range(3):
        rows = [{"arm": GROWN, "depth": d, "heldout_bpc": 6.5 - 0.1 * d + 0.01 * s, "val_bpc": 6.0 - 0.1 * d,
                 "gold_bpb": 4.2 - 0.05 * d + 0.01 * s, "bpb_margin": -0.5 + 0.02 * d, "acc_norm": 0.3 + 0.01 * d}
                for d in range(1, 6)]
        rows.append({"arm": GROWN, "depth": 6, "heldout_bpc": grown6[s], "val_bpc": 5.4, "gold_bpb": 3.9,
                     "bpb_margin": -0.38, "acc_norm": 0.36 + 0.01 * s})
        rows += [{"arm": CONTROL_ARM, "depth": d, "heldout_bpc": control[s] + 0.1 * (5 - d), "gold_bpb": 3.95}
                 for d in (1, 3, 5)]
        seeds[s] = rows
    return {"rows": summarise(STUDY, seeds)}


@pytest.mark.parametrize("control, verdict_row", [
    ([6.0, 6.01, 6.02], "reproduced"),  # depth 6 (5.9..) lies below its control on every seed
    ([5.8, 5.82, 5.78], "not reproduced at this scale"),  # the control trained as long is better
])
def test_the_control_row_follows_its_rule(control, verdict_row):
    rows = verdict(_summary(control, [5.9, 5.91, 5.92]))
    assert [(r.source, r.verdict) for r in rows[:3]] == [("paper", "reproduced")] * 3
    assert all("no equal-steps control yet" not in r.measured for r in rows)
    gold = rows[2]
    assert gold.claim.endswith("gold_bpb, depth 1 -> 6") and "bpb_margin" in gold.measured
    assert "acc_norm 0.3100 ± 0.0000 -> 0.3700 ± 0.0248 (change 0.0600 ± 0.0248)" in gold.measured
    ctl = rows[3]
    assert (ctl.source, ctl.verdict) == ("growlm", verdict_row)
    assert "k=2: " in ctl.measured and "k=4: " in ctl.measured and "k=6: " in ctl.measured
    assert "gold_bpb at k=6: -0.0500" in ctl.measured


def without_the_control(summary: dict) -> dict:
    """The committed summary as a study made before the control wrote it: no control rows, no margin or acc_norm."""
    new = ("bpb_margin", "acc_norm", "train_steps")
    rows = [{k: v for k, v in r.items() if not k.startswith(new)} for r in summary["rows"] if r["arm"] != CONTROL_ARM]
    return {**summary, "rows": rows, "metrics": [m for m in summary["metrics"] if not m.startswith(new)]}


def test_the_committed_summary_is_judged_and_an_older_one_still_gives_its_rows():
    summary = json.loads((DOCS / "data" / "experiments" / "depth" / "summary.json").read_text(encoding="utf-8"))
    assert any(r.get("arm") == CONTROL_ARM for r in summary["rows"])
    judged = verdict(summary)
    assert judged[3].source == "growlm" and judged[3].verdict != "not run yet"
    assert "bpb_margin" in judged[2].measured and "acc_norm" in judged[2].measured
    rows = verdict(without_the_control(summary))
    assert [r.claim.split(": ")[1].split(",")[0] for r in rows[:3]] == ["heldout_bpc", "val_bpc", "gold_bpb"]
    assert "not in this summary" in rows[2].measured
    assert (rows[3].source, rows[3].verdict) == ("growlm", "not run yet")
    from growlm.experiments.results import render

    text = render(DOCS)
    assert "The k-th block helps beyond its extra training steps" in text and "## depth" in text
