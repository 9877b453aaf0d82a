"""The studies' shared training: a finished run is reused only for the very plan that made it."""

from __future__ import annotations

import pytest

from growlm.experiments.common import plan, train
from growlm.experiments.framework import SeedContext


def test_a_run_of_another_plan_is_refused_not_reused(tiny_data, tmp_path):
    lines = []
    ctx = SeedContext(seed=0, scale="quick", work=tmp_path, data=str(tiny_data), log=lines.append)
    stages = [{"name": "grow-1", "add": 1, "train_newest": 1, "steps": 2}]
    run = train(ctx, plan(ctx, stages), "arm")
    assert (run / "model" / "model.json").is_file() and lines == ["-- arm"]
    weights = {p: p.stat().st_mtime_ns for p in (run / "model").iterdir()}

    assert train(ctx, plan(ctx, stages), "arm") == run and lines == ["-- arm"]  # the same plan: reused

    changed = [{**stages[0], "steps": 3}]  # the study's recipe changed since: a stale run must not stand in
    with pytest.raises(ValueError, match=r"arm holds a run of another plan.*stages\[0\].*neither reused nor deleted"):
        train(ctx, plan(ctx, changed), "arm")
    with pytest.raises(ValueError, match=r"differs in train\.lr"):
        train(ctx, {**plan(ctx, stages), "train": {**plan(ctx, stages)["train"], "lr": 0.5}}, "arm")
    assert {p: p.stat().st_mtime_ns for p in (run / "model").iterdir()} == weights  # left as it was
    assert lines == ["-- arm"]
