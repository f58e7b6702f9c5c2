"""``sessionsync queue-metrics``: the queue's and the DLQ's depths, completed and failed."""
from __future__ import annotations

from typing import Any

import click

from chalicelib import runtime
from chalicelib.config import SESSION_QUEUE_URL
from chalicelib.domain.errors import ConfigurationError, SessionSyncError
from sessionsync.cli._common import echo_json, exits_on_errors, fail, operator_command, output_format, table


@click.command("queue-metrics")
@output_format(json_flag=True)
@click.option("--minutes", type=click.IntRange(1, 7 * 24 * 60), default=5, show_default=True,
              help="The window of `completed`: events persisted in the last N minutes.")
@exits_on_errors
@operator_command
def queue_metrics(fmt: str, minutes: int) -> None:
    """Messages waiting, in flight and delayed on the queue and the DLQ;
    completed (events persisted in PostgreSQL in the last --minutes) and
    failed (messages in the DLQ).

    SQS keeps no count of completed or failed messages: completed is
    counted in sync_events, failed is the DLQ's depth.  SQS's numbers are
    approximate (they can lag by a minute on AWS).  Exit 1 when SQS or
    PostgreSQL cannot be read (what could be read is still shown).
    """
    from chalicelib.adapters import queue_metrics as metrics

    settings = runtime.settings()
    has_dlq = settings.has_dlq
    if not settings.has_queue and not has_dlq:
        raise ConfigurationError(SESSION_QUEUE_URL, "no queue is configured (set the queue and "
                                 "DLQ URLs or names)")
    doc: dict[str, Any] = metrics.collect(runtime.sqs(),
                                          runtime.queue_url() if settings.has_queue else None,
                                          runtime.dlq_url() if has_dlq else None)
    doc["failed"] = sum(doc["dlq"].values()) if has_dlq else None
    doc["completed"], doc["completed_minutes"], problem = None, minutes, None
    database = runtime.database()
    if database is not None:
        try:
            doc["completed"] = database.persisted_since(minutes * 60)
        except SessionSyncError as exc:
            problem = f"completed: PostgreSQL could not be read: {exc.message}"
    if fmt == "json":
        echo_json(doc)
    else:
        click.echo(table(("QUEUE", "WAITING", "IN_FLIGHT", "DELAYED"),
                         [(name, doc[name]["waiting"], doc[name]["in_flight"], doc[name]["delayed"])
                          for name in ("queue", "dlq") if name in doc]))
        click.echo("")
        click.echo(f"completed  {'-' if doc['completed'] is None else doc['completed']}  events "
                   f"persisted in the last {minutes} min (PostgreSQL)")
        click.echo(f"failed     {'-' if doc['failed'] is None else doc['failed']}  messages in the "
                   "DLQ (`sessionsync dlq list`)")
    if problem:
        fail(problem)
