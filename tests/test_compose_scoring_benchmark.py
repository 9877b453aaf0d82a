"""benchmarks/compose_scoring.py: both scoring paths run for every method and agree."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "compose_scoring.py"


def test_every_method_is_timed_both_ways_and_agrees(capsys):
    spec = importlib.util.spec_from_file_location("compose_scoring", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    report = bench.main(["--d-model", "64", "--n-layer", "1", "--batch", "2", "--seq", "16", "--repeats", "1"])
    assert json.loads(capsys.readouterr().out) == report
    assert [r["method"] for r in report["results"]] == ["average", "prob", "adapter", "router", "posterior"]
    for r in report["results"]:
        assert r["max_abs_diff_nats_per_token"] < 1e-5, r
        assert r["speedup_median"] > 0 and set(r["seconds_median"]) == {"row_by_row", "token_nll"}
