"""The sessionsync command line: every command documents itself."""
from __future__ import annotations

import os

import click
import pytest
from click.testing import CliRunner

from chalicelib.observability import logs
from sessionsync.cli import main


@pytest.fixture(autouse=True)
def environment_restored():
    """The group fills unset variables from the local stage and configures
    logging: undo both for the tests that run after these."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
    logs.configure()


def command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    for name, command in group.commands.items():
        paths.append((*prefix, name))
        if isinstance(command, click.Group):
            paths.extend(command_paths(command, (*prefix, name)))
    return paths


def test_every_command_answers_help_with_its_purpose_and_exits_0():
    paths = command_paths(main)
    assert {("health",), ("diagnose",), ("queue-metrics",), ("dlq", "list"), ("dlq", "redrive")} <= set(paths)
    runner = CliRunner()
    for path in paths:
        result = runner.invoke(main, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage:" in result.output and len(result.output.splitlines()) > 3, path


def test_an_unknown_option_is_a_usage_error_with_exit_code_2():
    result = CliRunner().invoke(main, ["health", "--colour"])
    assert result.exit_code == 2


def test_a_dlq_message_nested_too_deep_to_decode_is_listed_without_its_event():
    from sessionsync.dlq import DeadLetterMessage
    letter = DeadLetterMessage("m1", "r1", '{"a":' * 5000 + "1" + "}" * 5000,
                               {"error_class": "MalformedMessage"})
    assert letter.event is None and letter.session_id is None
