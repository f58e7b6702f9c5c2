"""Helpers shared by the CLI commands."""
from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from chalicelib.domain.errors import ConfigurationError, SessionSyncError
from sessionsync.project import chalice_config

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


def echo_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, default=str))
