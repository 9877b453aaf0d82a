"""``growlm experiment NAME``: run one registered study with seeds and write its raw JSON, table and plot;
``growlm experiment report``: write docs/results.md from the committed raw JSON."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from growlm.commands.options import add_no_progress


def _experiment(args: argparse.Namespace) -> int:
    from growlm.experiments.framework import SCALES, SEEDS, load_studies, markdown_table, run_study

    if args.name == "report":
        from growlm.experiments.results import write_results

        path = write_results(args.out or "docs/results.md", argv=["experiment", "report",
                                                                  *(["--out", args.out] if args.out else [])])
        print(f"wrote {path}")
        return 0
    studies = load_studies()
    if args.list or not args.name:
        for name, s in sorted(studies.items()):
            print(f"{name:22s} {s.title}")
        if not args.list:
            print("growlm experiment: error: name a study (above), or 'report'", file=sys.stderr)
        return 0 if args.list else 2
    if args.seeds is None:
        args.seeds = SEEDS
    if args.seeds < 1:
        print(f"growlm experiment: error: --seeds must be >= 1, got {args.seeds}", file=sys.stderr)
        return 2
    if args.scale is not None and args.scale not in SCALES:
        print(f"growlm experiment: error: unknown --scale {args.scale!r}; the scales are {', '.join(SCALES)}",
              file=sys.stderr)
        return 2
    if args.quick and args.scale not in (None, "quick"):
        print(f"growlm experiment: error: --quick is --scale quick, not --scale {args.scale}", file=sys.stderr)
        return 2
    scale = "quick" if args.quick else (args.scale or "default")
    out = args.out or f"runs/experiments/{args.name}{'' if scale == 'default' else '-' + scale}"
    argv = ["experiment", args.name, "--seeds", str(args.seeds), *(["--scale", scale] if scale != "default" else []),
            *(["--only-seed", str(args.only_seed)] if args.only_seed is not None else []),
            "--out", out, *(["--data", args.data] if args.data != "default" else [])]
    summary = run_study(args.name, out, seeds=args.seeds, scale=scale, argv=argv, work=args.work,
                        progress=not args.no_progress, data=args.data, log=lambda *a: print(*a, file=sys.stderr),
                        only_seed=args.only_seed)
    if summary is None:
        print(f"wrote {Path(out) / f'seed-{args.only_seed}.json'}; copy the seed files into one directory and run "
              f"the study there without --only-seed to read them back and write the summary")
        return 0
    print(markdown_table(summary))
    print(f"\nraw JSON (seed-N.json), summary.json, table.md and plot.png in {out}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("experiment", help="run a study with seeds and 95%% intervals (--list), or 'report'",
                       description="Run every seed of a study and write seed-N.json (raw rows with commit, machine "
                                   "and command), summary.json, table.md (mean and 95%% t-interval over seeds) and "
                                   "plot.png. A seed whose raw JSON in --out this version of the study made (same code "
                                   "and scale, held-out texts and data) is read back, not rerun; others rerun. "
                                   "'growlm experiment report' writes docs/results.md from the committed raw JSON.")
    p.add_argument("name", nargs="?", help="the study (see --list), or 'report'")
    p.add_argument("--seeds", type=int, help="seeds 0..N-1 (default: framework.SEEDS, 3)")
    p.add_argument("--only-seed", type=int, metavar="K", help="run only seed K of 0..N-1 and write its seed-K.json "
                   "(no summary): split a study's seeds over processes or machines, each with its own --out, then "
                   "copy the seed files into one --out and run the study there to read them back and summarise")
    p.add_argument("--scale", help="the size to run: quick (seconds, what the tests run), default "
                   "(the CPU size of the committed results), cpu10x (~3e13 FLOPs per run), gpu (~1e16 FLOPs per run, "
                   "on CUDA in bf16); see docs/experiments.md")
    p.add_argument("--quick", action="store_true", help="the same as --scale quick")
    p.add_argument("--out", help="output directory (default runs/experiments/NAME, or NAME-SCALE at another scale "
                                 "than default); for 'report': the "
                                 "Markdown file (default docs/results.md)")
    p.add_argument("--work", help="where the seeds' growth runs and models go (default OUT/work)")
    p.add_argument("--data", default="default", help="token files to train on (default: the embedded corpus)")
    p.add_argument("--list", action="store_true", help="list the studies")
    add_no_progress(p)
    p.set_defaults(func=_experiment)
