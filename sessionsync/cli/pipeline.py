"""Pipeline commands: ``bootstrap``, ``migrate``, ``worker``, ``relay``, ``sweep``; and
``start_pipeline_threads`` for ``sessionsync serve``.

Each command only parses options; the work is in chalicelib (provisioning,
worker, outbox), built from the settings through ``chalicelib.runtime``.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import click

from chalicelib import runtime
from chalicelib.constants import CONSUMER_BATCH_SIZE, CONSUMER_MAX_CONCURRENCY, QUEUE_VISIBILITY_TIMEOUT
from chalicelib.domain.errors import ConfigurationError, SessionSyncError
from chalicelib.observability import logs
from sessionsync.cli._common import exit_on_errors, fail

log = logging.getLogger("sessionsync.pipeline")

# Pollers the local server runs: as many batches at once as the event source
# mapping may run (CONSUMER_MAX_CONCURRENCY).  A poller spends most of its
# time waiting on LocalStack's and PostgreSQL's round trips, which stretch
# when the API is loading the same machine: with fewer pollers the worker
# fell behind what the API accepted (docs/performance.md, "Soak").
LOCAL_CONCURRENCY = CONSUMER_MAX_CONCURRENCY
# A poller's SQS read timeout is its long poll's wait plus this.  A reply
# given up on has taken its messages all the same: they stay invisible for
# the whole visibility timeout while the client polls again, and LocalStack
# under load answers seconds late.  A poller is no request: it can wait.
RECEIVE_READ_MARGIN_SECONDS = 20.0


def _database_dsn() -> str:
    from chalicelib.adapters.postgres import connection
    settings = runtime.settings()
    if not settings.has_database:
        raise ConfigurationError("DATABASE_URL", "is not set (nor DB_SECRET_ARN, nor PG* variables)")
    return connection.resolve_dsn(settings, runtime.secrets_client)


def build_worker(*, batch_size: int = CONSUMER_BATCH_SIZE, wait_seconds: int = 10,
                 visibility_timeout: int = QUEUE_VISIBILITY_TIMEOUT, retry_delay: float = 2.0,
                 report_batch_item_failures: bool = True) -> Any:
    """A worker with its own database connection (the API threads keep theirs).

    Raises ConfigurationError, ServiceUnavailable (queue lookup).
    """
    from chalicelib.adapters import aws
    from chalicelib.adapters.postgres.database import Database
    from chalicelib.pipeline.consumer import Consumer, SqsRecordSource
    from chalicelib.pipeline.dead_letters import DeadLetterQueue
    from sessionsync.worker import Worker

    settings = runtime.settings()
    if not settings.has_database:
        raise ConfigurationError("DATABASE_URL", "the worker needs a database")
    database = Database.from_settings(settings, runtime.secrets_client)
    consumer = Consumer(database, DeadLetterQueue(runtime.sqs(), runtime.dlq_url()),
                        SqsRecordSource(runtime.sqs(), runtime.queue_url()))
    receiver = aws.client("sqs", settings, read_timeout=wait_seconds + RECEIVE_READ_MARGIN_SECONDS)
    # each batch's log lines share a request id, as a Lambda invocation's do
    return Worker(receiver, runtime.queue_url(), logs.per_invocation(consumer.handle),
                  batch_size=batch_size,
                  wait_seconds=wait_seconds, visibility_timeout=visibility_timeout,
                  retry_delay=retry_delay, report_batch_item_failures=report_batch_item_failures)


def _retrying(name: str, build: Callable[[], Any], run: Callable[[Any], None],
              stop: threading.Event) -> None:
    """Build (retrying while LocalStack or the queues are not there yet), then run."""
    delay = 1.0
    while not stop.is_set():
        try:
            target = build()
        except SessionSyncError as exc:
            log.warning("%s not started yet: %s (run `sessionsync bootstrap`?)", name, exc.message)
            stop.wait(delay)
            delay = min(delay * 2, 15.0)
            continue
        run(target)
        return


def start_pipeline_threads(stop: threading.Event) -> list[threading.Thread]:
    """Run the SQS worker, the outbox relay, the expiry sweep and
    (SYNC_EVENTS_RETENTION_DAYS set) the sync_events purge in daemon threads
    until ``stop`` is set (``sessionsync serve``: what the event source
    mapping and the schedules do in AWS)."""
    settings = runtime.settings()
    threads: list[threading.Thread] = []
    if settings.has_queue and settings.has_database:
        threads.extend(threading.Thread(
            target=_retrying, name=f"sqs-worker-{i}", daemon=True,
            args=("worker", lambda: build_worker(wait_seconds=2), lambda w: w.run(stop), stop))
            for i in range(LOCAL_CONCURRENCY))
    if settings.has_queue:
        threads.append(threading.Thread(
            target=_retrying, name="outbox-relay", daemon=True,
            args=("relay", runtime.relay, lambda r: r.run(stop, interval=1.0), stop)))
    if settings.has_database and settings.events_retention_days is not None:
        threads.append(retention_thread(settings.events_retention_days, stop))
    if settings.has_database:
        from sessionsync.worker import run_sweeps
        threads.append(threading.Thread(
            target=_retrying, name="expiry-sweep", daemon=True,
            args=("expiry sweep", runtime.expiry_sweep, lambda s: run_sweeps(s, stop), stop)))
    for thread in threads:
        thread.start()
    return threads


def retention_thread(days: int, stop: threading.Event) -> threading.Thread:
    """The hourly sync_events purge (app.py's ``purge_sync_events``
    schedule), on a database connection of its own."""
    from chalicelib.adapters.postgres.database import Database
    from chalicelib.pipeline import retention

    def build() -> Database:
        return Database.from_settings(runtime.settings(), runtime.secrets_client)

    return threading.Thread(
        target=_retrying, name="sync-events-retention", daemon=True,
        args=("retention", build, lambda db: retention.run(db, days, stop), stop))


@click.command()
@click.option("--queues/--no-queues", default=True, show_default=True,
              help="Create the SQS queue and its DLQ.")
@click.option("--database/--no-database", default=True, show_default=True,
              help="Create the database if missing and run the migrations.")
def bootstrap(queues: bool, database: bool) -> None:
    """Create the queue, the DLQ, the database and its schema (idempotent)."""
    from sessionsync import provisioning
    with exit_on_errors("bootstrap failed", unexpected=True):  # psycopg.Error too
        settings = runtime.settings()
        report = provisioning.bootstrap(settings, runtime.sqs() if queues else None,
                                        _database_dsn() if database else None)
    if report.queues:
        click.echo(f"queue {report.queues.url} (DLQ {report.queues.dlq_url})")
    if database:
        click.echo("database created" if report.database_created else "database exists")
        click.echo(f"migrations applied: {', '.join(report.migrations_applied) or 'none (up to date)'}")


@click.command()
def migrate() -> None:
    """Apply pending SQL migrations (safe to run twice, or twice at once)."""
    from sessionsync import provisioning
    with exit_on_errors("migrate failed", unexpected=True):  # psycopg.Error too
        applied = provisioning.migrate(_database_dsn())
    click.echo(f"applied: {', '.join(m.filename for m in applied)}" if applied else "up to date")


@click.command()
@click.option("--batch-size", type=click.IntRange(1, 10), default=CONSUMER_BATCH_SIZE, show_default=True)
@click.option("--wait-seconds", type=click.IntRange(0, 20), default=10, show_default=True,
              help="Long-poll wait.")
@click.option("--visibility-timeout", type=click.IntRange(1, 43200), default=QUEUE_VISIBILITY_TIMEOUT,
              show_default=True)
@click.option("--retry-delay", type=click.FloatRange(0), default=2.0, show_default=True,
              help="First retry delay of a failed message, doubling per receive; 0 waits the "
                   "whole visibility timeout, as Lambda does.")
@click.option("--concurrency", type=click.IntRange(1, CONSUMER_MAX_CONCURRENCY),
              default=LOCAL_CONCURRENCY, show_default=True,
              help="Batches in flight at once (pollers, each with its own database connection).")
@click.option("--report-batch-item-failures/--no-report-batch-item-failures", default=True,
              show_default=True,
              help="Play a mapping with ReportBatchItemFailures (chalice package + "
                   "infra/chalice-merge.json), or one without it (chalice deploy).")
@click.option("--once", is_flag=True, help="Process one batch and exit.")
def worker(batch_size: int, wait_seconds: int, visibility_timeout: int, retry_delay: float,
           concurrency: int, report_batch_item_failures: bool, once: bool) -> None:
    """Long-poll the queue and run the consumer, as the Lambda event source mapping would."""
    with exit_on_errors("worker cannot start"):
        workers = [build_worker(batch_size=batch_size, wait_seconds=wait_seconds,
                                visibility_timeout=visibility_timeout, retry_delay=retry_delay,
                                report_batch_item_failures=report_batch_item_failures)
                   for _ in range(1 if once else concurrency)]
    if once:
        with exit_on_errors("worker failed"):
            result = workers[0].poll_once()
        click.echo(f"received {result.received}, deleted {result.deleted}, retried {result.retried}")
        return
    stop = threading.Event()
    threads = [threading.Thread(target=w.run, args=(stop,), name=f"sqs-worker-{i}", daemon=True)
               for i, w in enumerate(workers)]
    for thread in threads:
        thread.start()
    click.echo(f"worker polling {workers[0].queue_url} with {concurrency} poller(s) (Ctrl-C to stop)")
    try:
        while any(t.is_alive() for t in threads):
            stop.wait(0.5)
    except KeyboardInterrupt:
        stop.set()


@click.command()
@click.option("--once", is_flag=True, help="Relay what is pending now and exit.")
@click.option("--age", type=click.FloatRange(0), default=None,
              help="Only entries older than this many seconds (default OUTBOX_RELAY_AGE_SECONDS).")
@click.option("--interval", type=click.FloatRange(0.1), default=1.0, show_default=True)
def relay(once: bool, age: float | None, interval: float) -> None:
    """Re-send outbox entries that never reached SQS."""
    with exit_on_errors("relay failed"):
        r = runtime.relay()
        if age is not None:
            r.age_seconds = age
        if once:
            result = r.drain(budget_seconds=300)
            click.echo(f"found {result.found}, sent {result.sent}")
            if result.sent < result.found:
                fail("some entries could not be sent (SQS unavailable?)")
            return
    stop = threading.Event()
    click.echo(f"relaying entries older than {r.age_seconds:g} s every {interval:g} s (Ctrl-C to stop)")
    try:
        r.run(stop, interval=interval)
    except KeyboardInterrupt:
        stop.set()


@click.command()
@click.option("--dry-run", is_flag=True, help="Count the candidates; write nothing.")
@click.option("--grace", type=click.FloatRange(0), default=None,
              help="Only lifetimes that ended this many seconds ago (default "
                   "SESSION_EXPIRY_GRACE_SECONDS).")
def sweep(dry_run: bool, grace: float | None) -> None:
    """Record session_expired for every session whose lifetime ended (once)."""
    with exit_on_errors("sweep failed"):
        s = runtime.expiry_sweep()
        if grace is not None:
            s.grace_seconds = grace
        result = s.run(budget_seconds=300, dry_run=dry_run)
    if dry_run:
        click.echo(f"candidates {result.candidates} (dry run: nothing written)")
        return
    skipped = ", ".join(f"{k} {v}" for k, v in sorted(result.skipped.items())) or "none"
    click.echo(f"candidates {result.candidates}, expired {result.expired}, skipped: {skipped}")
