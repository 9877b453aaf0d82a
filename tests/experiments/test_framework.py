"""The study runner: seeds, raw JSON with provenance, intervals, table, plot, resume, registry."""

from __future__ import annotations

import json
import math

import pytest

from growlm.experiments import framework
from growlm.experiments.framework import Study, mean_interval, register, run_study
from growlm.util.fileio import OutputDirError


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


def test_seeds_split_over_processes_come_together_in_one_summary(toy_study, tmp_path):
    """--only-seed K runs one seed into its own directory (no summary); copied beside the others, the study reads
    every seed back and summarises them as if one process had run them all."""
    study, calls = toy_study
    quiet = dict(seeds=3, quick=True, log=lambda *a: None)
    assert run_study("toy-study", tmp_path / "b", only_seed=2, **quiet) is None
    assert calls == [(2, True, True)]
    assert sorted(p.name for p in (tmp_path / "b").glob("*.json")) == ["seed-2.json"]
    assert json.loads((tmp_path / "b" / "seed-2.json").read_text())["seed"] == 2
    run_study("toy-study", tmp_path / "a", only_seed=0, **quiet)
    run_study("toy-study", tmp_path / "a", only_seed=1, **quiet)
    assert [c[0] for c in calls] == [2, 0, 1]
    (tmp_path / "a" / "seed-2.json").write_bytes((tmp_path / "b" / "seed-2.json").read_bytes())
    summary = run_study("toy-study", tmp_path / "a", **quiet)
    assert [c[0] for c in calls] == [2, 0, 1]  # every seed read back, none rerun
    whole = run_study("toy-study", tmp_path / "whole", **quiet)
    assert summary["rows"] == whole["rows"]
    # the seed files copied into a new directory (no marker: they came from other machines) are read back there too
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    for k in range(3):
        (fresh / f"seed-{k}.json").write_bytes((tmp_path / "a" / f"seed-{k}.json").read_bytes())
    assert run_study("toy-study", fresh, **quiet)["rows"] == whole["rows"]
    assert [c[0] for c in calls] == [2, 0, 1, 0, 1, 2]  # only the "whole" run trained
    # ... but not beside a file that is no output of the study, nor as another study's seeds
    other = tmp_path / "other"
    other.mkdir()
    (other / "seed-0.json").write_bytes((tmp_path / "a" / "seed-0.json").read_bytes())
    (other / "notes.txt").write_text("mine")
    with pytest.raises(OutputDirError, match="holds files growlm did not write"):
        run_study("toy-study", other, **quiet)
    (other / "notes.txt").unlink()
    (other / "seed-0.json").write_text(json.dumps({"study": "another-study", "seed": 0}))
    with pytest.raises(OutputDirError, match="holds files growlm did not write"):
        run_study("toy-study", other, **quiet)
    with pytest.raises(ValueError, match=r"--only-seed must be one of the seeds 0..2, got 3"):
        run_study("toy-study", tmp_path / "c", only_seed=3, **quiet)


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


STUDY_SOURCE = '''
from growlm.experiments.framework import Study, register

CALLS = []


def run(ctx):
    CALLS.append(ctx.seed)
    return [{"arm": "a", "loss": {loss} + ctx.seed}]


STUDY = register(Study(name="toy-versioned", title="t", claim="c", run=run, metrics=("loss",)))
'''


