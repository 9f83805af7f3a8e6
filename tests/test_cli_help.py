"""Every option of every command says what it does and, where it has one, its default."""

from __future__ import annotations

import argparse

from bitswitch.cli import build_parser


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Every (sub-)command parser under ``parser``, keyed by its command line ("bitswitch eval")."""
    out = {parser.prog: parser}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out.update(_commands(sub))
    return out


def _shows_default(action: argparse.Action) -> bool:
    """Does the help name the default? Options without one (None, off switches, empty lists) need not."""
    text = (action.help or "") % {"default": action.default, "prog": ""}
    if action.default in (None, False, []) or isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
        return True
    if isinstance(action.default, bool):  # --x/--no-x switches on by default
        return "default" in text
    value = f"{action.default:g}" if isinstance(action.default, float) else str(action.default)
    return "default" in text and (value in text or repr(action.default) in text)  # repr: defaults such as a newline


def test_every_option_has_help_and_shows_its_default() -> None:
    commands = _commands(build_parser())
    assert {"bitswitch eval", "bitswitch export", "bitswitch ptq", "bitswitch search", "bitswitch info"} <= set(commands)
    problems = []
    for prog, parser in commands.items():
        for action in parser._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction):
                continue
            name = "/".join(action.option_strings) or action.dest
            if not action.help:
                problems.append(f"{prog} {name}: no help")
            elif not _shows_default(action):
                problems.append(f"{prog} {name}: default {action.default!r} not shown")
    assert not problems, "\n".join(problems)


def test_the_walk_sees_a_missing_help() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    bad = sub.choices["info"]
    bad.add_argument("--undocumented", type=int, default=3)
    bad.add_argument("--hidden-default", type=int, default=7, help="a number")
    found = [a for a in bad._actions if a.option_strings and a.option_strings[0] in ("--undocumented", "--hidden-default")]
    assert [bool(a.help) and _shows_default(a) for a in found] == [False, False]
