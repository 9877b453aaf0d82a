"""docs/results.md from raw JSON: missing data says "not run yet", verdicts follow the stated rules."""

from __future__ import annotations

import json

import pytest

from growlm.experiments.framework import get_study, summarise
from growlm.experiments.results import render, write_results


def test_without_data_every_study_is_not_run_yet(tmp_path):
    text = render(tmp_path)
    assert "## Does it reproduce the paper?" in text
    for name in ("substrates", "grown-vs-monolithic", "depth"):
        assert f"growlm experiment {name} --out docs/data/experiments/{name}" in text
    assert text.count("**not run yet**") >= 3
    # the parameter counts are counted from the code when the report is written
    assert "105.0M / 180.5M / 247.6M (`growlm params" in text and "| 269.7M |" in text
    assert "not run yet: `python benchmarks/growth_speed.py`" in text


def _substrate_summary(glyph, learned, rand, quick=False):
    study = get_study("substrates")
    seeds = {s: [{"arm": "glyph", "heldout_bpc": glyph[s]}, {"arm": "learned (random init)", "heldout_bpc": learned[s]},
                 {"arm": "random (frozen)", "heldout_bpc": rand[s]}] for s in range(3)}
    return {"study": "substrates", "title": study.title, "claim": study.claim, "quick": quick, "seeds": 3,
            "commit": "c0ffee", "dirty": False, "machine": "test machine", "torch": "x", "command": "growlm test",
            "group": ["arm"], "metrics": ["heldout_bpc"], "notes": [], "rows": summarise(study, seeds)}


@pytest.mark.parametrize("glyph, verdicts", [
    ([3.00, 3.01, 3.02], ["reproduced", "reproduced"]),  # within 2% of learned, clearly below random
    ([3.30, 3.32, 3.31], ["not reproduced at this scale", "not reproduced at this scale"]),  # 10% worse
])
def test_substrate_verdicts_follow_their_rule(glyph, verdicts, tmp_path):
    summary = _substrate_summary(glyph, [3.00, 3.00, 3.01], [3.20, 3.22, 3.21])
    rows = get_study("substrates").verdict(summary)
    assert [r[3] for r in rows] == verdicts

    d = tmp_path / "data" / "experiments" / "substrates"
    d.mkdir(parents=True)
    (d / "summary.json").write_text(json.dumps(summary))
    out = write_results(tmp_path / "results.md")
    text = out.read_text()
    assert f"**{verdicts[0]}**" in text and "commit `c0ffee`" in text and "command: `growlm test`" in text


def test_a_quick_summary_is_no_evidence(tmp_path):
    d = tmp_path / "data" / "experiments" / "substrates"
    d.mkdir(parents=True)
    summary = _substrate_summary([3.0, 3.0, 3.0], [3.0, 3.0, 3.0], [3.2, 3.2, 3.2], quick=True)
    (d / "summary.json").write_text(json.dumps(summary))
    text = render(tmp_path)
    assert "(quick shape only)" in text and "a smoke run of the machinery, not evidence" in text
    assert "| **reproduced** |" not in text.split("## substrates")[0].split("Active trainable")[0]


def test_the_report_needs_its_docs_directory(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        write_results(tmp_path / "nope" / "results.md")


def test_substrate_stats_table_names_each_lift_and_its_variance(tmp_path):
    (tmp_path / "data").mkdir()
    rows = [{"kind": "binary", "vocab": "bmp65k", "d_model": 1024, "options": {"lift": lift}, "rank": 16,
             "explained_variance": {"256": 1.0, "512": 1.0, "1024": 1.0}, "distinct_after_layer_norm": n,
             "fingerprint": "ab" * 32} for lift, n in (("balanced", 65536), ("repeat", 65535))]
    (tmp_path / "data" / "substrate_stats.json").write_text(json.dumps({"rows": rows, "commit": "c0ffee"}))
    text = render(tmp_path)
    assert "| binary | bmp65k | 1024 | 16 | 65536 | lift=balanced | 1.0 / 1.0 / 1.0 | abababababab |" in text
    assert "| binary | bmp65k | 1024 | 16 | 65535 | lift=repeat | 1.0 / 1.0 / 1.0 | abababababab |" in text


def test_growth_speed_table_reads_the_benchmarks_summary(tmp_path):
    spread = {"median": 1.4, "min": 1.3, "max": 1.5}
    d = {"commit": "c0ffee", "results": [{"d_model": 64, "depth": 2, "summary": {"grow": {
        "speed_vs_mono": spread, "flop_bound_speed_vs_mono": 1.1, "speed_over_flop_bound": 1.27}}}]}
    (tmp_path / "growth_speed.json").write_text(json.dumps(d))
    text = render(tmp_path)
    assert "d_model 64, depth 2:" in text
    assert "| grow | 1.4 (1.3-1.5) | 1.1 | 1.27 | - | - | - | - | - |" in text
