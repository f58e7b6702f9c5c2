"""Consumer throughput: change events persisted per second by one worker.

The Lambda entry point itself (``app.persist_changes``, i.e. Chalice's SQS
wrapper around ``Consumer.handle`` and ``Database.apply_events``) gets
SQS-shaped events of 1, 10 and 100 records, against a PostgreSQL database of
the bench's own (created and migrated with the pipeline's provisioning
functions).  SQS receive and delete are not in this figure: with the event
source mapping, Lambda's pollers do them outside the function.  The local
worker's path (LocalStack ReceiveMessage + handler + DeleteMessageBatch) is
measured separately when LocalStack runs.

The events are what the store's scripts emit (1 KB states), many sessions
each with several versions, a batch holding distinct sessions as a busy
queue does.  Every run is checked: every event in ``sync_events`` exactly
once, every session at its highest version in ``sync_sessions``.
"""
from __future__ import annotations

import json
import time
from typing import Any

from chalicelib import runtime
from chalicelib.config import Settings
from chalicelib.domain.events import CREATED, EVENT_SCHEMA_VERSION, UPDATED
from sessionsync.bench.aws_local import localstack_sqs_unavailable
from sessionsync.bench.context import STATE_BYTES, BenchContext, state_document
from sessionsync.bench.events import LambdaContext, sqs_batches
from sessionsync.bench.harness import delete_rows, local_queue, verify_persisted
from sessionsync.bench.stats import summarize_ns
from sessionsync.project import import_app

BATCH_SIZES = (1, 10, 100)
VERSIONS_PER_SESSION = 5


def change_event(session_id: str, version: int, state: dict[str, Any], stamp: str) -> str:
    """A change event body, field for field as the store's Lua scripts build it."""
    kind = CREATED if version == 1 else UPDATED
    return ('{"schema_version":%d,"event_id":"%s:%d","event_type":"%s","session_id":"%s",'
            '"version":%d,"created_at":"%s","occurred_at":"%s","ttl_seconds":3600,"state":%s}' % (
                EVENT_SCHEMA_VERSION, session_id, version, kind, session_id, version, stamp, stamp,
                json.dumps(state, separators=(",", ":"))))


def version_major_bodies(prefix: str, sessions: int, versions: int) -> list[tuple[str, str]]:
    """(event id, body) of ``versions`` versions of ``sessions`` sessions
    ``<prefix>-<n>``, version-major: every session's version v before any
    session's v + 1, as writes arriving over time would be."""
    state = state_document(STATE_BYTES)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    out = []
    for version in range(1, versions + 1):
        for s in range(sessions):
            sid = f"{prefix}-{s}"
            out.append((f"{sid}:{version}", change_event(sid, version, state, stamp)))
    return out


