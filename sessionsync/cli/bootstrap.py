"""``sessionsync bootstrap``: the queue, the DLQ, the database and its schema."""
from __future__ import annotations

import click

from chalicelib import runtime
from sessionsync.cli._common import database_dsn, echo_json, exit_on_errors, operator_command, output_format


@click.command()
@click.option("--queues/--no-queues", default=True, show_default=True,
              help="Create the SQS queue and its DLQ.")
@click.option("--database/--no-database", default=True, show_default=True,
              help="Create the database if missing and run the migrations.")
@output_format()
@operator_command
def bootstrap(queues: bool, database: bool, fmt: str) -> None:
    """Create the queue, the DLQ, the database and its schema (idempotent)."""
    from sessionsync import provisioning
    with exit_on_errors("bootstrap failed", unexpected=True):  # psycopg.Error too
        settings = runtime.settings()
        report = provisioning.bootstrap(settings, runtime.sqs() if queues else None,
                                        database_dsn() if database else None)
    if fmt == "json":
        echo_json({"queue_url": report.queues.url if report.queues else None,
                   "dlq_url": report.queues.dlq_url if report.queues else None,
                   **({"database_created": report.database_created,
                       "migrations_applied": report.migrations_applied} if database else {})})
        return
    if report.queues:
        click.echo(f"queue {report.queues.url} (DLQ {report.queues.dlq_url})")
    if database:
        click.echo("database created" if report.database_created else "database exists")
        click.echo(f"migrations applied: {', '.join(report.migrations_applied) or 'none (up to date)'}")
