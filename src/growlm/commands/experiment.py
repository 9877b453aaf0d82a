"""``growlm experiment NAME``: run one registered study with seeds and write its raw JSON, table and plot;
``growlm experiment report``: write docs/results.md from the committed raw JSON."""

from __future__ import annotations

import argparse
import sys

from growlm.commands.options import add_no_progress


def _experiment(args: argparse.Namespace) -> int:
    from growlm.experiments.framework import load_studies, markdown_table, run_study

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
    if args.seeds < 1:
        print(f"growlm experiment: error: --seeds must be >= 1, got {args.seeds}", file=sys.stderr)
        return 2
    out = args.out or f"runs/experiments/{args.name}{'-quick' if args.quick else ''}"
    argv = ["experiment", args.name, "--seeds", str(args.seeds), *(["--quick"] if args.quick else []), "--out", out,
            *(["--data", args.data] if args.data != "default" else [])]
    summary = run_study(args.name, out, seeds=args.seeds, quick=args.quick, argv=argv, work=args.work,
                        progress=not args.no_progress, data=args.data, log=lambda *a: print(*a, file=sys.stderr))
    print(markdown_table(summary))
    print(f"\nraw JSON (seed-N.json), summary.json, table.md and plot.png in {out}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("experiment", help="run a study with seeds and 95%% intervals (--list), or 'report'",
                       description="Run every seed of a study and write seed-N.json (raw rows with commit, machine "
                                   "and command), summary.json, table.md (mean and 95%% t-interval over seeds) and "
                                   "plot.png. A seed whose raw JSON is already in --out is read back, not rerun. "
                                   "'growlm experiment report' writes docs/results.md from the committed raw JSON.")
    p.add_argument("name", nargs="?", help="the study (see --list), or 'report'")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    p.add_argument("--quick", action="store_true", help="a seconds-long shape (what the tests run), not the default")
    p.add_argument("--out", help="output directory (default runs/experiments/NAME[-quick]); for 'report': the "
                                 "Markdown file (default docs/results.md)")
    p.add_argument("--work", help="where the seeds' growth runs and models go (default OUT/work)")
    p.add_argument("--data", default="default", help="token files to train on (default: the embedded corpus)")
    p.add_argument("--list", action="store_true", help="list the studies")
    add_no_progress(p)
    p.set_defaults(func=_experiment)