def event_bodies(prefix: str, count: int) -> list[tuple[str, str]]:
    """(event id, body) for ``count`` events (a multiple of VERSIONS_PER_SESSION):
    sessions of VERSIONS_PER_SESSION versions, version-major order, so that
    consecutive events are distinct sessions."""
    if count % VERSIONS_PER_SESSION:
        raise ValueError(f"count must be a multiple of {VERSIONS_PER_SESSION}")
    return version_major_bodies(prefix, count // VERSIONS_PER_SESSION, VERSIONS_PER_SESSION)


# The DLQ is never used by the bench's consumers (no poison); its URL only has to exist.
UNUSED_DLQ_URL = "http://127.0.0.1:4566/000000000000/sessionsync-bench-unused-dlq"


def install_consumer(dsn: str, redis_url: str, aws_endpoint_url: str | None = None) -> Any:
    """The app's ``persist_changes`` handler, its runtime set up (afresh) for
    the bench's database and Redis."""
    runtime.reset()
    runtime.install(settings=Settings(database_url=dsn, redis_url=redis_url, dlq_url=UNUSED_DLQ_URL,
                                      aws_endpoint_url=aws_endpoint_url))
    return import_app().persist_changes


def _handler_run(ctx: BenchContext, handler: Any, conn: Any, batch: int, count: int
                 ) -> dict[str, Any]:
    prefix = f"{ctx.session_prefix('consumer')}-b{batch}"
    bodies = event_bodies(prefix, count)
    events = sqs_batches(bodies, batch)
    context = LambdaContext(timeout_ms=30_000)
    durations = []
    clock = time.perf_counter_ns
    try:
        started = clock()
        for event in events:
            t0 = clock()
            response = handler(event, context)
            durations.append(clock() - t0)
            if response["batchItemFailures"]:
                raise AssertionError(f"batch item failures: {response['batchItemFailures'][:3]}")
        elapsed_s = (clock() - started) / 1e9
        check = verify_persisted(conn, prefix, bodies)
    finally:
        delete_rows(conn, prefix)
    return {"batch_size": batch, "events": len(bodies), "batches": len(events),
            "seconds": round(elapsed_s, 3),
            "events_per_second": round(len(bodies) / elapsed_s, 1),
            "batch_latency_ms": summarize_ns(durations, "ms"), **check}


def _worker_run(ctx: BenchContext, handler: Any, conn: Any, count: int) -> dict[str, Any]:
    """LocalStack receive -> the same handler -> DeleteMessageBatch (the local worker)."""
    from sessionsync.worker import Worker

    if why_not := localstack_sqs_unavailable(ctx.aws_endpoint_url):
        return {"skipped": why_not}
    prefix = f"{ctx.session_prefix('consumer')}-worker"
    bodies = event_bodies(prefix, count)
    try:
        with local_queue(ctx, "consumer") as (client, url):
            for i in range(0, len(bodies), 10):  # untimed: fill the queue
                client.send_message_batch(QueueUrl=url, Entries=[
                    {"Id": str(j), "MessageBody": body,
                     "MessageAttributes": {"event_id": {"DataType": "String", "StringValue": eid}}}
                    for j, (eid, body) in enumerate(bodies[i:i + 10])])
            worker = Worker(client, url, lambda event: handler(event, LambdaContext()),
                            batch_size=10, wait_seconds=1, visibility_timeout=60, retry_delay=0)
            worker.queue_arn()  # looked up once per worker, not per batch
            received = deleted = 0
            started = time.perf_counter()
            deadline = time.monotonic() + 300
            while deleted < len(bodies) and time.monotonic() < deadline:
                polled = worker.poll_once()
                received += polled.received
                deleted += polled.deleted
            elapsed = time.perf_counter() - started
        check = verify_persisted(conn, prefix, bodies)
    finally:
        delete_rows(conn, prefix)
    return {"batch_size": 10, "events": len(bodies), "received": received,
            "deleted": deleted, "seconds": round(elapsed, 3),
            "events_per_second": round(len(bodies) / elapsed, 1), **check,
            "notes": "LocalStack's SQS costs far more per call than the real service; this "
                     "bounds the local worker, not the Lambda consumer"}


def run(ctx: BenchContext) -> dict[str, Any]:
    from chalicelib.adapters.postgres import connection

    dsn = ctx.migrated_dsn()
    handler = install_consumer(dsn, ctx.redis_url, ctx.aws_endpoint_url or "http://127.0.0.1:4566")
    count = ctx.profile.consumer_events - ctx.profile.consumer_events % VERSIONS_PER_SESSION
    with connection.connect(dsn) as conn:
        try:
            server = {name: conn.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
                      for name in ("server_version", "synchronous_commit", "fsync")}
            # warm up: the handler's connection, its imports, the server's plans
            _handler_run(ctx, handler, conn, 10, 200)
            runs = []
            for batch in BATCH_SIZES:
                events = count // 5 if batch == 1 else count  # one round trip per event is slow
                events = max(batch * VERSIONS_PER_SESSION, events - events % (batch * VERSIONS_PER_SESSION))
                runs.append(_handler_run(ctx, handler, conn, batch, events))
            worker_events = max(100, min(2000, count // 5))
            worker = _worker_run(ctx, handler, conn, worker_events - worker_events % VERSIONS_PER_SESSION)
        finally:
            runtime.reset()
    return {
        "postgresql": server,
        "database": dsn.rsplit("/", 1)[-1],
        **(ctx.provisioned or {}),
        "state_bytes": STATE_BYTES,
        "handler": runs,
        "worker_with_localstack": worker,
        "notes": "events_per_second = events / wall time of the handler calls (one process, one "
                 "connection, commit settings as in 'postgresql'); SQS receive/delete "
                 "excluded, as the event source mapping does them outside the function.",
    }
