"""Operators' commands: ``health``, ``diagnose``, ``queue-metrics``, ``key``,
``inspect``, ``dlq``.

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
from chalicelib.domain.errors import ConfigurationError, SessionSyncError
from sessionsync.cli._common import EXIT_CONFIG, EXIT_FAILED, echo_json, exits_on_errors, fail

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
    a configuration error.  A non-empty DLQ is a warning (exit 0).  "degraded"
    (Redis down, PostgreSQL up: /health answers 200) exits 1: Redis is down.
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
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@click.option("--minutes", type=click.IntRange(1, 7 * 24 * 60), default=5, show_default=True,
              help="The window of `completed`: events persisted in the last N minutes.")
@exits_on_errors
def queue_metrics(fmt: str, as_json: bool, minutes: int) -> None:
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
    if as_json or fmt == "json":
        echo_json(doc)
    else:
        click.echo(_table(("QUEUE", "WAITING", "IN_FLIGHT", "DELAYED"),
                          [(name, doc[name]["waiting"], doc[name]["in_flight"], doc[name]["delayed"])
                           for name in ("queue", "dlq") if name in doc]))
        click.echo("")
        click.echo(f"completed  {'-' if doc['completed'] is None else doc['completed']}  events "
                   f"persisted in the last {minutes} min (PostgreSQL)")
        click.echo(f"failed     {'-' if doc['failed'] is None else doc['failed']}  messages in the "
                   "DLQ (`sessionsync dlq list`)")
    if problem:
        fail(problem)


# --- key, inspect ----------------------------------------------------------------------

SESSION_ID = click.argument("session_id", callback=lambda ctx, param, value: _session_id(value))


def _session_id(value: str) -> str:
    from chalicelib.domain.errors import ValidationError
    from chalicelib.domain.validation import session_id
    try:
        return session_id(value, percent_encoded=False)
    except ValidationError as exc:
        raise click.BadParameter(exc.message) from exc


@click.command()
@SESSION_ID
@click.option("--all", "show_all", is_flag=True,
              help="Every key of the session, by role: session, marker, outbox index and data, "
                   "epoch, hold.")
def key(session_id: str, show_all: bool) -> None:
    """The Redis key of a session: redis-cli TTL "$(sessionsync key ID)".

    Keys are ss:{NNNN}:s:<id>, where NNNN is the session's bucket
    (crc32 of the id mod 1024): a hash tag that keeps every key of a session
    on one cluster slot.  Nothing is read from Redis.
    """
    from sessionsync.redis_views import key_names

    names = key_names(session_id)
    if not show_all:
        click.echo(names["session"])
        return
    click.echo(_table(("ROLE", "KEY"), names.items()))


@click.command("inspect")
@SESSION_ID
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@click.option("--events", type=click.IntRange(1, 500), default=5, show_default=True,
              help="How many of the last persisted events to show.")
@click.option("--dlq-max", type=click.IntRange(1, 100_000), default=1000, show_default=True,
              help="Read at most this many DLQ messages, looking for the session's.")
@exits_on_errors
def inspect_command(session_id: str, fmt: str, as_json: bool, events: int, dlq_max: int) -> None:
    """Everything about one session, and what is wrong with it, in words.

    Redis key, TTL, version and size; the version marker; outbox entries
    still waiting; the version in PostgreSQL and the lag behind Redis; the
    DLQ messages that name it (peeked, left in place); the last events.
    Read-only.  Exit 0 nothing wrong, 1 something is (a warning, a failure,
    or a source that could not be read), 2 configuration error.
    """
    from sessionsync import inspect as inspection

    settings = runtime.settings()
    has_dlq = bool(settings.dlq_url or settings.dlq_name)
    found = inspection.inspect(session_id, store=runtime.store(), database=runtime.database(),
                               sqs=runtime.sqs() if has_dlq else None,
                               dlq_url=runtime.dlq_url if has_dlq else None,
                               events=events, dlq_limit=dlq_max)
    doc = found.to_dict()
    if as_json or fmt == "json":
        echo_json(doc)
    else:
        click.echo(_inspection_text(doc))
    if doc["level"] in ("warn", "fail"):
        sys.exit(EXIT_FAILED)


def _inspection_text(doc: dict[str, Any]) -> str:
    lines = [f"session     {doc['session_id']}"]
    r = doc["redis"]
    if r is None:
        lines.append(f"redis       {doc['keys']['session']}  (not read)")
    else:
        if r["present"]:
            ttl = "no TTL" if r["ttl_left_s"] == -1 else f"TTL {r['ttl_left_s']} s of {r['ttl_seconds']} s"
            lines.append(f"redis       {r['key']}  v{r['version']}{' deleted' if r['deleted'] else ''}  "
                         f"{ttl}  {r['value_bytes']} bytes (memory {r['memory_bytes']})  "
                         f"updated {r['updated_at']}")
        else:
            lines.append(f"redis       {r['key']}  no key")
        m = r["marker"]
        lines.append(f"marker      {doc['keys']['marker']}  " + (
            "none" if m is None else f"v{m['version']}{' deleted' if m['deleted'] else ''}  "
            + ("no TTL" if m["ttl_left_s"] == -1 else f"TTL {m['ttl_left_s']} s")))
        lines.append("outbox      " + (", ".join(f"v{e['version']} ({e['age_s']} s old)" for e in r["outbox"])
                                       or "nothing waiting"))
    pg = doc["postgresql"]
    if "postgresql" in doc["not_configured"]:
        lines.append("postgresql  not configured")
    elif "postgresql" not in doc["errors"]:
        s = pg["session"]
        lines.append("postgresql  " + ("no row in sync_sessions" if s is None else
                                       f"v{s['version']}{' deleted' if s['deleted'] else ''}  "
                                       f"updated {s['updated_at']}")
                     + ("" if pg["lag_versions"] is None else f"  lag {pg['lag_versions']} version(s)"))
        for e in pg["events"]:
            lines.append(f"  event     v{e['version']} {e['event_type']}  at {e['occurred_at']}  "
                         f"persisted {e['persisted_at']}")
    d = doc["dlq"]
    if "dlq" in doc["not_configured"]:
        lines.append("dlq         not configured")
    elif d is not None:
        lines.append(f"dlq         {len(d['messages'])} message(s) for this session "
                     f"(of {d['read']} read, left in place)")
        for m in d["messages"]:
            lines.append(f"  message   v{m['version']} {m['error_class']} {m['error_code'] or ''} "
                         f"{m['constraint'] or ''}".rstrip())
    lines.append("")
    for f in doc["findings"]:
        lines.append(f"{_MARKS[f['level']]} {f['summary']}")
        if f.get("fix") and f["level"] != "ok":
            lines.append(f"         fix: {f['fix']}")
    lines.append(f"overall: {doc['level']}")
    return "\n".join(lines)


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


COMMANDS = (health, diagnose, queue_metrics, key, inspect_command, dlq)
