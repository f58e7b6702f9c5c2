"""One whole sessionsync, all real, wired for fault injection.

Redis (a server of the run's own, or a primary + replica behind a proxy),
SQS on LocalStack behind a proxy (so that it can hang or go away), a
PostgreSQL database, consumers (threads playing the event source mapping,
with or without ReportBatchItemFailures), the outbox relay, and a Pub/Sub
listener.  Everything the run builds it stops (``close``); every loop is
bounded.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from chalicelib.adapters import aws
from chalicelib.adapters.postgres.database import Database
from chalicelib.adapters.redis.client import connect_redis
from chalicelib.adapters.redis.keys import outbox_keys
from chalicelib.adapters.redis.lease import RelayLease
from chalicelib.adapters.redis.store import SessionStore
from chalicelib.adapters.redis.subscription import Subscription
from chalicelib.config import Settings
from chalicelib.pipeline.consumer import Consumer, SqsRecordSource
from chalicelib.pipeline.dead_letters import DeadLetterQueue
from chalicelib.pipeline.outbox import LEASE_POLL_SECONDS, OutboxRelay
from chalicelib.pipeline.producer import SqsProducer
from chalicelib.service.sessions import SessionService
from sessionsync.local_pipeline import run_relay_schedule
from sessionsync.provisioning import QueuePair
from sessionsync.redis_views import subscribe
from sessionsync.worker import Worker
from tests.chaos.history import Observed
from tests.support.servers import TcpProxy, free_port


class ReportCollector(logging.Handler):
    """Collects the error reports the system makes about losses it detected."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append({"logger": record.name, "message": record.getMessage(),
                             "epoch": getattr(record, "epoch", None)})


def _identity(event_json: str) -> tuple[str, int, str]:
    event = json.loads(event_json)
    return event["session_id"], event["version"], json.dumps(event.get("state"), sort_keys=True)


class _Recorded(SqsProducer):
    """The producer, remembering what SQS accepted: an acknowledged change
    whose event never got there lived only in Redis's outbox, and a failover
    that loses it is the documented limit, not a silent loss."""

    def __init__(self, sqs: Any, queue_url: str, store: SessionStore,
                 accepted: set[tuple[str, int, str]]) -> None:
        super().__init__(sqs, queue_url, store)
        self.accepted = accepted

    def send_many(self, events: Iterable[tuple[str, str]]) -> list[str]:
        events = list(events)
        sent = super().send_many(events)
        bodies = dict(events)
        self.accepted.update(_identity(bodies[event_id]) for event_id in sent)
        return sent


