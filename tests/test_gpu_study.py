"""benchmarks/gpu_study.py: the one call a GPU machine gets runs a study into $OUT and brings back what finished."""

from __future__ import annotations

import json

import pytest
import torch


@pytest.fixture(scope="module")
def script(load_benchmark):
    return load_benchmark("gpu_study")


def test_quick_scale_runs_the_whole_path_and_copies_no_weights(script, tmp_path, capsys):
    out, work = tmp_path / "out", tmp_path / "work"
    assert script.main(["depth", "--scale", "quick", "--out", str(out), "--work", str(work)]) == 0
    record = json.loads((out / "gpu_study.json").read_text())
    assert record["completed"] and not record["interrupted"] and record["rc"] == 0
    raw = json.loads((out / "depth-quick" / "seed-0.json").read_text())
    assert raw["scale"] == "quick" and raw["rows"]
    assert "quick-seed-0/grown/plan.json" in record["work_logs"]
    assert (out / "work-logs" / "quick-seed-0" / "grown" / "plan.json").is_file()
    assert any(p.endswith("metrics.jsonl") for p in record["work_logs"])
    assert list(work.rglob("*.safetensors")) and not list(out.rglob("*.safetensors"))
    assert json.loads(capsys.readouterr().out)["completed"]


def test_the_budget_interrupts_the_study_and_says_so(script, tmp_path):
    out = tmp_path / "out"
    rc = script.main(["composition", "--scale", "quick", "--budget", "0.5", "--out", str(out),
                      "--work", str(tmp_path / "work")])
    record = json.loads((out / "gpu_study.json").read_text())
    assert rc != 0 and record["interrupted"] and not record["completed"]
    assert not (out / "composition-quick" / "summary.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="refuses only where there is no CUDA")
def test_the_gpu_scale_refuses_without_cuda_before_training(script, tmp_path):
    assert script.main(["--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")]) == 2
    record = json.loads((tmp_path / "out" / "gpu_study.json").read_text())
    assert record["study"] == "grown-vs-monolithic" and "no CUDA device" in record["refused"]
    assert not (tmp_path / "work").exists()


def test_work_inside_out_is_refused(script, tmp_path):
    with pytest.raises(SystemExit):
        script.main(["--out", str(tmp_path), "--work", str(tmp_path / "work")])
