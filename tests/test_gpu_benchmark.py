"""benchmarks/gpu_benchmark.py: its CPU smoke shape runs the trainer end to end; without CUDA the real shape refuses."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("gpu_benchmark")


def test_smoke_reports_throughput_mfu_and_both_settings(bench, tmp_path, capsys):
    out = tmp_path / "bench.json"
    report = bench.main(["--smoke", "--compile", "false", "--steps", "3", "--warmup", "1", "--batch", "2",
                         "--precision", "fp32", "--work", str(tmp_path / "runs"), "--out", str(out)])
    assert out.read_text().strip() == capsys.readouterr().out.strip()
    assert report["smoke"] and report["shape"]["depth"] == 3
    mono, grown = report["results"]
    assert (mono["mode"], grown["mode"]) == ("mono", "grow")
    for r in (mono, grown):
        assert r["timed_steps"] == 2 and r["tok_per_s"]["median"] > 0 and 0 < r["mfu"]["median"]
        assert r["peak_allocated_gib"] is None  # no CUDA here
    assert grown["flops_per_token"] < mono["flops_per_token"]  # the frozen blocks cost their forward only
    # each setting was a real run, then resumed from its last checkpoint
    assert (tmp_path / "runs" / "grow-compile0" / "model" / "model.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="refuses only where there is no CUDA")
def test_paper_shape_refuses_without_cuda(bench):
    with pytest.raises(SystemExit, match="no CUDA device here.*--smoke"):
        bench.main([])
