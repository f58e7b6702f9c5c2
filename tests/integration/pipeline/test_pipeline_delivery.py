"""Guarantees 2, 3 and 4 through the real pipeline: Redis -> LocalStack SQS
-> worker -> consumer -> PostgreSQL (and the DLQ)."""
from __future__ import annotations

import json
import random
import threading
import time
import uuid

import pytest
from chalice.test import Client

from app import app
from sessionsync.worker import Worker
from tests.support.constants import API_KEY
from tests.support.pipeline import event_body, outbox_entries_of, wait_until

pytestmark = [pytest.mark.localstack, pytest.mark.slow]

HEADERS = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}


def test_a_thousand_http_writes_across_fifty_sessions_land_once_each_in_postgresql(
        pipeline, pipeline_settings, use_settings):
    use_settings(pipeline_settings)
    prefix = f"e2e-{uuid.uuid4().hex[:8]}"
    sessions = [f"{prefix}-{i}" for i in range(50)]
    versions: dict[str, int] = {}
    states: dict[str, dict] = {}
    acknowledged: set[tuple[str, int]] = set()
    stop = threading.Event()
    worker = pipeline.run_worker_in_thread(stop)  # consuming while the writes go on
    # and relaying what an inline send (half a second for SQS) left behind
    relay = pipeline.run_relay_in_thread(stop)
    try:
        with Client(app, stage_name="local") as client:
            for sid in sessions:
                reply = client.http.post("/sessions", headers=HEADERS,
                                         body=json.dumps({"session_id": sid, "state": {"n": 0}}))
                assert reply.status_code == 201, reply.body
                versions[sid], states[sid] = 1, {"n": 0}
                acknowledged.add((sid, 1))
            for i in range(950):
                sid = sessions[i % 50]
                reply = client.http.put(f"/sessions/{sid}", headers=HEADERS, body=json.dumps(
                    {"state": {"n": i + 1}, "expected_version": versions[sid]}))
                assert reply.status_code == 200, reply.body
                versions[sid], states[sid] = json.loads(reply.body)["version"], {"n": i + 1}
                acknowledged.add((sid, versions[sid]))
        assert len(acknowledged) == 1000
        wait_until(lambda: len(pipeline.event_rows(sessions)) >= 1000, timeout=120,
                   what="1,000 rows in sync_events")
        pipeline.drain(timeout=60)
    finally:
        stop.set()
        worker.join(5)
        relay.join(5)

    rows = pipeline.event_rows(sessions)
    assert len(rows) == 1000 and set(rows) == acknowledged  # exactly once each
    assert pipeline.session_rows(sessions) == {
        sid: (versions[sid], states[sid], False) for sid in sessions}
    assert pipeline.dlq_messages() == []
    assert outbox_entries_of(pipeline.store, sessions) == []  # nothing left behind


def test_every_message_delivered_twice_adds_no_rows_and_nothing_to_the_dlq(pipeline):
    sid = f"dup-{uuid.uuid4().hex[:8]}"
    bodies = [pipeline.store.create(sid, '{"v":1}', 600).event_json]
    for version in range(1, 25):
        bodies.append(pipeline.store.update(sid, json.dumps({"v": version + 1}), version).event_json)
    pipeline.send_bodies(bodies + bodies)

    pipeline.drain(timeout=60)

    assert pipeline.event_rows([sid]) == [(sid, v) for v in range(1, 26)]
    assert pipeline.session_rows([sid])[sid][:2] == (25, {"v": 25})
    totals = pipeline.totals()
    assert (totals["inserted"], totals["duplicates"], totals["dead_lettered"]) == (25, 25, 0)
    assert pipeline.dlq_messages() == []


def test_versions_delivered_shuffled_leave_sync_sessions_on_the_highest(pipeline):
    sessions = [f"shuffle-{uuid.uuid4().hex[:8]}-{i}" for i in range(5)]
    bodies = []
    for sid in sessions:
        bodies.append(pipeline.store.create(sid, '{"v":1}', 600).event_json)
        for version in range(1, 20):
            bodies.append(pipeline.store.update(sid, json.dumps({"v": version + 1}), version).event_json)
    random.Random(7).shuffle(bodies)
    pipeline.send_bodies(bodies)

    pipeline.drain(timeout=60)

    assert len(pipeline.event_rows(sessions)) == 100
    assert pipeline.session_rows(sessions) == {sid: (20, {"v": 20}, False) for sid in sessions}


def test_poison_messages_go_to_the_dlq_with_their_reason_and_the_good_ones_of_the_batch_persist(pipeline):
    good = [f"good-{uuid.uuid4().hex[:8]}-{i}" for i in range(3)]
    constraint = event_body("bad id with spaces", 1)
    malformed = '{"schema_version": 1, "event_id": "oops'
    nul_sid = f"nul-{uuid.uuid4().hex[:8]}"
    nul_state = event_body(nul_sid, 1, {"text": "a\u0000b"})
    assert "\\u0000" in nul_state
    bodies = [event_body(good[0], 1), constraint, event_body(good[1], 1), malformed,
              nul_state, event_body(good[2], 1)]
    pipeline.send_bodies(bodies)

    pipeline.drain(timeout=60)

    assert pipeline.event_rows([*good, nul_sid]) == sorted((sid, 1) for sid in good)
    dead = {m["body"]: m for m in pipeline.dlq_messages(expected=3)}
    assert set(dead) == {constraint, malformed, nul_state}
    assert dead[constraint]["error_class"] == "PermanentPersistenceError"
    assert dead[constraint]["error_code"] == dead[constraint]["sqlstate"] == "23514"
    assert dead[constraint]["constraint"] == "sync_events_session_id_format"
    assert dead[constraint]["event_id"] == "bad id with spaces:1"
    assert dead[malformed]["error_class"] == "MalformedMessage"
    assert dead[malformed]["error_code"] == "invalid_json"
    assert dead[nul_state]["error_class"] == "PermanentPersistenceError"
    assert dead[nul_state]["sqlstate"] == "22P05"  # untranslatable_character
    for message in dead.values():
        assert message["error_message"] and message["original_message_id"]
        assert message["receive_count"] == "1" and message["source_queue"].endswith(
            pipeline.queues.url.rsplit("/", 1)[1])
    # dead-lettered at once and deleted from the main queue, not left to loop
    assert pipeline.queue_depth(pipeline.queues.url) == (0, 0)
    assert pipeline.totals()["retry"] == 0
    # the poison shared a batch with good messages, which were persisted anyway
    assert any(r.inserted and r.dead_lettered for r in pipeline.reports), pipeline.reports


def test_a_message_that_fails_retryably_on_every_delivery_ends_in_the_dlq_after_five_receives(pipeline):
    body = event_body(f"stuck-{uuid.uuid4().hex[:8]}", 1)
    pipeline.send_bodies([body])
    receives = []

    def always_failing(event):
        receives.extend(r["attributes"]["ApproximateReceiveCount"] for r in event["Records"])
        return {"batchItemFailures": [{"itemIdentifier": r["messageId"]} for r in event["Records"]]}

    worker = Worker(pipeline.sqs, pipeline.queues.url, always_failing, wait_seconds=0,
                    retry_delay=0.1)  # int(0.1 * 2**n) s: visible again at once
    deadline = time.monotonic() + 20
    while pipeline.queue_depth(pipeline.queues.url) != (0, 0):
        assert time.monotonic() < deadline, f"still on the main queue after {receives}"
        worker.poll_once()

    assert receives == ["1", "2", "3", "4", "5"]
    assert [m["body"] for m in pipeline.dlq_messages(expected=1)] == [body]
