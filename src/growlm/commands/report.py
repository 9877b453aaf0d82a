"""``growlm report RUN... --out DIR``: loss, depth and composition plots plus a Markdown page."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from growlm.report import write_report

    path = write_report(args.runs, args.out, composition=args.composition)
    print(path)
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="plots of one or more runs (loss with stages, scores and bpc by depth, "
                                      "MMLU heatmap, experts vs compositions) and DIR/report.md")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (metrics.jsonl, stages/*/eval.json)")
    p.add_argument("--out", required=True, help="output directory for the PNGs and report.md")
    p.add_argument("--composition", metavar="TABLE.json",
                   help='experts/compositions table {"rows": [{"name", "kind", "bpc": {"en", "ru", "zh"}}]}')
    p.set_defaults(func=run)
