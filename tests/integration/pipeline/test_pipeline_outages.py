"""Guarantee 2 across failures: PostgreSQL down mid-load, SQS unreachable,
and the process dying between the Redis write and the SQS send.  The shared
PostgreSQL and LocalStack are never stopped: the database outage uses a
throwaway server, the SQS outage a client whose endpoint is a closed port."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import threading
import time
import uuid

import pytest
from chalice.test import Client

from app import app
from chalicelib import runtime
from chalicelib.adapters.postgres.database import Database
from chalicelib.domain.validation import CreateRequest, UpdateRequest
from chalicelib.pipeline.outbox import OutboxRelay
from chalicelib.pipeline.producer import SqsProducer
from chalicelib.service.sessions import SessionService
from sessionsync import provisioning
from tests.support.constants import API_KEY
from tests.support.pipeline import Pipeline, event_body, outbox_entries_of, wait_until
from tests.support.servers import free_port

pytestmark = [pytest.mark.localstack, pytest.mark.slow]

HEADERS = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
OUTAGE_SECONDS = 20


def test_postgresql_stopped_for_twenty_seconds_mid_load_loses_nothing_and_dead_letters_nothing(
        pipeline, throwaway_postgres):
    provisioning.migrate(throwaway_postgres.dsn())
    db = Database.from_dsn(throwaway_postgres.dsn())
    line = Pipeline(pipeline.sqs, pipeline.queues, pipeline.store, db, throwaway_postgres.dsn())
    service = SessionService(line.store)
    sessions = [f"pg-outage-{uuid.uuid4().hex[:8]}-{i}" for i in range(20)]
    acknowledged: set[tuple[str, int]] = set()
    versions: dict[str, int] = {}
    stop_writing, stop_worker = threading.Event(), threading.Event()

    def write() -> None:
        for sid in sessions:
            service.create(CreateRequest(sid, '{"n":0}', 600))
            versions[sid] = 1
            acknowledged.add((sid, 1))
        i = 0
        while not stop_writing.is_set():
            sid = sessions[i % len(sessions)]
            session = service.update(UpdateRequest(sid, json.dumps({"n": i}), versions[sid]))
            versions[sid] = session.version
            acknowledged.add((sid, session.version))
            i += 1
            time.sleep(0.04)

    writer = threading.Thread(target=write, daemon=True)
    worker = line.run_worker_in_thread(stop_worker)
    writer.start()
    try:
        # mid-load: the consumer is persisting when the server goes
        wait_until(lambda: len(line.event_rows(sessions)) >= len(sessions), timeout=60,
                   what="the first rows before the outage")
        throwaway_postgres.stop()  # fast shutdown: sessions get 57P01, then connections are refused
        stopped_at = time.monotonic()
        time.sleep(OUTAGE_SECONDS)  # the outage itself, not a wait for something
        retried_during_outage = line.totals()["retry"]
        throwaway_postgres.start()
        down_for = time.monotonic() - stopped_at
        # the load goes on until the consumer is persisting again
        inserted = line.totals()["inserted"]
        wait_until(lambda: line.totals()["inserted"] > inserted, timeout=60,
                   what="rows persisted after the restart")
        stop_writing.set()
        writer.join(10)
        assert not writer.is_alive()
        wait_until(lambda: len(line.event_rows(sessions)) >= len(acknowledged), timeout=90,
                   what=f"{len(acknowledged)} rows after the restart")
        line.drain(timeout=60)
    finally:
        stop_writing.set()
        stop_worker.set()
        worker.join(5)
        db.close()

    assert down_for >= OUTAGE_SECONDS
    assert retried_during_outage > 0, "the outage did not hit the consumer"
    rows = line.event_rows(sessions)
    assert len(rows) == len(acknowledged) and set(rows) == acknowledged
    assert {sid: row[0] for sid, row in line.session_rows(sessions).items()} == versions
    assert line.dlq_messages() == []
    assert line.totals()["dead_lettered"] == 0


def test_writes_succeed_while_sqs_is_unreachable_and_the_relay_delivers_them_afterwards(
        pipeline, pipeline_settings, use_settings):
    # The app's SQS client points at a closed loopback port: every send fails
    # (connection refused), exactly as with SQS down, without stopping LocalStack.
    use_settings(dataclasses.replace(pipeline_settings,
                                     aws_endpoint_url=f"http://127.0.0.1:{free_port()}"))
    sessions = [f"sqs-down-{uuid.uuid4().hex[:8]}-{i}" for i in range(10)]
    acknowledged = set()
    slowest = 0.0
    producer = runtime.producer()  # the request path's, as the app builds it
    attempts = []
    producer.sqs.meta.events.register("before-send.sqs.SendMessage", lambda **_: attempts.append(1))
    now = 1000.0
    producer.clock = lambda: now  # the pause cannot run out mid-test on a slow machine
    with Client(app, stage_name="local") as client:
        for sid in sessions:
            for version in range(1, 7):
                start = time.perf_counter()
                if version == 1:
                    reply = client.http.post("/sessions", headers=HEADERS, body=json.dumps(
                        {"session_id": sid, "state": {"v": 1}}))
                else:
                    reply = client.http.put(f"/sessions/{sid}", headers=HEADERS, body=json.dumps(
                        {"state": {"v": version}, "expected_version": version - 1}))
                slowest = max(slowest, time.perf_counter() - start)
                assert reply.status_code in (200, 201), reply.body
                acknowledged.add((sid, version))

    # one failed attempt, then inline sends paused: no write waited on SQS again
    assert len(attempts) == 1, attempts
    assert slowest < 5.0, f"a write took {slowest:.2f}s while SQS was down"
    mine = sorted(acknowledged)
    assert outbox_entries_of(pipeline.store, sessions) == [f"{sid}:{v}" for sid, v in mine]
    assert pipeline.queue_depth(pipeline.queues.url) == (0, 0)
    # a relay that still cannot reach SQS keeps everything for later
    broken = OutboxRelay(pipeline.store, SqsProducer(
        _client_to_closed_port(pipeline_settings), pipeline.queues.url, pipeline.store), age_seconds=0)
    assert broken.run_once().sent == 0
    assert outbox_entries_of(pipeline.store, sessions) == [f"{sid}:{v}" for sid, v in mine]

    pipeline.relay.drain(budget_seconds=60)  # SQS is back (the real endpoint)
    pipeline.drain(timeout=60)

    assert outbox_entries_of(pipeline.store, sessions) == []
    rows = pipeline.event_rows(sessions)
    assert len(rows) == 60 and set(rows) == acknowledged
    assert {sid: row[0] for sid, row in pipeline.session_rows(sessions).items()} == dict.fromkeys(sessions, 6)


def _client_to_closed_port(settings):
    from chalicelib.adapters import aws
    return aws.client("sqs", dataclasses.replace(
        settings, aws_endpoint_url=f"http://127.0.0.1:{free_port()}"))


# Runs in a child process: the real SessionService writes to Redis (the Lua
# script records the outbox entry), then the process dies where the SQS send
# would start, as a Lambda killed by its timeout or an OOM would.
_DIE_BEFORE_SQS = """
import os, sys
import redis
from chalicelib.service.sessions import SessionService
from chalicelib.adapters.redis.store import SessionStore
from chalicelib.domain.validation import CreateRequest, UpdateRequest

