"""Guarantee 2 across failures: PostgreSQL down mid-load, SQS unreachable,
and the relay dying between SQS taking a batch and its outbox ack.  The shared
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
import redis
from chalice.test import Client

from app import app
from chalicelib import runtime
from chalicelib.adapters.postgres.database import Database
from chalicelib.adapters.redis.store import SessionStore
from chalicelib.domain.validation import CreateRequest, UpdateRequest
from chalicelib.pipeline.outbox import OutboxRelay
from chalicelib.pipeline.producer import SqsProducer
from chalicelib.service.sessions import SessionService
from sessionsync import provisioning
from tests.support.constants import API_KEY
from tests.support.pipeline import Pipeline, outbox_entries_of, wait_until
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
    relay = line.run_relay_in_thread(stop_worker)
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
        relay.join(5)
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
    # The app's SQS endpoint is a closed loopback port: every send would fail
    # (connection refused), exactly as with SQS down, without stopping LocalStack.
    use_settings(dataclasses.replace(pipeline_settings,
                                     aws_endpoint_url=f"http://127.0.0.1:{free_port()}"))
    sessions = [f"sqs-down-{uuid.uuid4().hex[:8]}-{i}" for i in range(10)]
    acknowledged = set()
    slowest = 0.0
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

    # no write tried SQS: the relay is its only client
    assert "sqs" not in runtime._cache and "relay_producer" not in runtime._cache
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


# Runs in a child process: the relay sends the outbox's entries to SQS, and
# the process dies once SQS took them, before their outbox entries are acked
# (a Lambda killed by its timeout, an OOM).
_DIES_BEFORE_THE_ACK = """
import os, sys
import boto3, redis
from chalicelib.adapters.redis.store import SessionStore
from chalicelib.pipeline.outbox import OutboxRelay
from chalicelib.pipeline.producer import SqsProducer

class DiesBeforeTheAck(SqsProducer):
    def _ack(self, event_ids):
        print(*event_ids, flush=True)
        os._exit(137)

url, queue_url, endpoint = sys.argv[1:4]
store = SessionStore(redis.Redis.from_url(url))
sqs = boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1")
OutboxRelay(store, DiesBeforeTheAck(sqs, queue_url, store), age_seconds=0).drain(budget_seconds=30)
print("survived", flush=True)
"""


def test_a_relay_that_dies_after_sqs_took_a_batch_before_its_ack_leaves_a_duplicate_persisted_once(
        pipeline, throwaway_redis, localstack_settings):
    # a Redis of the test's own: its outbox holds this test's entries only,
    # so the relay's first batch (the one it dies after) is theirs
    store = SessionStore(redis.Redis.from_url(throwaway_redis.url, socket_timeout=5))
    sid = f"died-{uuid.uuid4().hex[:8]}"
    service = SessionService(store)
    service.create(CreateRequest(sid, '{"step":1}', 600))
    service.update(UpdateRequest(sid, '{"step":2}', 1))
    child = subprocess.run([sys.executable, "-c", _DIES_BEFORE_THE_ACK, throwaway_redis.url,
                            pipeline.queues.url, localstack_settings.aws_endpoint_url],
                           capture_output=True, text=True, timeout=60)
    assert child.returncode == 137, child.stderr
    assert sorted(child.stdout.split()) == [f"{sid}:1", f"{sid}:2"]  # in SQS, not acked
    assert outbox_entries_of(store, [sid]) == [f"{sid}:1", f"{sid}:2"]

    # the next relay sends them again; the worker persists them
    OutboxRelay(store, SqsProducer(pipeline.sqs, pipeline.queues.url, store), age_seconds=0).drain(
        budget_seconds=60)
    pipeline.drain(timeout=60)

    assert pipeline.event_rows([sid]) == [(sid, 1), (sid, 2)]  # each once, duplicates skipped
    assert pipeline.session_rows([sid]) == {sid: (2, {"step": 2}, False)}
    assert outbox_entries_of(store, [sid]) == []
    store.client.close()
