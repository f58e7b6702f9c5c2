"""The pipeline beside a local server (``sessionsync serve``): what the SQS
event source mapping and the schedules do in AWS, as daemon threads.
``build_worker`` builds the local worker ``sessionsync worker`` runs too."""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from chalicelib import runtime
from chalicelib.constants import (
    CONSUMER_BATCH_SIZE,
    CONSUMER_MAX_CONCURRENCY,
    QUEUE_VISIBILITY_TIMEOUT,
    RELAY_RESERVED_CONCURRENCY,
    RELAY_SCHEDULE_SECONDS,
    RELAY_TIMEOUT_SECONDS,
    SCHEDULE_MARGIN_SECONDS,
)
from chalicelib.domain.errors import ConfigurationError, SessionSyncError
from chalicelib.observability import logs

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
#: how long a stopping relay schedule waits for its runs to release the lease
RELAY_JOIN_SECONDS = 10.0


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
            args=("relay", runtime.relay, lambda r: run_relay_schedule(r, stop), stop)))
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


def run_relay_schedule(relay: Any, stop: threading.Event, *,
                       period: float = RELAY_SCHEDULE_SECONDS,
                       timeout: float = RELAY_TIMEOUT_SECONDS,
                       concurrency: int = RELAY_RESERVED_CONCURRENCY) -> None:
    """The relay function as its schedule runs it, until ``stop`` is set:
    an invocation every ``period`` seconds, each ``relay.serve`` with the
    budget app.relay_outbox gives it (its timeout less the margin), at
    most ``concurrency`` at once (the function's reserved concurrency: a
    schedule beyond it is throttled, here skipped).  Each run hands over
    to the next through the lease, as in AWS."""
    budget = timeout - SCHEDULE_MARGIN_SECONDS
    running: list[threading.Thread] = []
    n = 0
    while not stop.is_set():
        running = [t for t in running if t.is_alive()]
        if len(running) < concurrency:
            n += 1
            thread = threading.Thread(target=_invoke_relay, args=(relay, budget, stop),
                                      name=f"outbox-relay-run-{n}", daemon=True)
            thread.start()
            running.append(thread)
        stop.wait(period)
    for thread in running:
        thread.join(timeout=RELAY_JOIN_SECONDS)


def _invoke_relay(relay: Any, budget: float, stop: threading.Event) -> None:
    # each run's log lines share a request id, as a Lambda invocation's do
    try:
        logs.per_invocation(lambda _: relay.serve(budget_seconds=budget, stop=stop))({})
    except Exception:  # an invocation that fails is logged, as Lambda records it
        log.exception("relay run failed")
