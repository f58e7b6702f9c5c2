"""2, 4 and 8 consumers at once against one PostgreSQL: throughput, lock waits, deadlocks.

Each consumer is a process of its own (forked from the bench, its CPU
affinity widened to every CPU: PostgreSQL and the consumers share the
machine), calling the Lambda entry point (``app.persist_changes``) with
SQS-shaped batches of ``CONSUMER_BATCH_SIZE`` records over its own
connection, as concurrent Lambda invocations do.  The batches are dealt
round-robin, so that consecutive versions of a session go to different
consumers, as a standard queue does.  Two workloads:

* ``many_sessions``: thousands of sessions, a few versions each: the
  consumers rarely want the same ``sync_sessions`` row at once;
* ``hot_sessions``: ``HOT_SESSIONS`` sessions take every event: every batch
  of every consumer upserts the same few rows, and waits on row locks.

Measured, per run: events/s of all consumers together (events / the span
from the first consumer's start to the last one's end); lock waits,
sampled from ``pg_stat_activity`` (backends of the bench's database with
``wait_event_type = 'Lock'``) every ``SAMPLE_SECONDS``; deadlocks, as the
delta of ``pg_stat_database.deadlocks`` of the bench's database (read once
every consumer backend has gone, so that their statistics are flushed) and
as batches the consumers had to send again (a deadlock is one cause: the
consumer keeps only which records to retry, not why).
There must be none: APPLY_SQL takes its locks in key order (docs/guarantees.md).
Every run is checked: every event once in ``sync_events``, every session
at its highest version in ``sync_sessions``.
"""
from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from chalicelib import runtime
from chalicelib.constants import CONSUMER_BATCH_SIZE
from sessionsync.bench.consumer import install_consumer, version_major_bodies
from sessionsync.bench.context import STATE_BYTES, BenchContext
from sessionsync.bench.events import LambdaContext, sqs_event, sqs_record
from sessionsync.bench.harness import delete_rows, in_processes, verify_persisted, widen_affinity
from sessionsync.bench.stats import ratio
from sessionsync.project import import_app

CONSUMERS = (2, 4, 8)
WORKLOADS = ("many_sessions", "hot_sessions")
HOT_SESSIONS = 4
MANY_VERSIONS = 5
SAMPLE_SECONDS = 0.01
#: a batch that failed (retryable) is sent again, as SQS would, this often
RETRIES = 5
#: events per consumer, by profile
EVENTS_PER_CONSUMER = {"full": 5_000, "quick": 1_000, "smoke": 200}

LOCK_SAMPLE_SQL = """
SELECT count(*) FILTER (WHERE wait_event_type = 'Lock'),
       coalesce(array_agg(wait_event) FILTER (WHERE wait_event_type = 'Lock'), '{}')
FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'
"""
DEADLOCKS_SQL = "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
BACKENDS_SQL = """
SELECT coalesce(array_agg(pid), '{}') FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'
"""


def deal(bodies: list[tuple[str, str]], consumers: int, batch: int) -> list[list[list[tuple[str, str]]]]:
    """Cut ``bodies`` into batches and deal them round-robin: consumer i gets
    batches i, i + consumers, ...  (a list of batches per consumer)."""
    batches = [bodies[i:i + batch] for i in range(0, len(bodies), batch)]
    return [batches[i::consumers] for i in range(consumers)]


