"""The lm-evaluation-harness plug-in on a tiny saved model and local task files, offline."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

lm_eval = pytest.importorskip("lm_eval")

TASKS = Path(__file__).parent / "fixtures" / "lm_eval_tasks"


def greedy_text(model, tok, prompt: str, max_new: int, until: str) -> str:
    """Greedy decoding by full forwards (no cache), stopped at ``until`` or ``<|eos|>``, cut before ``until``."""
    ids, new = tok.encode(prompt), []
    with torch.no_grad():
        for _ in range(max_new):
            new.append(int(model(torch.tensor([ids + new]))[0, -1].argmax()))
            if until in tok.decode(new) or new[-1] == tok.eos_id:
                break
    return tok.decode(new, skip_special_tokens=True).split(until, 1)[0]


def test_lm_eval_scores_a_growlm_model(tiny_model, tok, tmp_path, monkeypatch):
    from lm_eval.api.registry import get_model
    from lm_eval.tasks import TaskManager

    from growlm.evaluate.lm_eval_adapter import GrowLMEval
    from growlm.evaluate.scorer import Scorer
    from growlm.model.saved import save_model

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
    docs = [json.loads(line) for line in (TASKS / "tiny_mc.jsonl").read_text().splitlines()]
    # generation: greedy decoding by hand, cut at the task's "\n"; exact match against the gold choice
    texts = [greedy_text(tiny_model, tok, f"Question: {d['question']}\nAnswer:", 4, "\n") for d in docs]
    gen = sorted(out["samples"]["growlm_tiny_gen"], key=lambda s: s["doc_id"])
    assert [s["resps"][0][0] for s in gen] == texts
    assert res["growlm_tiny_gen"]["exact_match,none"] == pytest.approx(
        sum(t == d["choices"][d["gold"]] for t, d in zip(texts, docs)) / len(docs))
    # rolling log-likelihood: each question after <|eos|> in one window (shorter than block_size), in bits per
    # UTF-8 byte of the questions
    nats, n_bytes = 0.0, 0
    with torch.no_grad():
        for d in docs:
            ids = torch.tensor([tok.eos_id] + tok.encode(d["question"]))
            assert 2 < len(ids) < len(d["question"]) + 1  # multi-character tokens: tokens != bytes
            nats += float(F.cross_entropy(tiny_model(ids[None, :-1])[0].float(), ids[1:], reduction="sum"))
            n_bytes += len(d["question"].encode("utf-8"))
    assert res["growlm_tiny_ppl"]["bits_per_byte,none"] == pytest.approx(nats / math.log(2) / n_bytes, rel=1e-5)
    # lm-eval's log-likelihoods equal growlm's own scorer, and its accuracy is the argmax of ours
    scorer = Scorer(tiny_model, tok, progress=False)
    hits = []
    for sample in out["samples"]["growlm_tiny_mc"]:
        doc = sample["doc"]
        ctx = f"Question: {doc['question']}\nAnswer:"
        ours = [o[0] for o in scorer.loglikelihood([(tok.encode(ctx), tok.encode(" " + c)) for c in doc["choices"]])]
        assert [float(r[0][0]) for r in sample["resps"]] == pytest.approx(ours, abs=1e-4)
        hits.append(max(range(len(ours)), key=ours.__getitem__) == doc["gold"])
    assert len(hits) == 3 and res["growlm_tiny_mc"]["acc,none"] == pytest.approx(sum(hits) / len(hits))


def test_adapter_takes_pretrained_like_lm_evals_hf_model(tiny_model, tmp_path):
    from growlm.evaluate.lm_eval_adapter import GrowLMEval
    from growlm.model.saved import save_model

    model_dir = save_model(tiny_model, tmp_path / "model")
    lm = GrowLMEval.create_from_arg_string(f"pretrained={model_dir}", {"batch_size": 2, "device": "cpu"})
    assert lm.tokenizer_name and lm.loglikelihood([]) == []
    with pytest.raises(ValueError, match="two models"):
        GrowLMEval(path=str(model_dir), pretrained=str(tmp_path))
    with pytest.raises(ValueError, match="pretrained=RUN_OR_MODEL_DIR"):
        GrowLMEval()
