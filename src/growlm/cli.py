"""The ``growlm`` command: a thin map from subcommands to library functions.

Each subcommand lives in the module that owns its concept and exposes
``add_parser(subparsers)``; the parser sets ``func`` to a function taking the
parsed arguments and returning an exit code.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import sys

# subcommand modules, in the order ``growlm --help`` lists them
COMMAND_MODULES = [
    "growlm.commands.substrate",
    "growlm.commands.grow",
    "growlm.commands.compose",
    "growlm.commands.demo",
    "growlm.commands.experiment",
    "growlm.commands.eval",
    "growlm.commands.generate",
    "growlm.commands.export",
    "growlm.commands.report",
    "growlm.commands.rehash",
]


def _params(args: argparse.Namespace) -> int:
    from growlm.model import Config
    from growlm.training.plan import parameter_budget

    overrides = {"d_model": args.d_model, "n_layer": args.n_layer, "n_head": args.n_head}
    if args.vocab:
        from growlm.substrate import Vocabulary

        overrides["vocab_size"] = len(Vocabulary.load(args.vocab))
    cfg = Config.from_preset(args.preset, **{k: v for k, v in overrides.items() if v is not None})
    table = None
    if args.substrate == "binary":  # the author's V x k code table (k = 16 for V = 65536)
        from growlm.substrate.binary import code_bits

        table = cfg.vocab_size * (args.bits or code_bits(cfg.vocab_size))
    elif args.substrate:  # a frozen V x d_model table
        table = cfg.vocab_size * cfg.d_model
    print(json.dumps(parameter_budget(cfg, args.train_newest, table), indent=1))
    return 0


class HelpFormatter(argparse.HelpFormatter):
    """Shows every option's default (unless its help already says it, or there is none to show)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = action.default not in (None, False, [], argparse.SUPPRESS)
        if shown and "default" not in text and (action.option_strings or action.nargs in ("?", "*")):
            text += " (default: %(default)s)"
        return text


class Parser(argparse.ArgumentParser):
    """A parser whose options may come anywhere on the line (``generate RUN --stage 0 "prompt"``): commands
    without subcommands parse intermixed positionals and options."""

    _intermixing = False

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        if self._intermixing or self._subparsers is not None:
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return super().parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="growlm", description=__import__("growlm").__doc__)
    parser.add_argument("--version", action="version", version=f"growlm {__import__('growlm').__version__}")
    parser.add_argument("--debug", action="store_true", help="on error, show the full traceback")
    parser.add_argument("--trust-unhashed", action="store_true",
                        help="load model and checkpoint files whose JSON records no SHA-256 (older growlm) unchecked, "
                             "with a warning; without it they are refused (`growlm rehash` records their hashes)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("params", help="parameter counts (fully trainable, frozen interface, grown active) as JSON")
    p.add_argument("--preset", default="paper", help="config preset (paper, llama, demo, tiny)")
    p.add_argument("--d-model", type=int, help="model width (default: the preset's)")
    p.add_argument("--n-layer", type=int, help="number of blocks (default: the preset's)")
    p.add_argument("--n-head", type=int, help="attention heads (default: the preset's)")
    p.add_argument("--vocab", help="vocabulary whose size sets V (bvv241-2-3, bvv241-abs, bmp65k, compact; "
                   "default: the preset's vocab_size)")
    p.add_argument("--substrate", help="substrate kind (glyph, binary, ...): adds the frozen table the paper counts "
                   "(V x k code table for binary, V x d_model otherwise) and the paper's total, author_total "
                   "(default: none)")
    p.add_argument("--bits", type=int, help="with --substrate binary: code length k (default ceil(log2 V))")
    p.add_argument("--train-newest", type=int, default=1, help="blocks trained per growth stage (with the head)")
    p.set_defaults(func=_params)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    _accept_debug_everywhere(sub)
    return parser


def _accept_debug_everywhere(sub: argparse._SubParsersAction) -> None:
    """Let ``--debug`` and ``--trust-unhashed`` follow any subcommand, nested ones included
    (``growlm substrate info ... --debug``)."""
    for p in sub.choices.values():
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        p.add_argument("--trust-unhashed", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                _accept_debug_everywhere(action)


def _message(e: BaseException) -> str:
    """A one-line description of an error; OSError names the file it concerns."""
    if isinstance(e, OSError) and e.filename and e.strerror:
        return f"{e.filename}: {e.strerror}"
    if isinstance(e, KeyError) and e.args:  # KeyError quotes its message: unwrap it
        return str(e.args[0])
    return str(e)


def _end_process_group() -> None:
    """Under torchrun, after a command that every rank finished: barrier, then destroy the process group."""
    parallel = sys.modules.get("growlm.training.parallel")  # not imported: the command started no process group
    if parallel is not None:
        parallel.shutdown()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``growlm`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    from growlm.util.alloc import tune_allocator

    tune_allocator()  # before the command allocates anything large: freed blocks are reused, not re-faulted
    trust = contextlib.nullcontext()
    if args.trust_unhashed:  # files without recorded hashes load, with a warning (growlm.model.saved)
        from growlm.model.saved import trusting_unhashed

        trust = trusting_unhashed()
    try:
        with trust:
            code = int(args.func(args) or 0)
        _end_process_group()
        return code
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"growlm {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, KeyError, OSError, ImportError) as e:  # bad input, files, missing extras: the user's to fix
        if args.debug:
            raise
        print(f"growlm {args.command}: error: {_message(e)}", file=sys.stderr)
        return 2
    except Exception as e:  # a bug: short, with the way to the traceback
        if args.debug:
            raise
        print(f"growlm {args.command}: error: {type(e).__name__}: {_message(e)} (run `growlm --debug ...` for the "
              "full traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
