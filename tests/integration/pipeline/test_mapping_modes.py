"""The consumer is safe whatever the event source mapping says.

``chalice deploy`` creates the SQS mapping without ReportBatchItemFailures
(Chalice cannot set it); ``chalice package`` + infra/chalice-merge.json sets
it.  Without it, Lambda deletes the whole batch whenever the handler returns.
The local worker plays both mappings; in both, nothing leaves the queue that
was not persisted or dead-lettered.
"""
from __future__ import annotations

import uuid

import pytest

from chalicelib.adapters.postgres.database import Database
from tests.support.pipeline import event_body
from tests.support.servers import free_port

MAPPINGS = pytest.mark.parametrize("report_batch_item_failures", [True, False],
                                   ids=["ReportBatchItemFailures", "plain-mapping"])


@MAPPINGS
def test_a_batch_that_postgresql_refuses_stays_on_the_queue_and_is_persisted_later(
        pipeline, report_batch_item_failures):
    sid = f"map-{uuid.uuid4().hex[:8]}"
    pipeline.send_bodies([event_body(sid, v) for v in range(1, 6)])
    real = pipeline.consumer.database
    pipeline.consumer.database = Database.from_dsn(f"postgresql://postgres@127.0.0.1:{free_port()}/x")
    try:
        worker = pipeline.worker(report_batch_item_failures=report_batch_item_failures,
                                 visibility_timeout=30, retry_delay=1)
        received = 0
        for _ in range(20):  # SQS may hand the 5 messages out over several receives
            received += worker.poll_once().received
            if received >= 5:
                break
        assert received >= 5
    finally:
        pipeline.consumer.database.close()
        pipeline.consumer.database = real

    visible, in_flight = pipeline.queue_depth(pipeline.queues.url)
    assert visible + in_flight == 5, "a record that was not persisted left the queue"
    assert pipeline.event_rows([sid]) == []

    pipeline.drain(timeout=60, report_batch_item_failures=report_batch_item_failures)

    assert pipeline.event_rows([sid]) == [(sid, v) for v in range(1, 6)]
    assert pipeline.dlq_messages() == []


@MAPPINGS
def test_in_a_partly_failed_batch_only_the_failed_records_come_back(pipeline, report_batch_item_failures):
    """Poison whose DLQ send fails must stay; the persisted records must not
    come back (they would only be duplicates, but the mapping must not
    decide by the response alone)."""
    sid = f"map-{uuid.uuid4().hex[:8]}"
    pipeline.send_bodies([event_body(sid, 1), "not json at all", event_body(sid, 2)])
    pipeline.consumer.dead_letters.queue_url = pipeline.queues.dlq_url + "-missing"
    worker = pipeline.worker(report_batch_item_failures=report_batch_item_failures,
                             visibility_timeout=30, retry_delay=30)

    for _ in range(20):
        worker.poll_once()
        if len(pipeline.event_rows([sid])) == 2:
            break

    assert pipeline.event_rows([sid]) == [(sid, 1), (sid, 2)]
    visible, in_flight = pipeline.queue_depth(pipeline.queues.url)
    assert (visible, in_flight) == (0, 1), "only the poison that could not be dead-lettered stays"
