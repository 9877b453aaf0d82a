"""The lm-evaluation-harness plug-in on a tiny saved model and local task files, offline."""

from __future__ import annotations

from pathlib import Path

import pytest

lm_eval = pytest.importorskip("lm_eval")

TASKS = Path(__file__).parent / "fixtures" / "lm_eval_tasks"


def test_lm_eval_scores_a_growlm_model(tiny_model, tok, tmp_path, monkeypatch):
    from lm_eval.api.registry import get_model
    from lm_eval.tasks import TaskManager

    from growlm.checkpoint import save_model
    from growlm.evaluate.lm_eval_adapter import GrowLMEval
    from growlm.evaluate.scorer import Scorer

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    monkeypatch.chdir(TASKS)  # the task YAMLs name their jsonl relative to here
    model_dir = save_model(tiny_model, tmp_path / "model")
    assert get_model("growlm") is GrowLMEval
    out = lm_eval.simple_evaluate(model="growlm", model_args=f"path={model_dir}",
                                  tasks=["growlm_tiny_mc", "growlm_tiny_gen", "growlm_tiny_ppl"],
                                  task_manager=TaskManager(include_path=str(TASKS)), log_samples=True,
                                  batch_size=2)
    res = out["results"]
    assert 0.0 <= res["growlm_tiny_mc"]["acc,none"] <= 1.0
    assert 0.0 <= res["growlm_tiny_gen"]["exact_match,none"] <= 1.0
    assert res["growlm_tiny_ppl"]["bits_per_byte,none"] > 0
    # lm-eval's log-likelihood of the first question's choices equals growlm's own scorer
    sample = sorted(out["samples"]["growlm_tiny_mc"], key=lambda s: s["doc_id"])[0]
    ctx = "Question: What colour is the sky on a clear day?\nAnswer:"
    scorer = Scorer(tiny_model, tok, progress=False)
    ours = scorer.loglikelihood([(tok.encode(ctx), tok.encode(" " + c)) for c in sample["doc"]["choices"]])
    theirs = [r[0][0] for r in sample["resps"]]
    assert [float(t) for t in theirs] == pytest.approx([o[0] for o in ours], abs=1e-4)
