"""Subcommands of the ``growlm`` CLI, one module each, each with ``add_parser(subparsers)``."""
