"""The ``sessionsync`` command line: operators' and developers' tools.

One module per command, named after it.  Each parses its options and
calls the same chalicelib services the Lambda functions use (through
``chalicelib.runtime``).  Exit codes: 0 ok, 1 the check failed / something
is unhealthy, 2 usage or configuration error.  Output: ``_common``.
"""
from __future__ import annotations

import os
import sys
from importlib import metadata
from typing import TextIO, cast

import click

from chalicelib.observability import logs, metrics
from sessionsync.cli import _common
from sessionsync.cli.bench import bench
from sessionsync.cli.bootstrap import bootstrap
from sessionsync.cli.diagnose import diagnose
from sessionsync.cli.dlq import dlq
from sessionsync.cli.health import health
from sessionsync.cli.inspect import inspect_command
from sessionsync.cli.key import key
from sessionsync.cli.keys import keys
from sessionsync.cli.migrate import migrate
from sessionsync.cli.migrate_markers import migrate_markers
from sessionsync.cli.queue_metrics import queue_metrics
from sessionsync.cli.relay import relay
from sessionsync.cli.retention import retention
from sessionsync.cli.serve import serve
from sessionsync.cli.soak import soak
from sessionsync.cli.sweep import sweep
from sessionsync.cli.watch import watch
from sessionsync.cli.worker import worker
from sessionsync.project import PROJECT_DIR_ENV


class _CurrentStderr:
    """sys.stderr as it is at each write (a test runner swaps it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def version() -> str:
    try:
        return metadata.version("sessionsync")
    except metadata.PackageNotFoundError:  # a checkout on PYTHONPATH, not installed
        return "unknown (not installed)"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version(), prog_name="sessionsync")
@click.option("--stage", default=None, envvar="SESSIONSYNC_STAGE",
              help="Take unset settings from this .chalice/config.json stage (default: local "
                   "when run from a checkout).")
@click.option("--project-dir", default=None, envvar=PROJECT_DIR_ENV,
              type=click.Path(exists=True, file_okay=False),
              help="The directory holding app.py and .chalice/ (default: the checkout this "
                   "package runs from, else the current directory).")
def main(stage: str | None, project_dir: str | None) -> None:
    """sessionsync: serverless session state on Redis, SQS and PostgreSQL."""
    if project_dir:
        # in the environment, so that the processes the commands start see it too
        os.environ[PROJECT_DIR_ENV] = os.path.abspath(project_dir)
    _common.apply_stage_environment(stage)
    # stdout is the command's output: log lines (JSON, at LOG_LEVEL) and EMF
    # metric lines go to stderr
    logs.configure()
    metrics.configure(stream=cast(TextIO, _CurrentStderr()))


for command in (serve, watch, bootstrap, migrate, migrate_markers, worker, relay, sweep, retention,
                bench, soak, health, diagnose, queue_metrics, key, keys, inspect_command, dlq):
    main.add_command(command)