class DiesBeforeSqs:
    def publish(self, result):
        print(result.event_id, flush=True)
        os._exit(137)

url, sid, step = sys.argv[1:4]
service = SessionService(SessionStore(redis.Redis.from_url(url)), publisher=DiesBeforeSqs())
if step == "1":
    service.create(CreateRequest(sid, '{"step":1}', 600))
else:
    service.update(UpdateRequest(sid, '{"step":%s}' % step, int(step) - 1))
print("survived", flush=True)
"""


def test_a_process_that_dies_between_the_redis_write_and_sqs_is_covered_by_the_relay(
        pipeline, pipeline_redis):
    sid = f"died-{uuid.uuid4().hex[:8]}"
    for step in ("1", "2"):
        child = subprocess.run([sys.executable, "-c", _DIE_BEFORE_SQS, pipeline_redis.url, sid, step],
                               capture_output=True, text=True, timeout=30)
        assert child.returncode == 137, child.stderr
        assert child.stdout.split() == [f"{sid}:{step}"]

    assert pipeline.store.get(sid).version == 2  # acknowledged by Redis
    assert pipeline.queue_depth(pipeline.queues.url) == (0, 0)  # never reached SQS
    young = OutboxRelay(pipeline.store, pipeline.producer, age_seconds=60)
    young.run_once()  # entries younger than the age are left to the request
    assert outbox_entries_of(pipeline.store, [sid]) == [f"{sid}:1", f"{sid}:2"]

    pipeline.relay.drain(budget_seconds=60)
    pipeline.drain(timeout=60)

    assert pipeline.event_rows([sid]) == [(sid, 1), (sid, 2)]
    assert pipeline.session_rows([sid]) == {sid: (2, {"step": 2}, False)}
    assert outbox_entries_of(pipeline.store, [sid]) == []


_DIE_AFTER_COMMIT = r"""
import os, sys
import boto3
from chalicelib.pipeline.consumer import Consumer, SqsRecordSource
from chalicelib.pipeline.dead_letters import DeadLetterQueue
from chalicelib.adapters.postgres.database import Database
from sessionsync.worker import Worker

queue_url, dlq_url, dsn, endpoint = sys.argv[1:5]
sqs = boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1",
                   aws_access_key_id="test", aws_secret_access_key="test")
consumer = Consumer(Database.from_dsn(dsn), DeadLetterQueue(sqs, dlq_url), SqsRecordSource(sqs, queue_url))

def handler(event):
    response = consumer.handle(event)           # committed in PostgreSQL
    print(len(event["Records"]), len(response["batchItemFailures"]), flush=True)
    os._exit(137)                               # ... and the worker dies before deleting

Worker(sqs, queue_url, handler, wait_seconds=5, visibility_timeout=2).poll_once()
"""


def test_a_consumer_that_dies_after_its_commit_leaves_exactly_one_row_per_version(pipeline):
    """Timeline: the batch is committed, the process dies before the SQS
    delete, SQS redelivers after the visibility timeout, the next consumer
    finds every (session, version) already there: no extra row, no DLQ."""
    sid = f"crash-{uuid.uuid4().hex[:8]}"
    pipeline.send_bodies([event_body(sid, v) for v in range(1, 11)])

    child = subprocess.run(
        [sys.executable, "-c", _DIE_AFTER_COMMIT, pipeline.queues.url, pipeline.queues.dlq_url,
         pipeline.dsn, pipeline.sqs.meta.endpoint_url],
        capture_output=True, text=True, timeout=60)
    assert child.returncode == 137, child.stderr
    # stdout also carries the consumer's EMF metric lines: ours is the last
    persisted, failed = map(int, child.stdout.strip().splitlines()[-1].split())
    assert persisted >= 1 and failed == 0
    assert len(pipeline.event_rows([sid])) == persisted  # committed before the crash

    pipeline.drain(timeout=60)  # the undeleted batch reappears after 2 s

    assert pipeline.event_rows([sid]) == [(sid, v) for v in range(1, 11)]
    assert pipeline.session_rows([sid])[sid][0] == 10
    assert pipeline.totals()["duplicates"] >= persisted
    assert pipeline.dlq_messages() == []
