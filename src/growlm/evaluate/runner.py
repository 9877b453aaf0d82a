"""``evaluate``: run named benchmarks on a model and collect JSON-ready scores."""

from __future__ import annotations

import time
from pathlib import Path

import torch.nn as nn

from growlm.evaluate import multiple_choice as mc
from growlm.evaluate import tasks as T
from growlm.evaluate.perplexity import read_texts, score_perplexity
from growlm.evaluate.scorer import Scorer
from growlm.evaluate.squad import paper_items, score_squad, score_squad_paper

MC_TASKS = ("mmlu", "arc_easy", "arc_challenge", "csqa", "hellaswag")
PPL_LANGS = ("en", "ru", "zh")
TASKS = (*MC_TASKS, "squad", "ppl", *(f"ppl_{lang}" for lang in PPL_LANGS))
PROTOCOLS = ("loglik", "paper", "both")


def parse_tasks(tasks: str | list[str]) -> list[str]:
    """'mmlu,arc_easy' or a list -> validated task names."""
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t.strip()]
    bad = [t for t in names if t not in TASKS and not t.startswith("ppl_")]
    if bad or not names:
        raise ValueError(f"unknown task(s) {bad or names}; valid tasks are {', '.join(TASKS)}")
    return names


def _first_per_subject(items: list[T.MCItem], limit: int) -> list[T.MCItem]:
    counts: dict[str, int] = {}
    out = []
    for it in items:
        counts[it.subject] = counts.get(it.subject, 0) + 1
        if counts[it.subject] <= limit:
            out.append(it)
    return out


def _fewshot_pool(task: str, root: Path, split: str) -> list[T.MCItem]:
    if task == "mmlu":
        return T.load_mmlu(root, "dev")
    if task in ("arc_easy", "arc_challenge"):  # shots from the other split than the one scored
        return T.load_arc(root, task.split("_")[1], "validation" if split == "test" else "test")
    return T.load_task(task, root)


def evaluate(model: nn.Module, tokenizer, tasks: list[str] | str, limit: int | None = None,
             num_fewshot: int | None = None, protocol: str = "loglik", runs: int = 1, batch_size: int = 64,
             seed: int = 0, data_dir: str | Path | None = None, ppl_data: str | Path | None = None,
             squad_file: str | Path | None = None, arc_split: str = "test", temperature: float | None = None,
             max_length: int | None = None, progress: bool = True) -> dict:
    """Score ``model`` on ``tasks`` (mmlu, arc_easy, arc_challenge, csqa, hellaswag, squad, ppl, ppl_en, ...).

    protocol: ``loglik`` (lm-eval convention), ``paper`` (generated letter, AVBochkov/PGT) or ``both``; runs > 1
    samples with temperature 1 (seeded) and reports the mean with a 95 % interval. Returns a dict of results."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    names = parse_tasks(tasks)
    protos = ["loglik", "paper"] if protocol == "both" else [protocol]
    was_training = model.training
    scorer = Scorer(model, tokenizer, batch_size, max_length, progress)  # puts the model in eval mode
    try:
        results, timings = _run(scorer, names, protos, limit, num_fewshot, runs, seed, data_dir, ppl_data,
                                squad_file, arc_split, temperature)
    finally:
        model.train(was_training)
    return {"results": results, "seconds": timings,
            "config": {"tasks": names, "protocol": protocol, "limit": limit, "num_fewshot": num_fewshot,
                       "runs": runs, "seed": seed, "batch_size": batch_size, "max_length": scorer.max_length,
                       "arc_split": arc_split, "scoring_mode": scorer.mode}}


def _run(scorer: Scorer, names: list[str], protos: list[str], limit, num_fewshot, runs, seed, data_dir, ppl_data,
         squad_file, arc_split, temperature) -> tuple[dict, dict]:
    results: dict[str, dict] = {}
    timings: dict[str, float] = {}
    for name in names:
        t0 = time.perf_counter()
        if name.startswith("ppl"):
            langs = PPL_LANGS if name == "ppl" else (name[4:],)
            for lang in langs:
                key = "ppl" if ppl_data else f"ppl_{lang}"
                if ppl_data:
                    docs = read_texts(ppl_data)
                else:
                    from growlm.data import heldout_texts

                    docs = heldout_texts(lang=lang)
                results[key] = score_perplexity(scorer, docs[:limit] if limit else docs, seed)
                if ppl_data:
                    break
        elif name == "squad":
            root = None if squad_file else T.data_root(data_dir)
            items = T.load_squad_json(squad_file) if squad_file else T.load_squad_oe(root)
            source = str(squad_file) if squad_file else "oe-eval SQuAD v1.1 validation (1,000 questions)"
            res: dict = {"source": source}
            if "loglik" in protos:  # the standard protocol: greedy generation, EM / F1
                res["standard"] = score_squad(scorer, items[:limit] if limit else items, seed=seed)
            if "paper" in protos:
                sub = paper_items(items)  # the paper keeps answered questions with answers of <= 8 characters
                res["paper"] = score_squad_paper(scorer, sub[:limit] if limit else sub, runs, temperature, seed)
            results[name] = res
        else:
            root = T.data_root(data_dir)
            items = T.load_task(name, root, arc_split)
            if limit and name == "mmlu":  # per subject, as lm-eval applies --limit to each MMLU subtask
                items = _first_per_subject(items, limit)
            elif limit:
                items = items[:limit]
            res = {}
            if "loglik" in protos:
                k = num_fewshot if num_fewshot is not None else 0
                pool = _fewshot_pool(name, root, arc_split) if k else []
                res["loglik"] = mc.score_loglik(scorer, name, items, mc.pick_shots(name, items, pool, k, seed))
            if "paper" in protos:
                res["paper"] = mc.score_paper(scorer, name, items, runs, temperature, seed)
            results[name] = res
        timings[name] = round(time.perf_counter() - t0, 3)
    return results, timings