@dataclass
class ChaosStack:
    redis_url: str
    pg_dsn: str
    localstack_url: str
    queues: QueuePair
    channel: str
    #: the mapping played by the consumers
    report_batch_item_failures: bool = True
    consumers: int = 1
    #: the relay's sweeps send entries older than this (its wake-ups, the rest)
    relay_age: float = 0.5
    #: relays at once, each run as its schedule runs it (a run every
    #: ``relay_period`` seconds, handing over through the lease)
    relays: int = 1
    relay_period: float = 60.0
    #: a relay that died is taken over after this
    relay_lease: float = 2.0
    #: longer than the pipeline's lag under the workload (see Workload.think_seconds)
    settle_seconds: float = 5.0
    #: ``redis_url`` names a seed node of a Redis Cluster (REDIS_CLUSTER)
    redis_cluster: bool = False
    _threads: list[threading.Thread] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    published: list[dict[str, Any]] = field(default_factory=list)
    #: (session id, version, state) of every event SQS accepted (an answer
    #: seen; a send that timed out may have been accepted too)
    accepted: set[tuple[str, int, str]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.sqs_proxy = TcpProxy(int(self.localstack_url.rsplit(":", 1)[1]))
        proxied = Settings(aws_endpoint_url=f"http://127.0.0.1:{self.sqs_proxy.port}",
                           aws_region="us-east-1")
        self.sqs = aws.client("sqs", proxied, connect_timeout=1.0, read_timeout=3.0, attempts=2)
        self.direct_sqs = aws.client("sqs", Settings(aws_endpoint_url=self.localstack_url,
                                                     aws_region="us-east-1"))
        self.store = SessionStore(connect_redis(self._redis_settings()), channel=self.channel)
        self.database = Database.from_dsn(self.pg_dsn)
        self.service = SessionService(self.store, durable=self.database,
                                      settle_seconds=self.settle_seconds)
        self.reports = ReportCollector()
        logging.getLogger("sessionsync").addHandler(self.reports)

    def _redis_settings(self) -> Settings:
        return Settings(redis_url=self.redis_url, redis_cluster=self.redis_cluster)

    # -- running ------------------------------------------------------------------

    def start(self) -> ChaosStack:
        self._subscribe()
        for _ in range(self.consumers):
            self.add_consumer()
        for _ in range(self.relays):
            self.add_relay()
        return self

    def relay(self) -> OutboxRelay:
        """The relay as the scheduled function runs it: lease, wake-ups, sweeps."""
        return OutboxRelay(self.store, _Recorded(self.sqs, self.queues.url, self.store, self.accepted),
                           age_seconds=self.relay_age,
                           lease=RelayLease(self.store.client, ttl_seconds=self.relay_lease,
                                            poll_seconds=LEASE_POLL_SECONDS),
                           listen=lambda: Subscription(self.store.client, self.channel))

    def add_relay(self, stop: threading.Event | None = None) -> None:
        """A relay schedule (``run_relay_schedule``), until the stack or ``stop`` stops."""
        relay = self.relay()
        stop = stop or self._stop
        self._spawn(f"relay-{len(self._threads)}",
                    lambda: run_relay_schedule(relay, stop, period=self.relay_period))

    def add_consumer(self) -> None:
        self._spawn(f"consumer-{len(self._threads)}", self._consumer_loop)

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=f"chaos-{name}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def consumer(self) -> Consumer:
        database = Database.from_dsn(self.pg_dsn)
        return Consumer(database, DeadLetterQueue(self.sqs, self.queues.dlq_url),
                        SqsRecordSource(self.sqs, self.queues.url))

    def worker(self) -> Worker:
        return Worker(self.sqs, self.queues.url, self.consumer().handle, wait_seconds=1,
                      visibility_timeout=10, retry_delay=1.0,
                      report_batch_item_failures=self.report_batch_item_failures)

    def _consumer_loop(self) -> None:
        # a new worker after a crash, as Lambda starts a new instance
        while not self._stop.is_set():
            try:
                self.worker().run(self._stop)
            except Exception:  # the loop must survive whatever a fault does
                time.sleep(0.2)

    def _subscribe(self) -> None:
        listener = SessionStore(connect_redis(self._redis_settings()), channel=self.channel)
        ready = threading.Event()

        def listen() -> None:
            while not self._stop.is_set():
                try:
                    with subscribe(listener, timeout=0.2) as events:
                        ready.set()
                        for event in events:
                            if self._stop.is_set():
                                return
                            if event is not None:
                                self.published.append(event)
                except Exception:  # Redis restarting or failing over: subscribe again
                    time.sleep(0.1)
        self._spawn("pubsub", listen)
        assert ready.wait(10), "no Pub/Sub subscription"

    # -- SQS faults --------------------------------------------------------------------

    def sqs_down(self) -> None:
        self.sqs_proxy.retarget(free_port())  # nothing listens there
        self.sqs_proxy.sever()

    def sqs_hung(self) -> None:
        self.sqs_proxy.freeze()

    def sqs_back(self) -> None:
        self.sqs_proxy.thaw()
        self.sqs_proxy.retarget(int(self.localstack_url.rsplit(":", 1)[1]))

    # -- draining and observing -----------------------------------------------------------

    def outbox_ids(self, session_ids: Iterable[str]) -> list[str]:
        from chalicelib.adapters.redis.keys import bucket_of
        ids = set(session_ids)
        found = []
        for bucket in sorted({bucket_of(s) for s in ids}):
            for eid in self.store.client.zrange(outbox_keys(bucket)[0], 0, -1):
                eid = eid.decode()
                if eid.rsplit(":", 1)[0] in ids:
                    found.append(eid)
        return found

    def queue_depth(self) -> int:
        attrs = self.direct_sqs.get_queue_attributes(QueueUrl=self.queues.url, AttributeNames=[
            "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])

    def drain(self, session_ids: Iterable[str], *, timeout: float = 120.0) -> None:
        """Wait until the outbox holds nothing of these sessions and the queue
        is empty, three checks in a row."""
        ids = list(session_ids)
        deadline = time.monotonic() + timeout
        quiet = 0
        last: Any = None
        while quiet < 3:
            if time.monotonic() > deadline:
                raise AssertionError(f"pipeline not drained within {timeout}s: {last}")
            try:
                last = (len(self.outbox_ids(ids)), self.queue_depth())
            except Exception as exc:  # a dependency still coming back
                last = repr(exc)
            quiet = quiet + 1 if last == (0, 0) else 0
            time.sleep(0.5)

    def observe(self, session_ids: Iterable[str]) -> Observed:
        ids = sorted(set(session_ids))
        with psycopg.connect(self.pg_dsn) as conn:
            rows = {(sid, int(v)): (t, s) for sid, v, t, s in conn.execute(
                "SELECT session_id, version, event_type, state FROM sync_events "
                "WHERE session_id = ANY(%s)", (ids,))}
            sessions = {sid: (int(v), bool(d)) for sid, v, d in conn.execute(
                "SELECT session_id, version, deleted FROM sync_sessions WHERE session_id = ANY(%s)",
                (ids,))}
        mine = set(ids)
        published = [e for e in self.published if e.get("session_id") in mine]
        letters = [m for m in self.dead_letters() if _session_of(m) in mine or _session_of(m) is None]
        return Observed(rows, sessions, letters, published, list(self.reports.records))

    def dead_letters(self) -> list[dict[str, Any]]:
        messages: dict[str, dict[str, Any]] = {}
        for _ in range(50):
            reply = self.direct_sqs.receive_message(
                QueueUrl=self.queues.dlq_url, MaxNumberOfMessages=10, VisibilityTimeout=60,
                WaitTimeSeconds=0, MessageAttributeNames=["All"])
            batch = reply.get("Messages", [])
            if not batch:
                break
            for m in batch:
                flat = {k: v.get("StringValue") for k, v in (m.get("MessageAttributes") or {}).items()}
                messages[m["MessageId"]] = {"body": m["Body"], **flat}
        return list(messages.values())

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)
        logging.getLogger("sessionsync").removeHandler(self.reports)
        self.sqs_proxy.close()
        self.database.close()
        self.store.client.close()


def _session_of(letter: dict[str, Any]) -> str | None:
    try:
        return json.loads(letter["body"])["session_id"]
    except (ValueError, KeyError, TypeError):
        return None


def consumer_process_main(argv: list[str]) -> None:
    """A consumer in a process of its own, for the nemesis to SIGKILL:
    ``queue_url dlq_url dsn endpoint report_batch_item_failures(1|0)``."""
    queue_url, dlq_url, dsn, endpoint, rbif = argv
    sqs = aws.client("sqs", Settings(aws_endpoint_url=endpoint, aws_region="us-east-1"))
    consumer = Consumer(Database.from_dsn(dsn), DeadLetterQueue(sqs, dlq_url),
                        SqsRecordSource(sqs, queue_url))
    worker = Worker(sqs, queue_url, consumer.handle, wait_seconds=1, visibility_timeout=10,
                    retry_delay=1.0, report_batch_item_failures=rbif == "1")
    worker.run(threading.Event())


def relay_process_main(argv: list[str]) -> None:
    """A relay in a process of its own, for the nemesis to SIGKILL:
    ``redis_url queue_url endpoint channel lease_seconds [cluster]``.  It
    runs as the scheduled function does, until killed."""
    redis_url, queue_url, endpoint, channel, lease, *cluster = argv
    store = SessionStore(connect_redis(Settings(redis_url=redis_url, redis_cluster=cluster == ["cluster"])),
                         channel=channel)
    sqs = aws.client("sqs", Settings(aws_endpoint_url=endpoint, aws_region="us-east-1"))
    relay = OutboxRelay(store, SqsProducer(sqs, queue_url, store), age_seconds=0.5,
                        lease=RelayLease(store.client, ttl_seconds=float(lease),
                                         poll_seconds=LEASE_POLL_SECONDS),
                        listen=lambda: Subscription(store.client, channel))
    run_relay_schedule(relay, threading.Event())
