"""Study 5 (depth -> capability) end to end at its quick shape."""

from __future__ import annotations

import json
import math

from growlm.experiments import run_study


def test_depth_quick(tiny_data, tmp_path):
    summary = run_study("depth", tmp_path / "d", seeds=1, quick=True, data=str(tiny_data), log=lambda *a: None)
    rows = json.loads((tmp_path / "d" / "seed-0.json").read_text())["rows"]
    assert [r["depth"] for r in rows] == [1, 2]
    for r in rows:
        assert math.isfinite(r["heldout_bpc"]) and math.isfinite(r["val_bpc"])
        tasks = [k for k in r if k.startswith("gold_bpb_")]
        assert tasks, "no gold-answer bits per byte measured"
        assert r["gold_bpb"] == round(sum(r[k] for k in tasks) / len(tasks), 4)
    assert [r["depth"] for r in summary["rows"]] == [1, 2]
    assert (tmp_path / "d" / "plot.png").is_file()
