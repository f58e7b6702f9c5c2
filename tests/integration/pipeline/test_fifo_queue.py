"""SESSION_QUEUE_FIFO on LocalStack: FIFO queues made by bootstrap, events
grouped by session and deduplicated by event id through the producer and
the relay, persisted in order per session, poison in the FIFO DLQ with its
reason, and a redrive that SQS cannot mistake for a duplicate."""
from __future__ import annotations

import json
import time
import uuid
from collections import defaultdict

import pytest
import redis

from chalicelib.adapters.aws import deduplication_id
from chalicelib.adapters.redis.store import SessionStore
from chalicelib.config import Settings
from sessionsync import dlq as dead_letters
from sessionsync import provisioning
from sessionsync.worker import Worker
from tests.support.pipeline import Pipeline, outbox_entries_of, wait_until

pytestmark = [pytest.mark.localstack]


@pytest.fixture
def fifo_queue_pair(sqs):
    """A FIFO main queue + FIFO DLQ with unique names, as bootstrap makes them; deleted after."""
    name = f"sessionsync-test-{uuid.uuid4().hex[:10]}.fifo"
    pair = provisioning.ensure_queues(sqs, name, provisioning.dlq_name_for(name), fifo=True)
    yield pair
    provisioning.delete_queues(sqs, pair)


@pytest.fixture
def fifo_pipeline(pipeline_redis, pg_test_dsn, sqs, fifo_queue_pair, database):
    client = redis.Redis.from_url(pipeline_redis.url, socket_timeout=5)
    yield Pipeline(sqs, fifo_queue_pair, SessionStore(client), database, pg_test_dsn, fifo=True)
    client.close()


def drain_recording(pipeline: Pipeline, *, timeout: float = 60.0) -> list[dict]:
    """Drain the main queue through the worker and the consumer; return
    every record the consumer was handed, in the order it got them."""
    seen: list[dict] = []

    def handler(event):
        seen.extend(event["Records"])
        return pipeline.handler(event)

    worker = Worker(pipeline.sqs, pipeline.queues.url, handler, wait_seconds=1)
    deadline = time.monotonic() + timeout
    while pipeline.queue_depth(pipeline.queues.url) != (0, 0):
        assert time.monotonic() < deadline, f"queue not drained within {timeout}s"
        worker.poll_once()
    return seen


def test_bootstrap_creates_fifo_queues_with_a_fifo_dlq_and_no_content_deduplication(sqs):
    name = f"sessionsync-boot-{uuid.uuid4().hex[:10]}.fifo"
    report = provisioning.bootstrap(Settings(queue_name=name, queue_fifo=True), sqs, None)
    pair = report.queues
    assert pair is not None
    try:
        assert pair.url.endswith(name) and pair.dlq_url.endswith(provisioning.dlq_name_for(name))
        for url in (pair.url, pair.dlq_url):
            attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
            assert attributes["FifoQueue"] == "true"
            assert attributes.get("ContentBasedDeduplication", "false") == "false"
        main = sqs.get_queue_attributes(QueueUrl=pair.url, AttributeNames=["RedrivePolicy"])
        assert json.loads(main["Attributes"]["RedrivePolicy"])["deadLetterTargetArn"] == pair.dlq_arn
        # converging again changes nothing and does not fail
        assert provisioning.bootstrap(Settings(queue_name=name, queue_fifo=True), sqs, None).queues == pair
    finally:
        provisioning.delete_queues(sqs, pair)


def test_writes_through_the_producer_and_the_relay_carry_the_session_as_group_and_land_in_order(
        fifo_pipeline):
    prefix = f"fifo-{uuid.uuid4().hex[:8]}"
    # one session whose event id is longer than SQS's 128 characters
    sessions = [f"{prefix}-{i}" for i in range(3)] + [prefix + "-" + "x" * (127 - len(prefix))]
    assert len(sessions[-1]) == 128
    store, producer = fifo_pipeline.store, fifo_pipeline.producer
    expected: set[tuple[str, int]] = set()
    for sid in sessions:
        # the request path: create and first update sent inline
        assert producer.publish(store.create(sid, '{"v":1}', 600))
        assert producer.publish(store.update(sid, '{"v":2}', 1))
        # the relay: two more updates left in the outbox
        store.update(sid, '{"v":3}', 2)
        store.update(sid, '{"v":4}', 3)
        expected |= {(sid, v) for v in range(1, 5)}
    fifo_pipeline.relay.drain(budget_seconds=30)
    assert outbox_entries_of(store, sessions) == []

    records = drain_recording(fifo_pipeline)

    order: dict[str, list[int]] = defaultdict(list)
    for record in records:
        event = json.loads(record["body"])
        event_id = record["messageAttributes"]["event_id"]["stringValue"]
        assert record["attributes"]["MessageGroupId"] == event["session_id"]
        assert record["attributes"]["MessageDeduplicationId"] == deduplication_id(event_id)
        order[event["session_id"]].append(event["version"])
    assert order == {sid: [1, 2, 3, 4] for sid in sessions}  # each session's events in order
    long_id = f"{sessions[-1]}:1"
    assert len(long_id) > 128 and len(deduplication_id(long_id)) == 64
    assert set(fifo_pipeline.event_rows(sessions)) == expected
    assert fifo_pipeline.session_rows(sessions) == {sid: (4, {"v": 4}, False) for sid in sessions}
    assert fifo_pipeline.dlq_messages() == []


