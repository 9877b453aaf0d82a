"""``evaluate``: run named benchmarks on a model and collect JSON-ready scores."""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

import torch.nn as nn

from growlm.data.tokens import TokenData, heldout_texts
from growlm.evaluate import multiple_choice as mc
from growlm.evaluate import tasks as T
from growlm.evaluate.perplexity import is_token_dir, read_texts, score_perplexity, score_token_split
from growlm.evaluate.scorer import Scorer
from growlm.evaluate.squad import paper_items, score_squad, score_squad_paper

MC_TASKS = T.MC_TASKS
PPL_LANGS = ("en", "ru", "zh")
TASKS = (*MC_TASKS, "squad", "ppl", *(f"ppl_{lang}" for lang in PPL_LANGS))
PROTOCOLS = ("loglik", "paper", "both")
# The paper's reference script (AVBochkov/PGT _models_benchmarking.py and its notebook): ARC on the validation
# split, 10 sampled runs reported as mean +- 1.96*std/sqrt(10), 256 random SQuAD questions of its subset.
PAPER_DEFAULTS = {"runs": 10, "arc_split": "validation", "squad_questions": 256}
GROWLM_DEFAULTS = {"runs": 1, "arc_split": "test", "squad_questions": None}


def protocol_defaults(protocol: str) -> dict:
    """Defaults of settings left unset: the paper's with ``paper``, growlm's with ``loglik`` and ``both``
    (``both`` still samples 10 runs for its paper part)."""
    if protocol == "paper":
        return dict(PAPER_DEFAULTS)
    return {**GROWLM_DEFAULTS, "runs": PAPER_DEFAULTS["runs"] if protocol == "both" else 1}


def _check_int(name: str, value, low: int, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


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
             num_fewshot: int | None = None, protocol: str = "loglik", runs: int | None = None, batch_size: int = 64,
             seed: int = 0, data_dir: str | Path | None = None, ppl_data: str | Path | None = None,
             squad_file: str | Path | None = None, arc_split: str | None = None, temperature: float | None = None,
             max_length: int | None = None, progress: bool = True) -> dict:
    """Score ``model`` on ``tasks`` (``TASKS``; ``ppl_<lang>`` for one language).

    protocol: ``loglik`` (lm-eval convention), ``paper`` (generated letter, AVBochkov/PGT) or ``both``; runs > 1
    samples with temperature 1 (seeded) and reports the mean with a 95 % interval. ``runs`` and ``arc_split``
    left as None take ``protocol_defaults(protocol)``. Returns a dict of results."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    defaults = protocol_defaults(protocol)
    runs = defaults["runs"] if runs is None else runs
    arc_split = arc_split or defaults["arc_split"]
    _check_int("runs", runs, 1, allow_none=False)
    _check_int("limit", limit, 1)
    _check_int("num_fewshot", num_fewshot, 0)
    _check_int("batch_size", batch_size, 1, allow_none=False)
    _check_int("max_length", max_length, 1)
    if temperature is not None and not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if arc_split not in ("test", "validation"):
        raise ValueError(f"arc_split must be 'test' or 'validation', got {arc_split!r}")
    names = parse_tasks(tasks)
    protos = ["loglik", "paper"] if protocol == "both" else [protocol]
    if protocol == "paper":
        no_paper = [n for n in names if n in MC_TASKS and n not in mc.PAPER_TASKS]
        if no_paper:
            raise ValueError(f"the paper's reference script has no protocol for {', '.join(no_paper)}; it scores "
                             f"{', '.join(mc.PAPER_TASKS)} and squad: drop them or use --protocol loglik/both")
    was_training = model.training
    scorer = Scorer(model, tokenizer, batch_size, max_length, progress)  # puts the model in eval mode
    squad_n = defaults["squad_questions"] if limit is None else None
    try:
        results, timings = _run(scorer, names, protos, limit, num_fewshot, runs, seed, data_dir, ppl_data,
                                squad_file, arc_split, temperature, squad_n)
    finally:
        model.train(was_training)
    return {"results": results, "seconds": timings,
            "config": {"tasks": names, "protocol": protocol, "limit": limit, "num_fewshot": num_fewshot,
                       "runs": runs, "seed": seed, "batch_size": batch_size, "max_length": scorer.max_length,
                       "arc_split": arc_split, "temperature": temperature, "scoring_mode": scorer.mode,
                       "defaults": "paper (AVBochkov/PGT reference script)" if protocol == "paper" else "growlm"}}


def _ppl(scorer: Scorer, name: str, limit: int | None, seed: int, ppl_data) -> dict[str, dict]:
    """``ppl`` / ``ppl_<lang>``: the embedded corpus's held-out documents, a text file, or the validation split
    of a prepared token directory (scored exactly as training validation scores it)."""
    if ppl_data and is_token_dir(ppl_data):
        data = TokenData.open(ppl_data)
        vocab = getattr(scorer.tok, "vocab", None)
        data.check_vocab(getattr(vocab, "name", scorer.tok.name), getattr(vocab, "sha256", None))
        langs = data.languages if name == "ppl" else [name[4:]]
        return {f"ppl_{lang}": score_token_split(scorer, data, lang, limit, seed) for lang in langs}
    if ppl_data:
        docs = read_texts(ppl_data)
        return {"ppl": score_perplexity(scorer, docs[:limit] if limit else docs, seed)}
    out = {}
    for lang in PPL_LANGS if name == "ppl" else (name[4:],):
        docs = heldout_texts(lang=lang)
        out[f"ppl_{lang}"] = score_perplexity(scorer, docs[:limit] if limit else docs, seed)
    return out


def _run(scorer: Scorer, names: list[str], protos: list[str], limit, num_fewshot, runs, seed, data_dir, ppl_data,
         squad_file, arc_split, temperature, squad_n) -> tuple[dict, dict]:
    results: dict[str, dict] = {}
    timings: dict[str, float] = {}
    for name in names:
        t0 = time.perf_counter()
        if name.startswith("ppl"):
            results.update(_ppl(scorer, name, limit, seed, ppl_data))
        elif name == "squad":
            root = None if squad_file else T.data_root(data_dir)
            items = T.load_squad_json(squad_file) if squad_file else T.load_squad_oe(root)
            source = str(squad_file) if squad_file else "oe-eval SQuAD v1.1 validation (1,000 questions)"
            res: dict = {"source": source}
            if "loglik" in protos:  # the standard protocol: greedy generation, EM / F1
                res["standard"] = score_squad(scorer, items[:limit] if limit else items, seed=seed)
            if "paper" in protos:
                sub = paper_items(items)  # the paper keeps answered questions with answers of <= 8 characters
                if squad_n and len(sub) > squad_n:  # and scores a random sample of them (seeded here)
                    sub = random.Random(seed).sample(sub, squad_n)
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
            if "paper" in protos and name in mc.PAPER_TASKS:
                res["paper"] = mc.score_paper(scorer, name, items, runs, temperature, seed)
            elif "paper" in protos:
                res["paper"] = {"skipped": f"the paper's reference script has no protocol for {name}"}
            if name in ("arc_easy", "arc_challenge"):
                res["split"] = arc_split
            results[name] = res
        timings[name] = round(time.perf_counter() - t0, 3)
    return results, timings
