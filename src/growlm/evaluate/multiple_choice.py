"""Multiple choice: log-likelihood scoring (lm-evaluation-harness convention) and the paper's letter protocol."""

from __future__ import annotations

import math
import random

from growlm.evaluate.scorer import Scorer
from growlm.evaluate.stats import mean_ci, proportion, runs_ci
from growlm.evaluate.tasks import LETTERS, MCItem

# -- prompts: log-likelihood (lm-evaluation-harness templates) --------------------------------


def mmlu_description(subject: str) -> str:
    return f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"


def mmlu_query(item: MCItem) -> str:
    """lm-eval's mmlu text: question, lettered choices, 'Answer:'; continuations are ' A', ' B', ..."""
    lines = [item.question.strip()] + [f"{LETTERS[i]}. {c}" for i, c in enumerate(item.choices)]
    return "\n".join(lines) + "\nAnswer:"


def qa_query(item: MCItem) -> str:
    """ARC / CommonsenseQA: 'Question: {q}\\nAnswer:'; continuations are ' ' + choice text."""
    return f"Question: {item.question}\nAnswer:"


def _shot(task: str, s: MCItem) -> str:
    """One solved example: the context and the gold continuation, as the item's own request writes them."""
    if task == "mmlu":
        return f"{mmlu_query(s)} {LETTERS[s.gold]}\n\n"
    if s.suffix:
        return f"{s.query}{s.choices[s.gold]} {s.suffix}\n\n"
    if task == "hellaswag":
        return f"{s.question} {s.choices[s.gold]}\n\n"
    return f"{s.query or qa_query(s)} {s.choices[s.gold]}\n\n"


def loglik_pairs(task: str, item: MCItem, shots: list[MCItem]) -> tuple[list[tuple[str, str]], list[str]]:
    """(context, continuation) per choice, and the strings whose lengths normalise acc_norm.

    Continuations start with the target delimiter ' ' (lm-eval); Winogrande puts each option into the context
    and scores the same rest of the sentence after each (lm-eval's partial scoring)."""
    head = mmlu_description(item.subject) if task == "mmlu" else ""
    prefix = head + "".join(_shot(task, s) for s in shots)
    if task == "mmlu":
        letters = [LETTERS[i] for i in range(len(item.choices))]
        return [(prefix + mmlu_query(item), f" {c}") for c in letters], letters
    if item.suffix:
        return [(prefix + item.query + c, f" {item.suffix}") for c in item.choices], [item.suffix] * len(item.choices)
    ctx = prefix + (item.question if task == "hellaswag" else item.query or qa_query(item))
    return [(ctx, f" {c}") for c in item.choices], list(item.choices)


def loglik_request(task: str, item: MCItem, shots: list[MCItem]) -> tuple[str, list[str], list[str]]:
    """(context, continuations, acc_norm strings) for a task whose choices share one context."""
    pairs, norm = loglik_pairs(task, item, shots)
    if item.suffix:
        raise ValueError(f"{task} has one context per choice; use loglik_pairs")
    return pairs[0][0], [c for _, c in pairs], norm


def pick_shots(task: str, items: list[MCItem], pool: list[MCItem], k: int, seed: int) -> list[list[MCItem]]:
    """Few-shot examples per item: MMLU takes the first k dev questions of the subject (as lm-eval);
    other tasks draw k seeded examples from ``pool``, never the item itself."""
    if k <= 0:
        return [[] for _ in items]
    if task == "mmlu":
        by_subject: dict[str, list[MCItem]] = {}
        for p in pool:
            by_subject.setdefault(p.subject, []).append(p)
        return [by_subject.get(it.subject, [])[:k] for it in items]
    rng = random.Random(seed)
    out = []
    for it in items:
        cand = [p for p in rng.sample(pool, min(len(pool), k + 1)) if p.id != it.id or not it.id]
        out.append(cand[:k])
    return out


def score_loglik(scorer: Scorer, task: str, items: list[MCItem], shots: list[list[MCItem]]) -> dict:
    """acc (argmax of summed log-prob), acc_norm (divided by the choice's length in characters, as lm-eval),
    and the gold answer's bits per byte with the margin over the best wrong answer (see ``gold_bits``)."""
    tok = scorer.tok
    pairs, spans, norms, nbytes = [], [], [], []
    for it, sh in zip(items, shots):
        reqs, choice_strs = loglik_pairs(task, it, sh)
        start = len(pairs)
        ctx_ids = {ctx: tok.encode(ctx) for ctx in dict.fromkeys(ctx for ctx, _ in reqs)}  # shared: encode once
        pairs += [(ctx_ids[ctx], tok.encode(cont)) for ctx, cont in reqs]
        spans.append((start, len(pairs)))
        norms.append([max(1, len(c)) for c in choice_strs])
        nbytes.append([len(cont.encode("utf-8")) for _, cont in reqs])
    lls = scorer.loglikelihood(pairs, desc=f"{task} loglik")
    correct, correct_norm, bpb, margin, per_subject = [], [], [], [], {}
    for it, (a, b), norm, nb in zip(items, spans, norms, nbytes):
        ll = [lls[j][0] for j in range(a, b)]
        pred = max(range(len(ll)), key=lambda i: ll[i])
        pred_norm = max(range(len(ll)), key=lambda i: ll[i] / norm[i])
        correct.append(pred == it.gold)
        correct_norm.append(pred_norm == it.gold)
        gold, best_wrong = gold_bits(ll, nb, it.gold)
        bpb.append(gold)
        margin.append(best_wrong - gold)
        if it.subject:
            s = per_subject.setdefault(it.subject, [0, 0, 0])
            s[0] += pred == it.gold
            s[1] += pred_norm == it.gold
            s[2] += 1
    n = len(items)
    out = {"acc": proportion(sum(correct), n), "acc_norm": proportion(sum(correct_norm), n),
           "gold_bpb": mean_ci(bpb), "bpb_margin": mean_ci(margin), "n": n,
           "num_fewshot": max((len(s) for s in shots), default=0),
           "ci_method": "wilson (acc, acc_norm); mean +- 1.96*sd/sqrt(n) over questions (gold_bpb, bpb_margin)"}
    if per_subject and task == "mmlu":
        out["subjects"] = {s: {"acc": v[0] / v[2], "acc_norm": v[1] / v[2], "n": v[2]}
                           for s, v in sorted(per_subject.items())}
        out["acc_macro"] = sum(v["acc"] for v in out["subjects"].values()) / len(out["subjects"])
    return out


