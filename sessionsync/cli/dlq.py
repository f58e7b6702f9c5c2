"""``sessionsync dlq list`` and ``dlq redrive``: the dead-letter queue, read and sent back."""
from __future__ import annotations

import sys
from dataclasses import asdict
from typing import Any

import click

from chalicelib import runtime
from chalicelib.config import SESSION_DLQ_URL
from sessionsync.cli._common import echo_json, exits_on_errors, operator_command, output_format, table


@click.group()
@operator_command
def dlq() -> None:
    """Inspect the dead-letter queue and send its messages back."""


@dlq.command("list")
@click.option("--max", "limit", type=click.IntRange(1, 100_000), default=100, show_default=True,
              help="Read at most this many messages.")
@click.option("--messages", "show_messages", is_flag=True, help="List each message, not only the reasons.")
@output_format()
@exits_on_errors
def dlq_list(limit: int, show_messages: bool, fmt: str) -> None:
    """Why messages are in the DLQ, grouped by error class, code (SQLSTATE) and constraint.

    Peeks: every message read is made visible again at once, nothing is
    deleted.  MaxReceiveCountExceeded means the queue's redrive policy moved
    it after repeated retryable failures (no error attributes).
    """
    from sessionsync import dlq as dead_letters

    messages = dead_letters.peek(runtime.sqs(), runtime.dlq_url(), limit=limit)
    groups = dead_letters.group_reasons(messages)
    if fmt == "json":
        doc: dict[str, Any] = {"read": len(messages), "reasons": [g.to_dict() for g in groups]}
        if show_messages:
            doc["messages"] = [m.summary() for m in messages]
        echo_json(doc)
        return
    if not messages:
        click.echo("the DLQ is empty")
        return
    click.echo(table(("COUNT", "ERROR_CLASS", "CODE", "CONSTRAINT", "EXAMPLE"),
                      [(g.count, g.error_class, g.error_code or "-", g.constraint or "-",
                        (g.example_message or "")[:80]) for g in groups]))
    if show_messages:
        click.echo("")
        click.echo(table(("MESSAGE_ID", "SESSION", "VERSION", "ERROR_CLASS", "FAILED_AT"),
                          [(s["message_id"], s["session_id"], s["version"], s["error_class"],
                            s["failed_at"]) for s in (m.summary() for m in messages)]))
    click.echo(f"\n{len(messages)} message(s) read (limit {limit}); nothing was removed")


@dlq.command("redrive")
@click.option("--error-class", help="Only messages with this error_class (e.g. PermanentPersistenceError, "
                                    "MalformedMessage, MaxReceiveCountExceeded).")
@click.option("--code", "error_code", help="Only messages with this error code: a SQLSTATE "
                                           "(e.g. 23514) or a malformed message's reason.")
@click.option("--constraint", help="Only messages that violated this constraint.")
@click.option("--session-id", help="Only this session's messages.")
@click.option("--max", "limit", type=click.IntRange(1, 1_000_000), default=None,
              help="Move at most this many.")
@click.option("--dry-run", is_flag=True, help="Show what would move; move nothing.")
@output_format()
@exits_on_errors
def dlq_redrive(error_class: str | None, error_code: str | None, constraint: str | None,
                session_id: str | None, limit: int | None, dry_run: bool, fmt: str) -> None:
    """Send DLQ messages back to the main queue, once their cause is fixed.

    Without a filter SQS moves them all itself (a message move task);
    with one, matching messages are received, sent and deleted, the others
    left in place.  Progress on stderr.  Exit 1 if SQS fails part way (what
    moved stays moved).
    """
    from chalicelib.adapters import queue_metrics as metrics
    from sessionsync import dlq as dead_letters

    sqs, dlq_url = runtime.sqs(), runtime.dlq_url()
    match = dead_letters.matcher(error_class=error_class, error_code=error_code,
                                 constraint=constraint, session_id=session_id)
    if dry_run:
        messages = dead_letters.peek(sqs, dlq_url, limit=100_000)
        chosen = [m for m in messages if match is None or match(m)][:limit]
        groups = dead_letters.group_reasons(chosen)
        if fmt == "json":
            echo_json({"dry_run": True, "would_move": len(chosen), "read": len(messages),
                       "reasons": [g.to_dict() for g in groups]})
            return
        click.echo(f"would move {len(chosen)} of {len(messages)} message(s)")
        for group in groups:
            click.echo(f"  {group.count:>6}  {group.error_class} {group.error_code or ''} "
                       f"{group.constraint or ''}".rstrip())
        return
    queue_url = runtime.queue_url()
    total = metrics.queue_depth(sqs, dlq_url, setting=SESSION_DLQ_URL).total
    if limit is not None:
        total = min(total, limit)
    with click.progressbar(length=max(total, 1), label="moving", file=sys.stderr,
                           show_pos=True) as bar:
        result = dead_letters.redrive(sqs, dlq_url, queue_url, match=match, limit=limit,
                                      progress=bar.update)
    if fmt == "json":
        echo_json({"dry_run": False, **asdict(result)})
        return
    click.echo(f"moved {result.moved} message(s) to the main queue"
               + (f", left {result.skipped} not matching" if result.skipped else "")
               + (" (SQS move task)" if result.task_handle else ""))
