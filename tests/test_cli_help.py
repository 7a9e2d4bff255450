"""Every `lineqc` subcommand's --help renders and shows each option's default."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from lineqc.cli import STAGES, build_parser

# train/ registers `lineqc train` and `lineqc eval`; their help is that stage's to keep.
NOT_CHECKED = {"train", "eval"}


def parsers(stage: str) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """(command, parser) of a stage and every subcommand below it."""
    todo: list[tuple[str, argparse.ArgumentParser]] = [("", build_parser([stage]))]
    while todo:
        name, parser = todo.pop()
        if name:
            yield name, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo += [
                    (f"{name} {sub}".strip(), p)
                    for sub, p in action.choices.items()
                    if name or sub == stage
                ]


def meaningful(action: argparse.Action) -> bool:
    """An option whose default a user needs to know (not a flag, not "none")."""
    d = action.default
    return not (
        action.required
        or d is None
        or isinstance(d, bool)
        or d == []
        or d == argparse.SUPPRESS
        or isinstance(action, argparse._HelpAction | argparse._SubParsersAction)
    )


@pytest.mark.parametrize("stage", sorted(set(STAGES) - NOT_CHECKED))
def test_help_shows_every_default(stage: str) -> None:
    missing = []
    for name, parser in parsers(stage):
        text = parser.format_help()  # renders: a stray % in a help string would raise here
        assert f"usage: lineqc {name}" in text
        for action in parser._actions:
            if meaningful(action) and "default: " not in (action.help or ""):
                missing.append(f"lineqc {name} {'/'.join(action.option_strings)}")
    assert not missing, f"help without its default: {missing}"
