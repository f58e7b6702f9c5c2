"""Operators' commands: ``health``, ``diagnose``, ``queue-metrics``, ``dlq``.

Each parses its options, gets its clients from ``chalicelib.runtime`` and
calls one chalicelib function (``health``, ``operations``,
``queue_metrics``, ``dlq``); the output is a table for people or JSON for
scripts.  Exit codes: 0 ok, 1 unhealthy / a dependency failed, 2 a
configuration (or usage) error.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import click

from chalicelib import runtime
from chalicelib.config import SESSION_DLQ_URL, SESSION_QUEUE_URL
from chalicelib.domain.errors import ConfigurationError
from sessionsync.cli._common import EXIT_CONFIG, EXIT_FAILED, echo_json, exits_on_errors

FORMATS = click.Choice(["table", "json"])


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip()
                     for row in cells)


# --- health ----------------------------------------------------------------------

@click.command()
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
@click.option("--timeout", type=click.FloatRange(0.1, 30), default=None,
              help="Seconds to wait for the slowest dependency (default: as /health, 1 s).")
@exits_on_errors
def health(fmt: str, timeout: float | None) -> None:
    """Check Redis, PostgreSQL, the queue and the DLQ, as GET /health does.

    Exit 0 when every configured dependency is up, 1 when one is down, 2 on
    a configuration error.  A non-empty DLQ is a warning (exit 0).
    """
    from chalicelib.api import health as health_checks

    runtime.settings()  # a bad setting is exit 2, before probing anything
    report = health_checks.check(runtime.health_probes(),
                                 timeout if timeout is not None else health_checks.DEADLINE_SECONDS)
    if fmt == "json":
        echo_json(report.to_dict())
    else:
        rows = []
        for check in report.checks:
            extra = {k: v for k, v in check.details.items()}
            detail = " ".join(f"{k}={v}" for k, v in extra.items())
            note = check.error or check.warning or ""
            rows.append((check.name, check.status,
                         "-" if check.latency_ms is None else f"{check.latency_ms:.2f}",
                         (detail + ("  " if detail and note else "") + note).strip()))
        click.echo(_table(("DEPENDENCY", "STATUS", "LATENCY_MS", "DETAILS"), rows))
        click.echo(f"overall: {report.to_dict()['status']}")
    if not report.healthy:
        config_broken = any(c.error_code == ConfigurationError.code for c in report.checks
                            if c.status != "ok")
        sys.exit(EXIT_CONFIG if config_broken else EXIT_FAILED)


# --- diagnose --------------------------------------------------------------------

_MARKS = {"ok": "[ok]  ", "info": "[info]", "warn": "[warn]", "fail": "[FAIL]"}


@click.command()
@click.option("--pings", type=click.IntRange(1, 100_000), default=100, show_default=True,
              help="PINGs per Redis node for the latency percentiles.")
@click.option("--sample", type=click.IntRange(1, 100_000), default=200, show_default=True,
              help="Session keys to sample (SCAN, bounded) for TTLs and persistence lag.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True)
@click.option("--strict", is_flag=True, help="Exit 1 on warnings too.")
@exits_on_errors
def diagnose(pings: int, sample: int, fmt: str, strict: bool) -> None:
    """Check the configuration and every dependency in depth.

    Configuration (names a bad setting, and shows the escaped form of a
    DATABASE_URL password with an unescaped '@' or '/'), Redis latency
    percentiles, key count, memory and eviction policy per node, a sample
    of session TTLs, the outbox, queue and DLQ depth, PostgreSQL
    reachability, the last events persisted and how far PostgreSQL lags
    Redis for sampled sessions.  Read-only.

    Exit 0 (warnings included, unless --strict), 1 when a check failed,
    2 on a configuration error.
    """
    from sessionsync import operations

    settings, findings = operations.check_configuration(os.environ)
    report = operations.Diagnosis(findings)
    if settings is not None:
        report.findings.extend(operations.diagnose(settings, runtime, pings=pings,
                                                   sample=sample).findings)
    if fmt == "json":
        echo_json(report.to_dict())
    else:
        section = None
        for finding in report.findings:
            if finding.section != section:
                section = finding.section
                click.echo(("" if finding is report.findings[0] else "\n") + section)
            click.echo(f"  {_MARKS[finding.level]} {finding.summary}")
            if finding.fix and finding.level != "ok":
                click.echo(f"         fix: {finding.fix}")
        click.echo(f"\noverall: {report.level}")
    if report.configuration_failed:
        sys.exit(EXIT_CONFIG)
    if report.level == "fail" or (strict and report.level == "warn"):
        sys.exit(EXIT_FAILED)


# --- queue-metrics ------------------------------------------------------------------

@click.command("queue-metrics")
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
@exits_on_errors
def queue_metrics(fmt: str) -> None:
    """Messages waiting, in flight and delayed on the queue and the DLQ.

    SQS's numbers are approximate (they can lag by a minute on AWS).
    """
    from chalicelib.adapters import queue_metrics as metrics

    settings = runtime.settings()
    if not settings.has_queue and not settings.has_dlq:
        raise ConfigurationError(SESSION_QUEUE_URL, "no queue is configured (set the queue and "
                                 "DLQ URLs or names)")
    doc = metrics.collect(runtime.sqs(),
                          runtime.queue_url() if settings.has_queue else None,
                          runtime.dlq_url() if settings.has_dlq else None)
    if fmt == "json":
        echo_json(doc)
        return
    click.echo(_table(("QUEUE", "WAITING", "IN_FLIGHT", "DELAYED"),
                      [(name, d["waiting"], d["in_flight"], d["delayed"]) for name, d in doc.items()]))


# --- dlq ----------------------------------------------------------------------------------

@click.group()
def dlq() -> None:
    """Inspect the dead-letter queue and send its messages back."""


@dlq.command("list")
@click.option("--max", "limit", type=click.IntRange(1, 100_000), default=100, show_default=True,
              help="Read at most this many messages.")
@click.option("--messages", "show_messages", is_flag=True, help="List each message, not only the reasons.")
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
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
    click.echo(_table(("COUNT", "ERROR_CLASS", "CODE", "CONSTRAINT", "EXAMPLE"),
                      [(g.count, g.error_class, g.error_code or "-", g.constraint or "-",
                        (g.example_message or "")[:80]) for g in groups]))
    if show_messages:
        click.echo("")
        click.echo(_table(("MESSAGE_ID", "SESSION", "VERSION", "ERROR_CLASS", "FAILED_AT"),
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
@exits_on_errors
def dlq_redrive(error_class: str | None, error_code: str | None, constraint: str | None,
                session_id: str | None, limit: int | None, dry_run: bool) -> None:
    """Send DLQ messages back to the main queue, once their cause is fixed.

    Without a filter SQS moves them all itself (a message move task);
    with one, matching messages are received, sent and deleted, the others
    left in place.  Exit 1 if SQS fails part way (what moved stays moved).
    """
    from chalicelib.adapters import queue_metrics as metrics
    from sessionsync import dlq as dead_letters

    sqs, dlq_url = runtime.sqs(), runtime.dlq_url()
    match = dead_letters.matcher(error_class=error_class, error_code=error_code,
                                 constraint=constraint, session_id=session_id)
    if dry_run:
        messages = dead_letters.peek(sqs, dlq_url, limit=100_000)
        chosen = [m for m in messages if match is None or match(m)][:limit]
        click.echo(f"would move {len(chosen)} of {len(messages)} message(s)")
        for group in dead_letters.group_reasons(chosen):
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
    click.echo(f"moved {result.moved} message(s) to the main queue"
               + (f", left {result.skipped} not matching" if result.skipped else "")
               + (" (SQS move task)" if result.task_handle else ""))


COMMANDS = (health, diagnose, queue_metrics, dlq)
