"""The study runner: seeds, raw JSON with provenance, intervals, table, plot, resume, registry."""

from __future__ import annotations

import json
import math

import pytest

from growlm.experiments import framework
from growlm.experiments.framework import Study, mean_interval, register, run_study


def test_mean_interval_is_the_t_interval_over_seeds():
    s = mean_interval([1.0, 2.0, 3.0])
    assert s["n"] == 3 and s["mean"] == pytest.approx(2.0) and s["sd"] == pytest.approx(1.0)
    half = 4.303 * 1.0 / math.sqrt(3)  # t_{0.975, 2}
    assert s["ci95"] == pytest.approx([2.0 - half, 2.0 + half])
    assert mean_interval([5.0]) == {"n": 1, "mean": 5.0, "sd": None, "ci95": None}
    with pytest.raises(ValueError, match="no values"):
        mean_interval([])


@pytest.fixture
def toy_study():
    calls = []

    def run(ctx):
        calls.append((ctx.seed, ctx.quick, ctx.work.is_dir()))
        return [{"arm": "a", "loss": 1.0 + ctx.seed, "flops": 10.0},
                {"arm": "b", "loss": 2.0 * (ctx.seed + 1), "flops": 20.0}]

    study = register(Study(name="toy-study", title="a toy", claim="toys count", run=run,
                           metrics=("loss", "flops"), notes=("a note",)))
    yield study, calls
    framework.STUDIES.pop("toy-study", None)


def test_run_study_writes_raw_json_summary_table_and_plot(toy_study, tmp_path):
    study, calls = toy_study
    out = tmp_path / "toy"
    summary = run_study("toy-study", out, seeds=3, quick=True, argv=["experiment", "toy-study"], log=lambda *a: None)
    assert calls == [(0, True, True), (1, True, True), (2, True, True)]
    raw = json.loads((out / "seed-1.json").read_text())
    assert raw["rows"][0] == {"arm": "a", "loss": 2.0, "flops": 10.0}
    for key in ("commit", "machine", "command", "torch", "wall_s", "cpu_s"):
        assert raw[key] not in (None, "")
    assert raw["command"] == "growlm experiment toy-study"
    rows = {r["arm"]: r for r in summary["rows"]}
    assert rows["a"]["loss"]["mean"] == pytest.approx(2.0) and rows["b"]["loss"]["mean"] == pytest.approx(4.0)
    assert rows["a"]["flops"]["ci95"] == pytest.approx([10.0, 10.0])
    assert json.loads((out / "summary.json").read_text())["rows"] == summary["rows"]
    table = (out / "table.md").read_text()
    assert "| a | 2.0000 ± 2.4843 |" in table  # t_{0.975,2} * 1 / sqrt(3)
    assert "toys count" in table and "growlm experiment toy-study" in table and "a note" in table
    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # a rerun reads the raw JSON back; one more seed runs only the new one
    run_study("toy-study", out, seeds=4, quick=True, log=lambda *a: None)
    assert calls[3:] == [(3, True, True)]


def test_bad_input_is_refused(toy_study, tmp_path):
    with pytest.raises(ValueError, match="unknown study 'nope'.*toy-study"):
        run_study("nope", tmp_path / "x")
    with pytest.raises(ValueError, match="--seeds must be >= 1, got 0"):
        run_study("toy-study", tmp_path / "y", seeds=0)
    with pytest.raises(ValueError, match="subcommand"):
        register(Study(name="report", title="", claim="", run=lambda c: [], metrics=()))


def test_a_row_without_its_group_key_is_an_error(tmp_path):
    register(Study(name="toy-broken", title="t", claim="c", run=lambda ctx: [{"loss": 1.0}], metrics=("loss",)))
    try:
        with pytest.raises(ValueError, match="lacks its group key"):
            run_study("toy-broken", tmp_path / "b", seeds=1, log=lambda *a: None)
    finally:
        framework.STUDIES.pop("toy-broken", None)


def test_every_study_module_registers_itself():
    studies = framework.load_studies()
    assert {"substrates", "grown-vs-monolithic", "depth"} <= set(studies)
    for s in studies.values():
        assert s.metrics and s.claim and s.title
