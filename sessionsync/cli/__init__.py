"""The ``sessionsync`` command line: operators' and developers' tools.

Each command parses its options and calls the same chalicelib services the
Lambda functions use (through ``chalicelib.runtime``).  Exit codes: 0 ok,
1 the check failed / something is unhealthy, 2 usage or configuration error.
"""
from __future__ import annotations

import os
from importlib import metadata

import click

from chalicelib.observability import logs
from sessionsync.cli import _common, ops
from sessionsync.cli.bench import bench
from sessionsync.cli.pipeline import bootstrap, migrate, relay, sweep, worker
from sessionsync.cli.retention import retention
from sessionsync.cli.serve import serve
from sessionsync.cli.soak import soak
from sessionsync.cli.store import watch
from sessionsync.project import PROJECT_DIR_ENV


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
    logs.configure()  # JSON lines on stderr at LOG_LEVEL; stdout stays the command's output


for command in (serve, watch, bootstrap, migrate, worker, relay, sweep, retention, bench, soak,
                *ops.COMMANDS):
    main.add_command(command)
