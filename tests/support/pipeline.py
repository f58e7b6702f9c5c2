"""Helpers for the durable-pipeline tests: one object that holds a real
store (Redis), producer and queues (LocalStack SQS), database (PostgreSQL),
consumer, worker and relay, plus the queries the assertions need.

Every loop here is bounded by a timeout and raises AssertionError with what
it was waiting for.
"""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from chalicelib.adapters.postgres.database import Database
from chalicelib.adapters.redis.keys import bucket_of, outbox_keys
from chalicelib.adapters.redis.lease import RelayLease
from chalicelib.adapters.redis.store import SessionStore
from chalicelib.adapters.redis.subscription import Subscription
from chalicelib.pipeline.consumer import BatchReport, Consumer, SqsRecordSource
from chalicelib.pipeline.dead_letters import DeadLetterQueue
from chalicelib.pipeline.outbox import LEASE_POLL_SECONDS, SWEEP_SECONDS, OutboxRelay
from chalicelib.pipeline.producer import SqsProducer
from sessionsync.provisioning import QueuePair
from sessionsync.worker import Worker

CREATED_AT = "2026-11-28T16:33:30.405Z"


def event_body(session_id: str, version: int, state: Any = None, *,
               event_type: str | None = None, occurred_at: str = "2026-11-28T16:33:31.000Z") -> str:
    """A change event as the store's Lua script writes it."""
    if event_type is None:
        event_type = "session_created" if version == 1 else "session_updated"
    if state is None and event_type != "session_deleted":
        state = {"v": version}
    return json.dumps({"schema_version": 1, "event_id": f"{session_id}:{version}",
                       "event_type": event_type, "session_id": session_id, "version": version,
                       "created_at": CREATED_AT, "occurred_at": occurred_at, "ttl_seconds": 3600,
                       "state": state}, separators=(",", ":"))


