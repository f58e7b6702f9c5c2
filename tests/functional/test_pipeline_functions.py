"""app.py's pipeline functions invoked as Lambda would invoke them (the
Chalice test client), against real PostgreSQL and LocalStack."""
from __future__ import annotations

import dataclasses
import uuid

import pytest
from chalice.test import Client

from app import app
from chalicelib.pipeline.consumer import BatchIncomplete
from tests.support.pipeline import event_body, outbox_entries_of
from tests.support.servers import free_port

pytestmark = pytest.mark.localstack


def _sqs_event(client, bodies):
    event = client.events.generate_sqs_event(message_bodies=bodies, queue_name="sessionsync-events")
    for i, record in enumerate(event["Records"]):
        record["messageId"] = f"m-{i}-{uuid.uuid4().hex[:6]}"  # chalice gives them all one id
    return event


def _ids(event, *indexes):
    return [event["Records"][i]["messageId"] for i in indexes]


def _received_event(pipeline, bodies):
    """``bodies`` sent to the real queue and received, as Lambda's event
    (real receipt handles: the handler's own deletes are real)."""
    from sessionsync.worker import lambda_record
    pipeline.send_bodies(bodies)
    arn = pipeline.sqs.get_queue_attributes(QueueUrl=pipeline.queues.url,
                                            AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    messages: dict[str, dict] = {}
    for _ in range(20):
        reply = pipeline.sqs.receive_message(QueueUrl=pipeline.queues.url, MaxNumberOfMessages=10,
                                             VisibilityTimeout=60, WaitTimeSeconds=1,
                                             MessageSystemAttributeNames=["All"])
        messages.update((m["MessageId"], m) for m in reply.get("Messages", []))
        if len(messages) == len(bodies):
            break
    order = {body: i for i, body in enumerate(bodies)}
    records = [lambda_record(m, queue_arn=arn, region="us-east-1")
               for m in sorted(messages.values(), key=lambda m: order[m["Body"]])]
    assert len(records) == len(bodies)
    return {"Records": records}


def test_the_sqs_handler_persists_a_batch_and_reports_no_failures(pipeline, pipeline_settings, use_settings):
    use_settings(pipeline_settings)
    sid = f"fn-{uuid.uuid4().hex[:8]}"
    with Client(app, stage_name="local") as client:
        event = _sqs_event(client, [event_body(sid, v) for v in range(1, 11)])
        first = client.lambda_.invoke("persist_changes", event).payload
        again = client.lambda_.invoke("persist_changes", event).payload  # redelivered

    assert first == again == {"batchItemFailures": []}
    assert pipeline.event_rows([sid]) == [(sid, v) for v in range(1, 11)]


def test_the_sqs_handler_dead_letters_poison_without_failing_the_batch(
        pipeline, pipeline_settings, use_settings):
    use_settings(pipeline_settings)
    sid = f"fn-{uuid.uuid4().hex[:8]}"
    bodies = [event_body(sid, 1), "not json", '{"schema_version": 2}', event_body(sid, 0),
              event_body(sid, 2)]
    with Client(app, stage_name="local") as client:
        event = _sqs_event(client, bodies)
        reply = client.lambda_.invoke("persist_changes", event).payload

    assert reply == {"batchItemFailures": []}
    assert pipeline.event_rows([sid]) == [(sid, 1), (sid, 2)]
    dead = {m["original_message_id"]: m for m in pipeline.dlq_messages(expected=3)}
    assert set(dead) == set(_ids(event, 1, 2, 3))
    assert dead[_ids(event, 1)[0]]["error_code"] == "invalid_json"
    assert dead[_ids(event, 2)[0]]["error_code"] == "unsupported_schema"
    assert dead[_ids(event, 3)[0]]["constraint"] == "sync_events_version_positive"
    assert all(m["source_queue"].endswith(":sessionsync-events") for m in dead.values())


def test_poison_that_cannot_reach_the_dlq_stays_on_the_queue_alone(
        pipeline, pipeline_settings, use_settings):
    use_settings(dataclasses.replace(
        pipeline_settings, dlq_url=pipeline.queues.dlq_url.rsplit("/", 1)[0] + "/no-such-queue"))
    sid = f"fn-{uuid.uuid4().hex[:8]}"
    event = _received_event(pipeline, [event_body(sid, 1), "{broken"])
    with Client(app, stage_name="local") as client, pytest.raises(BatchIncomplete) as raised:
        client.lambda_.invoke("persist_changes", event)

    # whatever the mapping does with a failed invocation, only the poison is left
    assert raised.value.report.response() == {"batchItemFailures": [{"itemIdentifier": _ids(event, 1)[0]}]}
    assert pipeline.event_rows([sid]) == [(sid, 1)]
    assert pipeline.queue_depth(pipeline.queues.url) == (0, 1)


def test_every_record_is_reported_for_retry_when_postgresql_is_unreachable(
        pipeline, pipeline_settings, use_settings):
    use_settings(dataclasses.replace(
        pipeline_settings, database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"))
    sid = f"fn-{uuid.uuid4().hex[:8]}"
    event = _received_event(pipeline, [event_body(sid, 1), event_body(sid, 2), "{broken"])
    with Client(app, stage_name="local") as client, pytest.raises(BatchIncomplete) as raised:
        client.lambda_.invoke("persist_changes", event)

    # the poison still goes to the DLQ: its fate does not depend on the database
    assert raised.value.report.retry == _ids(event, 0, 1)
    assert [m["original_message_id"] for m in pipeline.dlq_messages(expected=1)] == _ids(event, 2)
    assert pipeline.queue_depth(pipeline.queues.url) == (0, 2)


def test_the_scheduled_relay_sends_outbox_entries_that_never_reached_sqs(
        pipeline, pipeline_settings, use_settings):
    use_settings(dataclasses.replace(pipeline_settings, outbox_relay_age=0.0))
    sid = f"fn-{uuid.uuid4().hex[:8]}"
    pipeline.store.create(sid, '{"a":1}', 600)  # written, never sent
    pipeline.store.update(sid, '{"a":2}', 1)
    with Client(app, stage_name="local") as client:
        cron = client.events.generate_cw_event(source="aws.events", detail_type="Scheduled Event",
                                               detail={}, resources=[])
        reply = client.lambda_.invoke("relay_outbox", cron).payload
    pipeline.drain(timeout=60)

    # the relay pages through the whole outbox, which other tests of this
    # module's Redis may have left entries in: judge it by these two
    assert reply["sent"] == reply["found"] >= 2
    assert pipeline.event_rows([sid]) == [(sid, 1), (sid, 2)]
    assert outbox_entries_of(pipeline.store, [sid]) == []