def test_the_same_event_sent_again_within_the_window_is_dropped_by_sqs(fifo_pipeline):
    sid = f"fifo-dup-{uuid.uuid4().hex[:8]}"
    result = fifo_pipeline.store.create(sid, '{"v":1}', 600)
    assert fifo_pipeline.producer.publish(result)
    # the relay resending it (an ack that failed), and the request path again
    assert fifo_pipeline.producer.send_many([(result.event_id, result.event_json)]) == [result.event_id]
    assert fifo_pipeline.producer.publish(result)

    records = drain_recording(fifo_pipeline, timeout=30)

    assert [r["messageAttributes"]["event_id"]["stringValue"] for r in records] == [result.event_id]
    assert fifo_pipeline.totals()["inserted"] == 1 and fifo_pipeline.totals()["duplicates"] == 0
    assert fifo_pipeline.event_rows([sid]) == [(sid, 1)]


def test_a_poison_message_goes_to_the_fifo_dlq_with_its_reason(fifo_pipeline):
    sid = f"fifo-poison-{uuid.uuid4().hex[:8]}"
    reply = fifo_pipeline.sqs.send_message(
        QueueUrl=fifo_pipeline.queues.url, MessageBody='{"not": "an event"}',
        MessageGroupId=sid, MessageDeduplicationId=f"{sid}:poison")
    fifo_pipeline.drain(timeout=30)

    [letter] = fifo_pipeline.dlq_messages(expected=1)
    assert letter["body"] == '{"not": "an event"}'
    assert letter["error_class"] == "MalformedMessage"
    assert letter["original_message_id"] == reply["MessageId"]
    assert fifo_pipeline.totals()["dead_lettered"] == 1


def test_a_redrive_to_the_fifo_queue_is_not_dropped_as_a_duplicate_of_the_original_send(fifo_pipeline):
    """The event went through the queue a moment ago (its deduplication id
    used); its copy in the DLQ (as SQS's redrive policy would put it there)
    must still reach the main queue when redriven, not vanish."""
    sid = f"fifo-redrive-{uuid.uuid4().hex[:8]}"
    result = fifo_pipeline.store.create(sid, '{"v":1}', 600)
    assert fifo_pipeline.producer.publish(result)
    fifo_pipeline.drain(timeout=30)
    fifo_pipeline.sqs.send_message(
        QueueUrl=fifo_pipeline.queues.dlq_url, MessageBody=result.event_json,
        MessageAttributes={"event_id": {"DataType": "String", "StringValue": result.event_id}},
        MessageGroupId=sid, MessageDeduplicationId="dead-letter-1")

    moved = dead_letters.redrive(fifo_pipeline.sqs, fifo_pipeline.queues.dlq_url,
                                 fifo_pipeline.queues.url, timeout_seconds=30)

    assert moved.moved == 1 and moved.task_handle is None  # moved by hand, not by a move task
    [record] = drain_recording(fifo_pipeline, timeout=30)
    assert record["body"] == result.event_json
    assert record["attributes"]["MessageGroupId"] == sid
    assert fifo_pipeline.totals()["duplicates"] == 1  # the consumer's idempotence, not SQS's
    assert fifo_pipeline.dlq_messages() == []


def test_the_local_worker_retries_a_failed_fifo_message_after_changing_its_visibility(fifo_pipeline):
    sid = f"fifo-retry-{uuid.uuid4().hex[:8]}"
    assert fifo_pipeline.producer.publish(fifo_pipeline.store.create(sid, '{"v":1}', 600))
    assert fifo_pipeline.producer.publish(fifo_pipeline.store.update(sid, '{"v":2}', 1))
    calls: list[list[str]] = []

    def flaky(event):
        calls.append([json.loads(r["body"])["event_id"] for r in event["Records"]])
        if len(calls) == 1:  # the first batch fails as a whole (PostgreSQL away)
            return {"batchItemFailures": [{"itemIdentifier": r["messageId"]} for r in event["Records"]]}
        return fifo_pipeline.handler(event)

    worker = Worker(fifo_pipeline.sqs, fifo_pipeline.queues.url, flaky, wait_seconds=1, retry_delay=0.2)
    wait_until(lambda: worker.poll_once() and fifo_pipeline.event_rows([sid]) == [(sid, 1), (sid, 2)],
               timeout=30, what="both events persisted after the retry")

    assert calls[0] == [f"{sid}:1", f"{sid}:2"]  # the group's order, and again on the retry
    assert [f"{sid}:1", f"{sid}:2"] in calls[1:]
    assert fifo_pipeline.session_rows([sid])[sid][:2] == (2, {"v": 2})