def wait_until(predicate: Callable[[], Any], *, timeout: float, what: str,
               interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def outbox_entries_of(store: SessionStore, session_ids: Iterable[str]) -> list[str]:
    """Event ids of the outbox entries of these sessions, in (session, version) order.

    Reads only the buckets of the given sessions and keeps only their
    entries: a test asserts on its own entries, never on the depth of an
    outbox that other tests, or a developer's `make run`, also write to.
    """
    wanted = set(session_ids)
    found = []
    for bucket in sorted({bucket_of(sid) for sid in wanted}):
        for raw in store.client.zrange(outbox_keys(bucket)[0], 0, -1):
            event_id = raw.decode()
            sid, version = event_id.rsplit(":", 1)
            if sid in wanted:
                found.append((sid, int(version), event_id))
    return [event_id for _, _, event_id in sorted(found)]


@dataclass
class Pipeline:
    sqs: Any
    queues: QueuePair
    store: SessionStore
    database: Database
    dsn: str
    reports: list[BatchReport] = field(default_factory=list)
    #: FIFO queues (SESSION_QUEUE_FIFO): the producer and the DLQ writer send FIFO ids
    fifo: bool = False

    def __post_init__(self) -> None:
        self.producer = SqsProducer(self.sqs, self.queues.url, self.store, fifo=self.fifo)
        self.consumer = Consumer(self.database,
                                 DeadLetterQueue(self.sqs, self.queues.dlq_url, fifo=self.fifo),
                                 SqsRecordSource(self.sqs, self.queues.url))
        self.relay = OutboxRelay(self.store, self.producer, age_seconds=0)
        self._lock = threading.Lock()

    # -- consuming --------------------------------------------------------------

    def handler(self, event: dict[str, Any]) -> dict[str, Any]:
        """The consumer handler, recording each batch's report."""
        report = self.consumer.process(event["Records"])
        with self._lock:
            self.reports.append(report)
        return self.consumer.respond(event["Records"], report)

    def worker(self, **options: Any) -> Worker:
        options.setdefault("wait_seconds", 1)
        return Worker(self.sqs, self.queues.url, self.handler, **options)

    def drain(self, *, timeout: float = 60.0, **worker_options: Any) -> None:
        """Run a worker until the main queue is empty (nothing visible, nothing in flight)."""
        worker = self.worker(**worker_options)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            worker.poll_once()
            if self.queue_depth(self.queues.url) == (0, 0):
                return
        raise AssertionError(f"queue not drained within {timeout}s: {self.queue_depth(self.queues.url)}")

    def deliver(self, *, timeout: float = 60.0) -> None:
        """Relay what the outbox holds, then drain the queue: the pipeline
        catching up after writes (a write answers once committed in Redis;
        the relay ships it)."""
        self.relay.drain(budget_seconds=timeout)
        self.drain(timeout=timeout)

    def continuous_relay(self, *, lease_seconds: float = 2.0, sweep_seconds: float = SWEEP_SECONDS,
                         age_seconds: float = 1.0, sender: Any = None) -> OutboxRelay:
        """The relay as the scheduled function runs it (``serve``): lease,
        wake-ups on the store's channel, sweeps."""
        return OutboxRelay(self.store, sender or self.producer, age_seconds=age_seconds,
                           lease=RelayLease(self.store.client, ttl_seconds=lease_seconds,
                                            poll_seconds=LEASE_POLL_SECONDS),
                           listen=lambda: Subscription(self.store.client, self.store.channel),
                           sweep_seconds=sweep_seconds)

    def run_relay_in_thread(self, stop: threading.Event, **options: Any) -> threading.Thread:
        """The relay beside the writes, one run until ``stop`` (``continuous_relay``'s options)."""
        relay = self.continuous_relay(**options)
        thread = threading.Thread(target=relay.serve, kwargs={"budget_seconds": 600, "stop": stop},
                                  daemon=True)
        thread.start()
        return thread

    def run_worker_in_thread(self, stop: threading.Event, **options: Any) -> threading.Thread:
        thread = threading.Thread(target=self.worker(**options).run, args=(stop,), daemon=True)
        thread.start()
        return thread

    def totals(self) -> dict[str, int]:
        with self._lock:
            return {"inserted": sum(r.inserted for r in self.reports),
                    "duplicates": sum(r.duplicates for r in self.reports),
                    "dead_lettered": sum(r.dead_lettered for r in self.reports),
                    "retry": sum(len(r.retry) for r in self.reports)}

    # -- queues -----------------------------------------------------------------

    def send_bodies(self, bodies: Sequence[str]) -> None:
        """Put raw bodies on the main queue, 10 per SendMessageBatch call."""
        for start in range(0, len(bodies), 10):
            chunk = bodies[start:start + 10]
            reply = self.sqs.send_message_batch(QueueUrl=self.queues.url, Entries=[
                {"Id": str(i), "MessageBody": body} for i, body in enumerate(chunk)])
            assert not reply.get("Failed"), reply["Failed"]

    def queue_depth(self, url: str) -> tuple[int, int]:
        """(visible, in flight) messages."""
        attrs = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
            "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"]), int(attrs["ApproximateNumberOfMessagesNotVisible"])

    def dlq_messages(self, expected: int | None = None, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Every DLQ message, with its attributes flattened to strings."""
        messages: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout
        while True:
            reply = self.sqs.receive_message(QueueUrl=self.queues.dlq_url, MaxNumberOfMessages=10,
                                             WaitTimeSeconds=0, VisibilityTimeout=30,
                                             MessageAttributeNames=["All"],
                                             MessageSystemAttributeNames=["All"])
            for m in reply.get("Messages", []):
                messages[m["MessageId"]] = {
                    "body": m["Body"], "receive_count": m["Attributes"].get("ApproximateReceiveCount"),
                    **{k: v.get("StringValue") for k, v in (m.get("MessageAttributes") or {}).items()}}
            if not reply.get("Messages"):
                if expected is None or len(messages) >= expected or time.monotonic() >= deadline:
                    break
                time.sleep(0.1)
        return list(messages.values())

    # -- database -----------------------------------------------------------------

    def query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            return conn.execute(sql, tuple(params)).fetchall()

    def event_rows(self, session_ids: Iterable[str]) -> list[tuple[str, int]]:
        """(session_id, version) of every sync_events row of these sessions, duplicates kept."""
        return [(s, int(v)) for s, v in self.query(
            "SELECT session_id, version FROM sync_events WHERE session_id = ANY(%s) "
            "ORDER BY session_id, version", [list(session_ids)])]

    def session_rows(self, session_ids: Iterable[str]) -> dict[str, tuple[int, Any, bool]]:
        """session_id -> (version, state, deleted) from sync_sessions."""
        return {s: (int(v), state, deleted) for s, v, state, deleted in self.query(
            "SELECT session_id, version, state, deleted FROM sync_sessions WHERE session_id = ANY(%s)",
            [list(session_ids)])}
