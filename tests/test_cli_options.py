"""The growlm command line as a whole: every option documented with its default, one name per concept (old names
kept as hidden aliases), options anywhere on the line, recipe names that local folders do not shadow."""

from __future__ import annotations

import argparse
import os
import warnings
from pathlib import Path

import pytest

from growlm.cli import build_parser, main


def _parsers(p: argparse.ArgumentParser, name: str = "growlm"):
    yield name, p
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for sub_name, sp in a.choices.items():
                yield from _parsers(sp, f"{name} {sub_name}")


def _shown(p: argparse.ArgumentParser):
    """(command, action) for every option and positional a user sees in --help."""
    for name, sp in _parsers(p):
        for a in sp._actions:
            if a.help == argparse.SUPPRESS or isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            yield name, sp, a


def test_every_option_has_help_that_shows_its_default() -> None:
    missing, hidden = [], []
    for name, sp, a in _shown(build_parser()):
        text = a.help or ""
        if not text.strip():
            missing.append(f"{name} {'/'.join(a.option_strings) or a.dest}")
            continue
        expanded = sp._get_formatter()._expand_help(a)  # also fails on a stray '%' in the help text
        if a.default not in (None, False, [], argparse.SUPPRESS) and a.option_strings:
            if "default" not in expanded or str(a.default) not in expanded:
                hidden.append(f"{name} {a.option_strings[0]} (default {a.default!r}): {expanded!r}")
    assert missing == [] and hidden == []


def test_one_name_per_concept_across_commands() -> None:
    """The same concept has the same option name everywhere; the old names are hidden aliases."""
    seen: dict[str, set[str]] = {}
    for name, _, a in _shown(build_parser()):
        for o in a.option_strings:
            seen.setdefault(o, set()).add(name)
    for old in ("--quiet", "--max-tokens", "--max-length", "--ppl-data", "--data-dir", "--text-column"):
        assert old not in seen, f"{old} is shown in {seen.get(old)}"
    assert {"growlm eval", "growlm grow", "growlm prepare", "growlm finetune"} <= seen["--no-progress"]
    assert {"growlm eval", "growlm finetune", "growlm experiment"} <= seen["--data"]


@pytest.mark.parametrize("argv, dest, value", [
    (["eval", "RUN", "--quiet"], "no_progress", True),
    (["eval", "RUN", "--ppl-data", "t.txt"], "data", "t.txt"),
    (["eval", "RUN", "--data-dir", "bench"], "benchmark_dir", "bench"),
    (["eval", "RUN", "--max-length", "64"], "context_length", 64),
    (["generate", "RUN", "--max-tokens", "5"], "max_new_tokens", 5),
    (["prepare", "c", "--out", "o", "--text-column", "body"], "text_field", "body"),
])
def test_old_option_names_still_work_and_say_so(argv, dest, value, capsys) -> None:
    args = build_parser().parse_args(argv)
    assert getattr(args, dest) == value
    assert "deprecated; use --" in capsys.readouterr().err


def test_options_go_anywhere_on_the_line() -> None:
    args = build_parser().parse_args(["generate", "RUN", "--stage", "0", "a prompt", "--max-new-tokens", "3"])
    assert (args.run, args.stage, args.prompt, args.max_new_tokens) == ("RUN", 0, "a prompt", 3)
    args = build_parser().parse_args(["eval", "--tasks", "ppl", "A", "--all-stages", "B"])
    assert args.runs_or_models == ["A", "B"] and args.all_stages
    args = build_parser().parse_args(["--debug", "substrate", "info", "--d-model", "64", "--debug"])
    assert args.d_model == 64 and args.command_sub == "info"


def test_tokenize_help_lists_the_vocabularies(capsys) -> None:
    from growlm.substrate import available_vocabularies

    with pytest.raises(SystemExit):
        main(["tokenize", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert all(v in out for v in available_vocabularies())


def test_a_local_folder_does_not_shadow_a_shipped_recipe(tmp_path: Path, monkeypatch) -> None:
    from growlm.training.plan import Recipe

    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()  # e.g. `growlm demo --out demo` earlier
    with pytest.warns(UserWarning, match=r"shipped recipe, not \./demo"):
        assert Recipe.load("demo").name == "demo"
    with pytest.raises(IsADirectoryError, match="is a directory"):
        Recipe.load("./demo")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (tmp_path / "mine.toml").write_text(Path(os.path.dirname(__import__("growlm").__file__), "recipes",
                                                 "demo.toml").read_text().replace('"demo"', '"mine"', 1))
        assert Recipe.load("mine.toml").name == "mine"
