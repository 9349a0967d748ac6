"""The ``triage`` command table: every command, every group, every flag documented."""

from __future__ import annotations

import argparse
import importlib

import pytest

from triage_tools.cli import COMMANDS, Command, main

GROUPS = sorted({c.words[0] for c in COMMANDS if len(c.words) > 1})


def _actions(parser: argparse.ArgumentParser, name: str) -> list[tuple[str, argparse.Action]]:
    """Every argument of ``parser`` and of its sub-commands, with the command it belongs to."""
    found: list[tuple[str, argparse.Action]] = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            for sub, subparser in action.choices.items():
                found += _actions(subparser, f"{name} {sub}")
            continue
        found.append((name, action))
    return found


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c.words))
def test_every_flag_has_help_text(command: Command) -> None:
    """Each option of each subcommand carries a help text (``triage X --help`` explains it)."""
    words = command.words
    module = importlib.import_module(command.module)
    parser = argparse.ArgumentParser(prog="triage " + " ".join(words))
    module.configure(parser)
    missing = [
        f"{name}: {'/'.join(a.option_strings) or a.dest}"
        for name, a in _actions(parser, " ".join(words))
        if not a.help
    ]
    assert not missing


def test_command_modules_live_in_apps_folders() -> None:
    """Every command is a ``<package>.apps.<name>`` module, so CLIs are named one way."""
    assert all(".apps." in c.module for c in COMMANDS)


@pytest.mark.parametrize("group", GROUPS)
def test_command_groups_answer_help(group: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``triage GROUP --help`` lists the group's commands and exits 0."""
    assert main([group, "--help"]) == 0
    shown = capsys.readouterr().out
    for command in COMMANDS:
        if command.words[0] == group:
            assert " ".join(command.words) in shown


def test_group_without_a_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """``triage export`` alone prints the group's usage on stderr and exits 2."""
    assert main(["export"]) == 2
    assert "export onnx" in capsys.readouterr().err


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown word sequence exits 2 naming it."""
    assert main(["train", "bogus"]) == 2
    assert "unknown command 'train bogus'" in capsys.readouterr().err