def workload_bodies(workload: str, prefix: str, events: int) -> list[tuple[str, str]]:
    """(event id, body) in version-major order: every session's version v
    before any session's v + 1, as writes arriving over time would be."""
    sessions = HOT_SESSIONS if workload == "hot_sessions" else max(1, events // MANY_VERSIONS)
    return version_major_bodies(prefix, sessions, -(-events // sessions))


def summarize_samples(samples: list[tuple[int, list[str]]]) -> dict[str, Any]:
    """Lock-wait samples (backends waiting, their wait events) in figures."""
    waiting = [n for n, _ in samples]
    events: Counter[str] = Counter()
    for _, names in samples:
        events.update(names)
    return {
        "samples": len(samples),
        "samples_with_lock_waits": sum(1 for n in waiting if n),
        "share_of_samples_with_lock_waits": round(sum(1 for n in waiting if n) / len(samples), 4)
        if samples else 0.0,
        "mean_backends_waiting": round(sum(waiting) / len(samples), 3) if samples else 0.0,
        "max_backends_waiting": max(waiting, default=0),
        "by_wait_event": dict(events.most_common()),
    }


def _consumer(dsn: str, redis_url: str, batches: list[list[tuple[str, str]]]
              ) -> Callable[[float], dict[str, Any]]:
    """In a consumer process: its runtime, connected; the persisting of its batches."""
    widen_affinity()  # it shares the CPUs with PostgreSQL, not with the pinned Redis
    handler = install_consumer(dsn, redis_url)  # a runtime of this process's own
    context = LambdaContext(timeout_ms=60_000)
    events = [sqs_event([sqs_record(body, event_id=eid) for eid, body in chunk])
              for chunk in batches]
    database = runtime.database()
    assert database is not None
    database.ping()  # connected before the start

    def work(_released: float) -> dict[str, Any]:
        retried = 0
        started = time.monotonic()
        try:
            for event in events:
                for attempt in range(RETRIES + 1):
                    try:
                        response = handler(event, context)
                    except Exception as exc:  # BatchIncomplete: some records to retry
                        report = getattr(exc, "report", None)
                        if report is None or attempt == RETRIES:
                            raise
                        retried += 1
                        event = {"Records": [r for r in event["Records"]
                                             if r["messageId"] in set(report.retry)]}
                        continue
                    if response["batchItemFailures"]:
                        raise AssertionError(f"batch item failures: {response['batchItemFailures'][:3]}")
                    break
            return {"started": started, "ended": time.monotonic(), "retried_batches": retried}
        finally:
            runtime.reset()  # closes the connection: its backend flushes its statistics
    return work


class LockSampler:
    """Samples pg_stat_activity's lock waits in a thread of its own."""

    def __init__(self, dsn: str) -> None:
        import psycopg
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.samples: list[tuple[int, list[str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lock-sampler", daemon=True)

    def __enter__(self) -> LockSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            row = self.conn.execute(LOCK_SAMPLE_SQL).fetchone()
            assert row is not None
            self.samples.append((int(row[0]), list(row[1])))


def _deadlocks(conn: Any) -> int:
    conn.execute("SELECT pg_stat_clear_snapshot()")
    row = conn.execute(DEADLOCKS_SQL).fetchone()
    return int(row[0] or 0)


def _backends(conn: Any) -> set[int]:
    return set(conn.execute(BACKENDS_SQL).fetchone()[0])


def _wait_backends_gone(conn: Any, pids: set[int], timeout: float = 15.0) -> None:
    """Until the consumers' backends have exited (a backend flushes its
    statistics, deadlocks included, when it exits)."""
    deadline = time.monotonic() + timeout
    while pids & _backends(conn) and time.monotonic() < deadline:
        time.sleep(0.05)


def _one_run(ctx: BenchContext, dsn: str, workload: str, consumers: int, per_consumer: int
             ) -> dict[str, Any]:
    import psycopg

    prefix = f"{ctx.session_prefix('par')}-{workload[:4]}-{consumers}"
    bodies = workload_bodies(workload, prefix, consumers * per_consumer)
    shares = deal(bodies, consumers, CONSUMER_BATCH_SIZE)
    runtime.reset()  # nothing of the parent's (connections) goes into the children
    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            existing = _backends(conn)
            deadlocks_before = _deadlocks(conn)
            theirs: set[int] = set()
            with LockSampler(dsn) as sampler:
                reports, _ = in_processes(
                    consumers, lambda i: _consumer(dsn, ctx.redis_url, shares[i]), timeout=600,
                    setup_timeout=120, before=lambda: theirs.update(
                        _backends(conn) - existing - {sampler.conn.info.backend_pid}))
            _wait_backends_gone(conn, theirs)
            sampler.conn.close()
            deadlocks = _deadlocks(conn) - deadlocks_before
            check = verify_persisted(conn, prefix, bodies)
        finally:
            delete_rows(conn, prefix)
    span = max(r["ended"] for r in reports) - min(r["started"] for r in reports)
    return {
        "consumers": consumers,
        "events": len(bodies),
        "seconds": round(span, 3),
        "events_per_second": round(len(bodies) / span, 1),
        "per_consumer_events_per_second": round(len(bodies) / span / consumers, 1),
        "lock_waits": summarize_samples(sampler.samples),
        "deadlocks": deadlocks,
        "retried_batches": sum(r["retried_batches"] for r in reports),
        **check,
    }


def run(ctx: BenchContext) -> dict[str, Any]:
    dsn = ctx.migrated_dsn()
    import_app()  # imported once here: the forked consumers inherit it
    per_consumer = EVENTS_PER_CONSUMER.get(ctx.profile.name, EVENTS_PER_CONSUMER["quick"])
    per_consumer -= per_consumer % CONSUMER_BATCH_SIZE
    workloads: dict[str, Any] = {}
    for workload in WORKLOADS:
        runs = [_one_run(ctx, dsn, workload, n, per_consumer) for n in CONSUMERS]
        base = runs[0]["events_per_second"]
        for r in runs:
            r["speedup_vs_2"] = ratio(r["events_per_second"], base)
        workloads[workload] = {"runs": runs}
    return {
        "database": dsn.rsplit("/", 1)[-1],
        "batch_size": CONSUMER_BATCH_SIZE,
        "events_per_consumer": per_consumer,
        "state_bytes": STATE_BYTES,
        "cpu_count": os.cpu_count(),
        "workloads": workloads,
        "deadlocks_total": sum(r["deadlocks"] for w in workloads.values() for r in w["runs"]),
        "notes": "consumers are processes (forked), each with its own connection, calling "
                 "app.persist_changes; events_per_second = all events / span of the run; "
                 f"lock waits sampled every {SAMPLE_SECONDS * 1000:g} ms from pg_stat_activity; "
                 "deadlocks = pg_stat_database.deadlocks delta of the bench's database.",
    }