def gold_bits(ll: list[float], nbytes: list[int], gold: int) -> tuple[float, float]:
    """Bits per byte of the gold continuation and of the best (lowest bits per byte) wrong one.

    Bits per byte = -log2 P(continuation | context) / its UTF-8 bytes, leading space included (OLMo's
    ``bpb``, ai2-olmo-eval's v2 convention); the margin the callers report is wrong - gold, in bits per byte,
    positive when the model prefers the gold answer per byte (DataDecide's margin, per byte)."""
    bits = [-v / math.log(2) / max(1, n) for v, n in zip(ll, nbytes)]
    wrong = [b for i, b in enumerate(bits) if i != gold]
    return bits[gold], min(wrong) if wrong else float("nan")


# -- the paper's protocol (AVBochkov/PGT _models_benchmarking.py) -----------------------------


PAPER_TASKS = ("mmlu", "arc_easy", "arc_challenge", "csqa", "boolq")  # those the reference script has prompts for


def paper_prompt(task: str, item: MCItem) -> str:
    """MMLU: options on one line 'A) a B) b ...'; ARC/CSQA (their own labels): one option per line; BoolQ:
    context, question and 'Answer (True/False):' (the letter T or F)."""
    if task == "mmlu":
        options = " ".join(f"{LETTERS[i]}) {c}" for i, c in enumerate(item.choices))
        return f"Question: {item.question}\nOptions: {options}\nAnswer:"
    if task == "boolq":
        return f"Context: {item.passage}\nQuestion: {item.question}\nAnswer (True/False):"
    if task not in PAPER_TASKS:
        raise ValueError(f"the paper's reference script has no protocol for {task!r}; "
                         f"it has {', '.join(PAPER_TASKS)} (use --protocol loglik)")
    options = "\n".join(f"{label}) {c}" for label, c in zip(item.labels, item.choices))
    return f"Question: {item.question}\nOptions:\n{options}\nAnswer:"


def paper_new_tokens(task: str) -> int:
    """New tokens the reference script generates: 1 for MMLU and BoolQ, 2 for ARC and CommonsenseQA."""
    return 1 if task in ("mmlu", "boolq") else 2


def paper_letter(continuation: str) -> str:
    """First character of the stripped, upper-cased continuation (the paper's answer extraction)."""
    return continuation.strip().upper()[:1]


def score_paper(scorer: Scorer, task: str, items: list[MCItem], runs: int = 1, temperature: float | None = None,
                seed: int = 0) -> dict:
    """Generate a letter after each prompt; accuracy per run, and over runs the mean with the paper's 95 % CI."""
    temp = (0.0 if runs == 1 else 1.0) if temperature is None else temperature
    prompts = [scorer.tok.encode(paper_prompt(task, it)) for it in items]
    gens = scorer.generate_short(prompts, paper_new_tokens(task), temp, runs, seed, desc=f"{task} paper")
    accs, per_subject = [], {}
    for r in range(runs):
        hits = [paper_letter(scorer.tok.decode(g)) == it.labels[it.gold].upper() for g, it in zip(gens[r], items)]
        accs.append(sum(hits) / max(1, len(items)))
        if task == "mmlu":
            for h, it in zip(hits, items):
                s = per_subject.setdefault(it.subject, [[0] * runs, 0])
                s[0][r] += h
                s[1] += r == 0
    out = {"n": len(items), "runs": runs, "temperature": temp, "new_tokens": paper_new_tokens(task),
           "acc_runs": accs}
    if runs == 1:
        out["acc"] = proportion(accs[0] * len(items), len(items))
        out["ci_method"] = "wilson"
    else:
        mean, std, half = runs_ci(accs)
        out["acc"] = {"value": mean, "ci95": [mean - half, mean + half], "std": std, "n": len(items)}
        out["ci_method"] = "runs: mean +- 1.96*std/sqrt(runs) (the paper's formula)"
    if per_subject:  # the notebook's per-subject lines: mean over runs +- 1.96*std/sqrt(runs)
        out["subjects"] = {s: _subject_runs([k / n for k in hits], n) for s, (hits, n) in sorted(per_subject.items())}
    return out


def _subject_runs(accs: list[float], n: int) -> dict:
    mean, std, half = runs_ci(accs)
    return {"acc": mean, "n": n} if len(accs) == 1 else {"acc": mean, "acc_ci95": [mean - half, mean + half],
                                                          "std": std, "n": n}
