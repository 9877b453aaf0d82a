"""``growlm demo``, ``growlm compose-study`` and ``growlm finetune``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from growlm.commands.options import add_no_progress


def _bpc_by_depth(run: Path) -> list[str]:
    from growlm.training.metrics import read_metrics

    ends = [r for r in read_metrics(run / "metrics.jsonl") if r["type"] == "stage_end"]
    langs = sorted({k for r in ends for k in r["val_bpc"]})
    lines = ["| stage | depth | " + " | ".join(f"bpc {k}" for k in langs) + " |",
             "|---|---|" + "---|" * len(langs)]
    for r in ends:
        lines.append(f"| {r['name']} | {r['depth']} | " + " | ".join(f"{r['val_bpc'][k]:.3f}" for k in langs) + " |")
    return lines


def _composition_lines(table: dict) -> list[str]:
    langs = sorted({k for r in table["rows"] for k in r["bpc"]})
    lines = ["| model | kind | " + " | ".join(f"bpc {k}" for k in langs) + " |", "|---|---|" + "---|" * len(langs)]
    for r in table["rows"]:
        lines.append(f"| {r['name']} | {r['kind']} | " + " | ".join(f"{r['bpc'][k]:.3f}" for k in langs) + " |")
    return lines


DEMO_RECIPES = {False: ("demo", "compose-demo"), True: ("demo-full", "compose-demo-full")}


def _demo(args: argparse.Namespace) -> int:
    from growlm.training.budget import Budget, budget_table

    grow_recipe = args.recipe or DEMO_RECIPES[args.full][0]
    compose_recipe = args.compose_recipe or DEMO_RECIPES[args.full][1]
    if args.budget:
        from growlm.demo import demo_budget

        print(f"Model FLOPs of growlm demo with {grow_recipe} and {compose_recipe} (nothing runs):")
        print("\n".join(budget_table(demo_budget(grow_recipe, compose_recipe))))
        return 0
    from growlm.demo import run_demo

    s = run_demo(args.out, grow_recipe, compose_recipe, progress=not args.no_progress)
    out = Path(args.out)
    print("\nValidation bits per character by depth (growth run):")
    print("\n".join(_bpc_by_depth(Path(s["run"]))))
    samples = Path(s["run"]) / "samples.json"
    if samples.exists():
        rows = json.loads(samples.read_text(encoding="utf-8"))
        print(f"\nSamples by depth (prompt {rows[0]['prompt']!r}, seed {rows[0]['seed']}):" if rows else "")
        for r in rows:
            print(f"  stage {r['stage']} (depth {r['depth']}): {r['sample']!r}")
    print("\nExperts and their compositions:")
    print("\n".join(_composition_lines(json.loads((out / "compose" / "composition.json").read_text()))))
    print(f"\ngrowth run:   {s['run']}")
    print(f"composition:  {s['compose']}")
    print(f"report:       {s['report']}")
    print(f"\nModel FLOPs planned from the recipes, time spent, and the fraction of this machine's peak "
          f"({s['peak_flops'] / 1e9:.0f} GFLOP/s {s['precision']} matmul on {s['device']}) reached:")
    print("\n".join(budget_table(Budget.from_dict(s["budget"]), s["seconds"], s["peak_flops"])))
    return 0


def _study(args: argparse.Namespace) -> int:
    from growlm.demo import compose_experiment

    table = compose_experiment(args.recipe, args.out, progress=not args.no_progress)
    print("\n".join(_composition_lines(table)))
    return 0


def _finetune(args: argparse.Namespace) -> int:
    from growlm.data.tokens import open_data
    from growlm.model.saved import load_model, read_json, resolve_model_dir
    from growlm.training.finetune import finetune
    from growlm.training.plan import TrainSpec
    from growlm.util.fileio import check_not_input

    check_not_input(args.out, [args.model, resolve_model_dir(args.model)], "--out")
    model = load_model(args.model)
    vocab = read_json(resolve_model_dir(args.model) / "model.json")["substrate"]["vocab"]
    data = open_data(args.data, vocab)
    train = TrainSpec(batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr, val_tokens=args.val_tokens,
                      val_every=args.val_every, ckpt_every=args.ckpt_every, precision=args.precision,
                      compile=args.compile)
    res = finetune(model, data, args.out, args.steps, train, progress=not args.no_progress, resume=args.resume,
                   log=lambda *a: print(*a, file=sys.stderr))
    print(json.dumps(res, indent=1))
    return 0


def _at_least_0(text: str) -> int:
    """An argparse type: an integer >= 0 (a step count where 0 means never)."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="the CPU demo: grow a small model, compose two experts, write the report")
    p.add_argument("--out", default="runs/demo", help="directory for the demo's runs and report")
    p.add_argument("--recipe", help="growth recipe (default: demo, or demo-full with --full)")
    p.add_argument("--compose-recipe", help="composition recipe (default: compose-demo, or compose-demo-full "
                                            "with --full)")
    p.add_argument("--full", action="store_true", help="the longer demo (about three times the model FLOPs)")
    p.add_argument("--budget", action="store_true", help="print the model FLOPs of each part and stop")
    add_no_progress(p)
    p.set_defaults(func=_demo)

    p = sub.add_parser("compose-study", help="grow experts on different mixtures, compose by every method, "
                                             "fine-tune, and tabulate bits per character")
    p.add_argument("recipe", nargs="?", default="compose-demo", help="composition recipe file or shipped name")
    p.add_argument("--out", required=True, help="directory for the study's runs and table")
    add_no_progress(p)
    p.set_defaults(func=_study)

    p = sub.add_parser("finetune", help="fine-tune the trainable parts of a model (e.g. a composed model's adapter)")
    p.add_argument("model", help="model directory (e.g. written by growlm compose)")
    p.add_argument("--out", required=True, help="new or empty directory (or an earlier fine-tune's, started over)")
    p.add_argument("--data", default="default", help="a `growlm prepare` directory (default: the embedded corpus)")
    p.add_argument("--steps", type=int, default=100, help="optimiser steps")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per step")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per sequence")
    p.add_argument("--val-tokens", type=int, default=16384, help="validation tokens per language")
    p.add_argument("--val-every", type=_at_least_0, default=100,
                   help="validate every N steps too (0: only before the first and after the last)")
    p.add_argument("--ckpt-every", type=_at_least_0, default=100, help="checkpoint every N steps (0: none); resumable")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="auto: bf16 where this machine's bf16 matmul is measurably faster, else fp32")
    p.add_argument("--compile", default="auto", choices=["auto", "true", "false"],
                   help="torch.compile the model's blocks for the steps, as [train] compile (auto: on CUDA only)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted fine-tune in --out exactly "
                   "(same model and settings)")
    add_no_progress(p)
    p.set_defaults(func=_finetune)
