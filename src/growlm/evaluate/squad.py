"""SQuAD: exact match and F1 with the official normalisation (v2: an empty prediction answers a no-answer
question), greedy generation from context and question, and the paper's containment protocol."""

from __future__ import annotations

import collections
import re
import string

import torch
from tqdm.auto import tqdm

from growlm.evaluate.scorer import Scorer
from growlm.evaluate.stats import bootstrap_ci, proportion, runs_ci
from growlm.evaluate.tasks import QAItem

_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lowercase, drop punctuation and the articles a/an/the, collapse whitespace (official SQuAD script)."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def exact_match(prediction: str, golds: list[str]) -> float:
    """1.0 if the normalised prediction equals a normalised gold answer; no golds means 'no answer'."""
    golds = golds or [""]
    return float(max(normalize_answer(prediction) == normalize_answer(g) for g in golds))


def _f1(pred: str, gold: str) -> float:
    p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
    if not p or not g:
        return float(p == g)
    common = sum((collections.Counter(p) & collections.Counter(g)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str, golds: list[str]) -> float:
    """Token-overlap F1, maximised over gold answers; no golds means 'no answer'."""
    return max(_f1(prediction, g) for g in (golds or [""]))


def squad_prompt(item: QAItem) -> str:
    """The prompt of both protocols: 'Context: {context}\\nQuestion: {question}\\nAnswer:'."""
    return f"Context: {item.context}\nQuestion: {item.question}\nAnswer:"


def first_line(text: str) -> str:
    """The answer part of a generation: up to the first newline, stripped."""
    return text.split("\n", 1)[0].strip()


def score_squad(scorer: Scorer, items: list[QAItem], max_new_tokens: int = 32, seed: int = 0) -> dict:
    """Greedy answers, stopped at a newline; EM and F1 with bootstrap 95 % intervals (1,000 resamples)."""
    tok = scorer.tok
    em, f1, preds = [], [], []

    def stop(new: list[int]) -> bool:
        return "\n" in tok.decode(new[-1:]) or (tok.eos_id is not None and new[-1] == tok.eos_id)

    for it in tqdm(items, desc="squad", unit="q", leave=False, disable=not scorer.progress):
        new = scorer.generate(tok.encode(squad_prompt(it)), max_new_tokens, 0.0, None, stop)
        pred = first_line(tok.decode(new, skip_special_tokens=True))
        preds.append(pred)
        em.append(exact_match(pred, it.answers))
        f1.append(f1_score(pred, it.answers))
    n = len(items)
    out = {"exact_match": {"value": sum(em) / max(1, n), "ci95": list(bootstrap_ci(em, seed=seed)), "n": n},
           "f1": {"value": sum(f1) / max(1, n), "ci95": list(bootstrap_ci(f1, seed=seed)), "n": n},
           "n": n, "n_no_answer": sum(not it.answers for it in items), "max_new_tokens": max_new_tokens,
           "ci_method": "percentile bootstrap, 1000 resamples", "examples": [
               {"id": it.id, "prediction": p, "answers": it.answers} for it, p in list(zip(items, preds))[:5]]}
    return out


def paper_items(items: list[QAItem], max_chars: int = 8) -> list[QAItem]:
    """The paper's subset: questions with an answer whose first gold answer has at most ``max_chars`` characters."""
    return [it for it in items if it.answers and len(it.answers[0]) <= max_chars]


def score_squad_paper(scorer: Scorer, items: list[QAItem], runs: int = 1, temperature: float | None = None,
                      seed: int = 0) -> dict:
    """Generate len(answer) tokens; a hit when the answer occurs in the continuation (case-insensitive)."""
    temp = (0.0 if runs == 1 else 1.0) if temperature is None else temperature
    items = paper_items(items)
    tok, accs = scorer.tok, []
    prompts = [tok.encode(squad_prompt(it)) for it in items]
    for r in range(runs):
        gen = torch.Generator().manual_seed(seed + r)
        hits = 0
        for it, p in tqdm(list(zip(items, prompts)), desc=f"squad paper run {r + 1}/{runs}", unit="q", leave=False,
                          disable=not scorer.progress):
            answer = it.answers[0]
            cont = tok.decode(scorer.generate(p, min(len(answer), 100), temp, gen)).strip().upper()
            hits += answer.upper() in cont
        accs.append(hits / max(1, len(items)))
    out = {"n": len(items), "runs": runs, "temperature": temp, "acc_runs": accs}
    if runs == 1:
        out["acc"], out["ci_method"] = proportion(accs[0] * len(items), len(items)), "wilson"
    else:
        mean, std, half = runs_ci(accs)
        out["acc"] = {"value": mean, "ci95": [mean - half, mean + half], "std": std, "n": len(items)}
        out["ci_method"] = "runs: mean +- 1.96*std/sqrt(runs) (the paper's formula)"
    return out
