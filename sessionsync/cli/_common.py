"""Helpers shared by the CLI commands, and their one output convention:

* ``--format text|json`` on every command that reports: text for people,
  json for scripts (one JSON document on stdout, nothing else there);
* notes, warnings and errors on stderr; progress on stderr too, only when
  stderr is a terminal and ``--quiet`` is not given;
* the older spellings (``--format table``, ``--json``) still work for one
  version, with a note on stderr saying what replaces them.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import click

from chalicelib.adapters.aws import Budget
from chalicelib.domain.errors import ConfigurationError, SessionSyncError
from sessionsync.project import chalice_config

#: the AWS calls of an operator's command (``operator_command``): an
#: operator waits for an answer where a request must give up within seconds
#: (``aws.REQUEST_BUDGET``, which the API, the pipeline functions and
#: ``sessionsync serve``/``worker``/``relay`` keep).  LocalStack on a loaded
#: machine has taken more than the request's 3 s to answer a ReceiveMessage,
#: twice in a row (docs/troubleshooting.md).
OPERATOR_AWS_BUDGET = Budget(connect_timeout=5.0, read_timeout=20.0, attempts=4)

# 0 ok; 1 the check failed / something is unhealthy; 2 a configuration
# error (click uses 2 for usage errors too)
EXIT_FAILED, EXIT_CONFIG = 1, 2


def stage_environment(stage: str, config_path: Path | None = None) -> dict[str, str]:
    """The environment a .chalice/config.json stage sets (global, then stage);
    by default the project directory's (sessionsync.project)."""
    config_path = config_path or chalice_config()
    config = json.loads(config_path.read_text())
    if stage not in config.get("stages", {}):
        raise click.UsageError(f"stage {stage!r} is not in {config_path}")
    env = dict(config.get("environment_variables", {}))
    env.update(config["stages"][stage].get("environment_variables", {}))
    return env


def apply_stage_environment(stage: str | None) -> None:
    """Fill unset variables from the stage; what the shell set wins.

    (``chalice local`` does the opposite and overrides the shell; here a
    REDIS_URL or DATABASE_URL you exported must be the one used.)
    """
    if stage is None:
        if not chalice_config().exists():
            return
        stage = "local"
    for name, value in stage_environment(stage).items():
        os.environ.setdefault(name, value)


def database_dsn() -> str:
    """The settings' PostgreSQL DSN; ConfigurationError when none is set."""
    from chalicelib import runtime
    from chalicelib.adapters.postgres import connection

    settings = runtime.settings()
    if not settings.has_database:
        raise ConfigurationError("DATABASE_URL", "is not set (nor DB_SECRET_ARN, nor PG* variables)")
    return connection.resolve_dsn(settings, runtime.secrets_client)


def operator_command(command: Callable[..., Any]) -> Callable[..., Any]:
    """An operator's command (or group): its AWS clients get
    OPERATOR_AWS_BUDGET, not the request path's."""
    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        from chalicelib import runtime
        runtime.use_aws_budget(OPERATOR_AWS_BUDGET)
        return command(*args, **kwargs)
    return run


def fail(message: str, code: int = EXIT_FAILED) -> None:
    click.echo(message, err=True)
    sys.exit(code)


def config_error_exit(exc: ConfigurationError) -> None:
    fail(f"configuration error: {exc.message}", EXIT_CONFIG)


@contextlib.contextmanager
def exit_on_errors(what: str = "error", *, unexpected: bool = False) -> Iterator[None]:
    """Turn errors into the CLI's exit codes with a one-line message:
    ConfigurationError -> 2, any other SessionSyncError -> 1 ("<what>: ...").
    With ``unexpected``, any other exception too (a psycopg error during a
    migration deserves a sentence, not a traceback)."""
    try:
        yield
    except ConfigurationError as exc:
        config_error_exit(exc)
    except SessionSyncError as exc:
        fail(f"{what}: {exc.message}")
    except Exception as exc:
        if not unexpected:
            raise
        fail(f"{what}: {type(exc).__name__}: {exc}")


def exits_on_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """``exit_on_errors()`` around a whole command."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with exit_on_errors():
            return command(*args, **kwargs)
    return wrapper


# -- output ------------------------------------------------------------------------

def deprecated(old: str, new: str) -> None:
    click.echo(f"sessionsync: {old} is deprecated and goes away in the next version: "
               f"use {new}", err=True)


class _Format(click.Choice):
    """text | json; ``table``, the older name of text, still read (with a note)."""

    def __init__(self) -> None:
        super().__init__(["text", "json"])

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value == "table":
            deprecated("--format table", "--format text")
            return "text"
        return super().convert(value, param, ctx)


def output_format(*, json_flag: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--format text|json`` as the command's ``fmt``; ``json_flag``: the
    command had a ``--json`` flag, kept (hidden) as --format json."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(command)
        def wrapper(*args: Any, as_json: bool = False, **kwargs: Any) -> Any:
            if as_json:
                deprecated("--json", "--format json")
                kwargs["fmt"] = "json"
            return command(*args, **kwargs)

        wrapped = click.option("--format", "fmt", type=_Format(), default="text", show_default=True,
                               help="text for people; json for scripts (one JSON document on "
                                    "stdout).")(wrapper)
        if json_flag:
            wrapped = click.option("--json", "as_json", is_flag=True, hidden=True,
                                   help="Deprecated: --format json.")(wrapped)
        return wrapped
    return decorate


def quiet_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--quiet", "-q", is_flag=True,
                        help="No progress on stderr (it shows only on a terminal anyway).")(command)


def echo_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, default=str))


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip()
                     for row in cells)


def _session_id(value: str) -> str:
    from chalicelib.domain.errors import ValidationError
    from chalicelib.domain.validation import session_id
    try:
        return session_id(value, percent_encoded=False)
    except ValidationError as exc:
        raise click.BadParameter(exc.message) from exc


#: the SESSION_ID argument, checked as the API checks a path's id
SESSION_ID = click.argument("session_id", callback=lambda ctx, param, value: _session_id(value))

#: a finding's level as text
MARKS = {"ok": "[ok]  ", "info": "[info]", "warn": "[warn]", "fail": "[FAIL]"}


class Progress:
    """Where a long command is, for a person watching: one line on stderr,
    rewritten in place; nothing when stderr is not a terminal or with --quiet."""

    def __init__(self, quiet: bool = False, stream: IO[str] | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = not quiet and self.stream.isatty()
        self._shown = False

    def __call__(self, text: str) -> None:
        if self.enabled:
            self.stream.write(f"\r\x1b[K{text}")
            self.stream.flush()
            self._shown = True

    def done(self) -> None:
        """Clear the line (what follows starts on a clean one)."""
        if self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False
