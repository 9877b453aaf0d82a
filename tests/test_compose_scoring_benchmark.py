"""benchmarks/compose_scoring.py: both scoring paths run for every method and agree."""

from __future__ import annotations

import json


def test_every_method_is_timed_both_ways_and_agrees(capsys, load_benchmark):
    bench = load_benchmark("compose_scoring")
    report = bench.main(["--d-model", "64", "--n-layer", "1", "--batch", "2", "--seq", "16", "--repeats", "1"])
    assert json.loads(capsys.readouterr().out) == report
    assert [r["method"] for r in report["results"]] == ["average", "prob", "adapter", "router", "posterior"]
    for r in report["results"]:
        assert r["max_abs_diff_nats_per_token"] < 1e-5, r
        assert r["speedup_median"] > 0 and set(r["seconds_median"]) == {"row_by_row", "token_nll"}
