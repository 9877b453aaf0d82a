"""benchmarks/plain_gpt.py: its smoke shape steps both models in turn and reports their ratio and fractions of peak."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("plain_gpt")


def test_smoke_steps_both_models_and_reports_ratio_and_fraction_of_peak(bench, tmp_path, capsys, monkeypatch):
    from growlm.training import flops

    monkeypatch.setattr(flops, "cpu_peak", lambda: {"fp32": 1e11, "bf16": 1e11})  # no peak measurement in a test
    out = tmp_path / "plain.json"
    report = bench.main(["--smoke", "--out", str(out)])
    assert out.read_text().strip() == capsys.readouterr().out.strip()
    (r,) = report["results"]
    assert r["shape"] == {"d_model": 32, "n_layer": 1, "n_head": 1, "vocab": 512}
    for name in ("growlm", "plain"):
        assert r[name]["tok_per_s_min"] <= r[name]["tok_per_s"] <= r[name]["tok_per_s_max"]
        assert r[name]["fraction_of_peak"] == pytest.approx(r[name]["tok_per_s"] * r[name]["flops_per_token"] / 1e11)
    assert r["ratio_tok_per_s"] == pytest.approx(r["growlm"]["tok_per_s"] / r["plain"]["tok_per_s"])
    assert len(report["load_avg_before"]) == 3 and report["threads"] == 2


def test_the_plain_gpt_counts_what_growlm_counts_for_the_same_matmuls(bench):
    """With its embedding lookup aside, the plain GPT's step is growlm's monolithic step's matmuls, FLOP for FLOP."""
    import torch

    from growlm.model import GrowLM
    from growlm.model.model import Config
    from growlm.training import flops

    with torch.device("meta"):
        m = GrowLM(Config.from_preset("demo", d_model=64, n_layer=3, n_head=1, vocab_size=1000, block_size=32))
    assert bench.plain_flops_per_token(1000, 64, 3, 32) == pytest.approx(flops.step_flops(m, 32).total)
    with pytest.raises(SystemExit, match="256x4x16384"):
        bench.parse_shape("256-4")
