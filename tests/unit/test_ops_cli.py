"""The sessionsync command line: every command documents itself."""
from __future__ import annotations

import io
import json
import os

import click
import pytest
from click.testing import CliRunner

from chalicelib.observability import logs, metrics
from sessionsync.cli import main


@pytest.fixture(autouse=True)
def environment_restored():
    """The group fills unset variables from the local stage and configures
    logging and metrics: undo all three for the tests that run after these."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
    logs.configure()
    metrics.configure()


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


# --- one output convention -------------------------------------------------------

#: the commands that report once and exit: each takes --format text|json
REPORTING = {("health",), ("diagnose",), ("queue-metrics",), ("key",), ("inspect",), ("dlq", "list"),
             ("dlq", "redrive"), ("migrate",), ("bootstrap",), ("retention",), ("sweep",),
             ("relay",), ("worker",), ("bench",), ("soak",), ("keys", "create"), ("keys", "list"),
             ("keys", "revoke"), ("keys", "rotate")}
#: the long ones: their progress goes to stderr, and --quiet turns it off
LONG = {("migrate",), ("retention",), ("bench",), ("soak",)}


def command_at(path: tuple[str, ...]) -> click.Command:
    command: click.Command = main
    for name in path:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    return command


def options_of(command: click.Command) -> dict[str, click.Parameter]:
    return {opt: p for p in command.params for opt in getattr(p, "opts", ())}


def test_every_reporting_command_takes_format_text_or_json_and_no_other_spelling():
    assert REPORTING <= set(command_paths(main))
    for path in REPORTING:
        options = options_of(command_at(path))
        fmt = options["--format"]
        assert isinstance(fmt.type, click.Choice) and list(fmt.type.choices) == ["text", "json"], path
        assert fmt.default == "text", path
        # the older spellings are hidden: --help shows one convention
        assert all(not getattr(p, "hidden", False) or opt in ("--json",)
                   for opt, p in options.items()), path
        help_text = CliRunner().invoke(main, [*path, "--help"]).output
        assert "[text|json]" in help_text and "--json" not in help_text.replace("--format", ""), path


def test_the_long_commands_take_quiet():
    for path in LONG:
        assert "--quiet" in options_of(command_at(path)), path


def _echo_format() -> click.Command:
    from sessionsync.cli._common import output_format

    @click.command()
    @output_format(json_flag=True)
    def report(fmt: str) -> None:
        click.echo(f"format={fmt}")
    return report


@pytest.mark.parametrize("args, fmt, note", [
    ([], "text", None),
    (["--format", "json"], "json", None),
    (["--format", "table"], "text", "--format table is deprecated"),
    (["--json"], "json", "--json is deprecated"),
])
def test_the_older_spellings_still_work_for_one_version_with_a_note_on_stderr(args, fmt, note):
    result = CliRunner().invoke(_echo_format(), args)

    assert result.exit_code == 0, result.output
    assert result.stdout == f"format={fmt}\n"  # stdout stays the machine's
    if note is None:
        assert result.stderr == ""
    else:
        assert note in result.stderr and "next version" in result.stderr


def test_a_format_outside_the_convention_is_a_usage_error():
    result = CliRunner().invoke(_echo_format(), ["--format", "xml"])

    assert result.exit_code == 2 and "'xml' is not one of 'text', 'json'" in result.stderr


def test_key_prints_the_session_key_or_every_key_by_role():
    from sessionsync.redis_views import key_names

    runner = CliRunner()
    text = runner.invoke(main, ["key", "s-1"])
    every = runner.invoke(main, ["key", "s-1", "--format", "json"])

    assert (text.exit_code, text.stdout) == (0, key_names("s-1")["session"] + "\n")
    assert every.exit_code == 0 and json.loads(every.stdout) == key_names("s-1")


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_progress_shows_on_a_terminal_only_and_not_with_quiet():
    from sessionsync.cli._common import Progress

    for tty, quiet, shown in ((True, False, True), (False, False, False), (True, True, False)):
        stream = _Stream(tty)
        progress = Progress(quiet, stream)
        progress("batch 1")
        progress("batch 2")
        progress.done()
        assert ("batch 2" in stream.getvalue()) is shown, (tty, quiet)
        assert stream.getvalue() == "" or stream.getvalue().endswith("\r\x1b[K")
