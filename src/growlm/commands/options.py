"""Options shared by several subcommands, and old option names kept as hidden, deprecated aliases."""

from __future__ import annotations

import argparse
import sys


class _Deprecated(argparse.Action):
    """An old option name: does what the new one does and says, on standard error, to use the new one."""

    def __init__(self, option_strings, dest, new: str = "", store=None, **kw):
        self.new, self.store = new, store
        super().__init__(option_strings, dest, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog}: {option_string} is deprecated; use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, self.store if self.nargs == 0 else values)


def deprecated_alias(p: argparse.ArgumentParser, old: str, new: str, dest: str, *, flag_value=None,
                     type=None) -> None:
    """Accept ``old`` as a hidden alias of ``new`` (same ``dest``); a flag stores ``flag_value``."""
    if flag_value is not None:
        p.add_argument(old, dest=dest, action=_Deprecated, new=new, store=flag_value, nargs=0,
                       default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    else:
        p.add_argument(old, dest=dest, action=_Deprecated, new=new, type=type, default=argparse.SUPPRESS,
                       help=argparse.SUPPRESS)


def add_no_progress(p: argparse.ArgumentParser, old: str | None = None) -> None:
    """``--no-progress`` (one name across commands); ``old`` an earlier name kept as an alias."""
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    if old:
        deprecated_alias(p, old, "--no-progress", "no_progress", flag_value=True)


def add_device(p: argparse.ArgumentParser) -> None:
    """``--device``."""
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