def _load_study_module(path, loss: float):
    """Write a study module (its source differs with ``loss``) and import it afresh; its CALLS list."""
    import importlib.util
    import sys

    path.write_text(STUDY_SOURCE.replace("{loss}", repr(loss)), encoding="utf-8")
    spec = importlib.util.spec_from_file_location("toy_versioned_study", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["toy_versioned_study"] = module
    spec.loader.exec_module(module)
    return module.CALLS


def test_a_seed_file_from_another_version_of_the_study_is_rerun_not_reused(tmp_path):
    """seed-N.json is read back only when the study's code, scale and data are those that made it."""
    out, lines = tmp_path / "v", []
    try:
        calls = _load_study_module(tmp_path / "toy_versioned_study.py", 1.0)
        run_study("toy-versioned", out, seeds=2, log=lines.append)
        assert calls == [0, 1]
        first = json.loads((out / "seed-0.json").read_text())
        assert first["scale"] == "default" and len(first["study_fingerprint"]) == 64

        calls = _load_study_module(tmp_path / "toy_versioned_study.py", 1.0)  # the same source: read back
        run_study("toy-versioned", out, seeds=2, log=lines.append)
        assert calls == []

        calls = _load_study_module(tmp_path / "toy_versioned_study.py", 5.0)  # the study changed: rerun, said so
        lines.clear()
        summary = run_study("toy-versioned", out, seeds=2, log=lines.append)
        assert calls == [0, 1]
        assert summary["rows"][0]["loss"]["values"] == [5.0, 6.0]
        assert any("seed-0.json is from an older version of the study" in str(x) and "rerunning" in str(x)
                   for x in lines)

        calls = _load_study_module(tmp_path / "toy_versioned_study.py", 5.0)  # another scale: rerun too
        run_study("toy-versioned", out, seeds=1, scale="cpu10x", log=lambda *a: None)
        assert calls == [0] and (out / "work" / "cpu10x-seed-0").is_dir()
    finally:
        framework.STUDIES.pop("toy-versioned", None)


def test_an_old_seed_file_without_a_fingerprint_is_rerun_and_an_old_summary_still_renders(toy_study, tmp_path):
    study, calls = toy_study
    out = tmp_path / "old"
    run_study("toy-study", out, seeds=1, log=lambda *a: None)
    # a seed file as written before fingerprints (the committed ones): same study, shape and data, other rows
    old = {"study": "toy-study", "seed": 0, "quick": False, "data": "default", "rows": [{"arm": "a", "loss": 9.0}]}
    (out / "seed-0.json").write_text(json.dumps(old))
    lines = []
    summary = run_study("toy-study", out, seeds=1, log=lines.append)
    assert calls == [(0, False, True), (0, False, True)]
    assert summary["rows"][0]["loss"]["mean"] == pytest.approx(1.0)  # the rerun's, not the stale 9.0
    assert any("seed-0.json is from an older version" in str(x) for x in lines)
    # a summary written before scales (only "quick") still renders, at the scale it was made at
    legacy = {k: v for k, v in summary.items() if k not in ("scale", "study_fingerprint")}
    assert ", quick" not in framework.markdown_table({**legacy, "quick": False})
    assert "(toy-study, quick;" in framework.markdown_table({**legacy, "quick": True})
    assert framework.summary_scale({**legacy, "quick": True}) == "quick"


def test_scales_are_named_and_quick_is_an_alias(toy_study, tmp_path):
    study, calls = toy_study
    with pytest.raises(ValueError, match="unknown scale 'huge'"):
        run_study("toy-study", tmp_path / "x", seeds=1, scale="huge")
    with pytest.raises(ValueError, match="disagree"):
        run_study("toy-study", tmp_path / "y", seeds=1, quick=True, scale="gpu")
    ctx = framework.SeedContext(seed=0, work=tmp_path, quick=True)
    assert ctx.scale == ctx.shape == "quick" and ctx.device == "cpu"
    ctx = framework.SeedContext(seed=0, work=tmp_path, scale="gpu")
    assert not ctx.quick and ctx.device == "cuda"
    import torch

    if not torch.cuda.is_available():  # the gpu scale is not quietly trained on the CPU
        with pytest.raises(ValueError, match="--scale gpu trains on a CUDA device"):
            run_study("toy-study", tmp_path / "z", seeds=1, scale="gpu")
        assert calls == []


def test_a_wide_summary_renders_as_several_equal_tables_and_counts_as_integers():
    metrics = [f"m{i}" for i in range(23)]
    cell = {"n": 3, "mean": 1.5, "sd": 0.1, "ci95": [1.4, 1.6]}
    rows = [{"arm": a, **{m: cell for m in metrics}, "m0": {"n": 3, "mean": 100.0, "sd": 0.0, "ci95": [100.0, 100.0]}}
            for a in ("a", "b")]
    summary = {"title": "t", "study": "s", "scale": "default", "seeds": 3, "claim": "c", "group": ["arm"],
               "metrics": metrics, "rows": rows, "commit": "x", "machine": "m", "torch": "t", "command": "cmd"}
    text = framework.markdown_table(summary)
    headers = [line for line in text.splitlines() if line.startswith("| arm |")]
    assert [len(h.split(" | ")) - 1 for h in headers] == [8, 8, 7]  # 23 metrics: tables of 8, 8 and 7, arm in each
    assert sum(line.startswith("| a |") for line in text.splitlines()) == 3
    assert "| a | 100 ± 0 | 1.5000 ± 0.1000 |" in text  # a count the same in every seed, as an integer
    assert framework.fmt({"n": 3, "mean": 0.0, "sd": 0.0, "ci95": [0.0, 0.0]}) == "0.0000 ± 0.0000"
    assert framework.fmt({"n": 1, "mean": 7.0, "sd": None, "ci95": None}) == "7"
