"""``sessionsync dlq list`` / ``dlq redrive`` on LocalStack SQS, and the
whole story on the real pipeline: a change that cannot be persisted goes
to the DLQ, the cause is fixed, the redrive brings it back, it persists."""
from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
import pytest
from psycopg import sql

from chalicelib.config import Settings
from chalicelib.domain.validation import CreateRequest, UpdateRequest
from chalicelib.service.sessions import SessionService
from sessionsync import dlq
from tests.support.constants import LOCALSTACK_URL, REDIS_TEST_URL, TEST_CHANNEL
from tests.support.ops import cli_env, run_cli
from tests.support.pipeline import event_body, wait_until

CHECK_VIOLATION = {"error_class": "PermanentPersistenceError", "error_code": "23514",
                   "sqlstate": "23514", "constraint": "sync_events_version_positive",
                   "error_message": 'new row violates check constraint "sync_events_version_positive"'}
NOT_JSON = {"error_class": "MalformedMessage", "error_code": "invalid_json",
            "error_message": "the message body is not JSON"}


def send(sqs, url: str, body: str, attributes: dict[str, str] | None = None) -> None:
    sqs.send_message(QueueUrl=url, MessageBody=body, MessageAttributes={
        name: {"DataType": "String", "StringValue": value} for name, value in (attributes or {}).items()})


def depth(sqs, url: str) -> tuple[int, int]:
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]), int(attrs["ApproximateNumberOfMessagesNotVisible"])


def receive_all(sqs, url: str, expected: int) -> list[dict]:
    """Every message of ``url`` (consumed: for asserting what was moved)."""
    found: dict[str, dict] = {}

    def more() -> bool:
        reply = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0,
                                    VisibilityTimeout=60, MessageAttributeNames=["All"])
        for m in reply.get("Messages", []):
            found[m["MessageId"]] = m
        return len(found) >= expected
    wait_until(more, timeout=30, what=f"{expected} messages on {url}")
    return list(found.values())


@pytest.fixture
def queue_settings(queue_pair, localstack_settings) -> Settings:
    return Settings(redis_url=REDIS_TEST_URL, queue_url=queue_pair.url, dlq_url=queue_pair.dlq_url,
                    aws_endpoint_url=LOCALSTACK_URL, aws_region="us-east-1", channel=TEST_CHANNEL)


@pytest.fixture
def mixed_dlq(sqs, queue_pair) -> dict[str, list[str]]:
    """Three constraint violations, two malformed bodies and one message the
    redrive policy moved (no attributes); session ids by kind."""
    kinds: dict[str, list[str]] = {"constraint": [], "malformed": [], "exhausted": []}
    for i in range(3):
        sid = f"cv-{uuid.uuid4().hex[:6]}-{i}"
        send(sqs, queue_pair.dlq_url, event_body(sid, 1),
             {**CHECK_VIOLATION, "event_id": f"{sid}:1"})
        kinds["constraint"].append(sid)
    for _ in range(2):
        send(sqs, queue_pair.dlq_url, "{not json", NOT_JSON)
    sid = f"ex-{uuid.uuid4().hex[:6]}"
    send(sqs, queue_pair.dlq_url, event_body(sid, 1), {"event_id": f"{sid}:1"})
    kinds["exhausted"].append(sid)
    wait_until(lambda: depth(sqs, queue_pair.dlq_url)[0] == 6, timeout=30, what="6 DLQ messages")
    return kinds


def test_dlq_list_groups_the_reasons_and_leaves_every_message_in_place(
        sqs, queue_pair, queue_settings, mixed_dlq):
    result = run_cli("dlq", "list", "--format", "json", "--messages", env=cli_env(queue_settings))

    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["read"] == 6
    reasons = [(g["error_class"], g["error_code"], g["constraint"], g["count"]) for g in doc["reasons"]]
    assert reasons == [("PermanentPersistenceError", "23514", "sync_events_version_positive", 3),
                       ("MalformedMessage", "invalid_json", None, 2),
                       ("MaxReceiveCountExceeded", None, None, 1)]
    assert set(doc["reasons"][0]["session_ids"]) == set(mixed_dlq["constraint"])
    assert "violates check constraint" in doc["reasons"][0]["example_message"]
    assert {m["session_id"] for m in doc["messages"]} >= set(mixed_dlq["constraint"] + mixed_dlq["exhausted"])
    # peeked, not consumed: all six are visible again at once
    assert depth(sqs, queue_pair.dlq_url) == (6, 0)

    table = run_cli("dlq", "list", env=cli_env(queue_settings))
    assert table.returncode == 0
    assert table.stdout.splitlines()[0].split() == ["COUNT", "ERROR_CLASS", "CODE", "CONSTRAINT", "EXAMPLE"]
    assert "nothing was removed" in table.stdout


def test_dlq_redrive_with_a_filter_moves_only_the_matching_messages_without_their_old_reason(
        sqs, queue_pair, queue_settings, mixed_dlq):
    dry = run_cli("dlq", "redrive", "--constraint", "sync_events_version_positive", "--dry-run",
                  env=cli_env(queue_settings))
    assert dry.returncode == 0 and dry.stdout.startswith("would move 3 of 6 message(s)")
    assert depth(sqs, queue_pair.url) == (0, 0)

    result = run_cli("dlq", "redrive", "--constraint", "sync_events_version_positive",
                     env=cli_env(queue_settings))

    assert result.returncode == 0, result.stderr
    assert "moved 3 message(s) to the main queue, left 3 not matching" in result.stdout
    assert "moving" in result.stderr  # the progress bar
    moved = receive_all(sqs, queue_pair.url, 3)
    assert sorted(json.loads(m["Body"])["session_id"] for m in moved) == sorted(mixed_dlq["constraint"])
    for message in moved:
        attributes = message.get("MessageAttributes", {})
        assert set(attributes) == {"event_id"}  # the stale reason is gone, the event id kept
    assert depth(sqs, queue_pair.dlq_url) == (3, 0)


def test_dlq_redrive_by_session_moves_that_session_s_messages(sqs, queue_pair, mixed_dlq):
    target = mixed_dlq["exhausted"][0]
    result = dlq.redrive(sqs, queue_pair.dlq_url, queue_pair.url, match=dlq.matcher(session_id=target))
    assert (result.moved, result.skipped) == (1, 5)
    assert json.loads(receive_all(sqs, queue_pair.url, 1)[0]["Body"])["session_id"] == target


def test_dlq_redrive_without_a_filter_lets_sqs_move_everything(sqs, queue_pair, queue_settings, mixed_dlq):
    result = run_cli("dlq", "redrive", env=cli_env(queue_settings))

    assert result.returncode == 0, result.stderr
    assert "moved 6 message(s) to the main queue (SQS move task)" in result.stdout
    wait_until(lambda: depth(sqs, queue_pair.url)[0] == 6, timeout=30, what="6 messages moved")
    assert depth(sqs, queue_pair.dlq_url) == (0, 0)


def test_dlq_commands_exit_2_when_no_dlq_is_configured(queue_settings):
    env = cli_env(queue_settings)
    env["SESSION_DLQ_URL"] = env["SESSION_DLQ_NAME"] = ""
    result = run_cli("dlq", "list", env=env)
    assert result.returncode == 2
    assert "SESSION_DLQ_URL" in result.stderr


@dataclass(frozen=True)
class Constraint:
    name: str
    drop: Callable[[], None]


@pytest.fixture
def blocking_constraint(pipeline):
    """A CHECK on sync_events that rejects sessions named 'blocked-*': the
    kind of bug a bad migration ships.  Dropped after the test whatever happens."""
    name = f"ops_test_block_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pipeline.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER TABLE sync_events ADD CONSTRAINT {} "
                             "CHECK (session_id NOT LIKE 'blocked-%') NOT VALID").format(
                                 sql.Identifier(name)))

    def drop() -> None:
        with psycopg.connect(pipeline.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER TABLE sync_events DROP CONSTRAINT IF EXISTS {}").format(
                sql.Identifier(name)))
    yield Constraint(name, drop)
    drop()


def test_poison_messages_persist_after_the_cause_is_fixed_and_they_are_redriven(
        pipeline, pipeline_settings, blocking_constraint):
    service = SessionService(pipeline.store)
    run = uuid.uuid4().hex[:6]
    blocked = [f"blocked-{run}-{i}" for i in range(3)]
    good = [f"good-{run}-{i}" for i in range(2)]
    for sid in blocked + good:
        service.create(CreateRequest(sid, '{"n":1}', 600))
        service.update(UpdateRequest(sid, '{"n":2}', 1))

    pipeline.deliver()
    # the good sessions are in; each blocked change is in the DLQ with its reason
    assert pipeline.event_rows(good) == [(sid, v) for sid in sorted(good) for v in (1, 2)]
    assert pipeline.event_rows(blocked) == []
    wait_until(lambda: depth(pipeline.sqs, pipeline.queues.dlq_url)[0] == 6, timeout=30,
               what="six blocked changes in the DLQ")
    listed = json.loads(run_cli("dlq", "list", "--format", "json", env=cli_env(pipeline_settings)).stdout)
    assert [(g["error_class"], g["error_code"], g["constraint"], g["count"]) for g in listed["reasons"]] == [
        ("PermanentPersistenceError", "23514", blocking_constraint.name, 6)]

    blocking_constraint.drop()  # the fix
    result = run_cli("dlq", "redrive", "--constraint", blocking_constraint.name,
                     env=cli_env(pipeline_settings))
    assert result.returncode == 0, result.stderr
    assert "moved 6 message(s)" in result.stdout

    pipeline.drain()
    assert pipeline.event_rows(blocked) == [(sid, v) for sid in sorted(blocked) for v in (1, 2)]
    assert {sid: row[0] for sid, row in pipeline.session_rows(blocked).items()} == dict.fromkeys(blocked, 2)
    assert depth(pipeline.sqs, pipeline.queues.dlq_url) == (0, 0)


def test_queue_metrics_shows_waiting_in_flight_and_delayed_for_the_queue_and_the_dlq(
        sqs, queue_pair, queue_settings):
    for body in ("a", "b", "c"):
        send(sqs, queue_pair.url, body)
    sqs.send_message(QueueUrl=queue_pair.url, MessageBody="later", DelaySeconds=60)
    sqs.receive_message(QueueUrl=queue_pair.url, MaxNumberOfMessages=1, VisibilityTimeout=60)
    send(sqs, queue_pair.dlq_url, "dead")

    def counted():
        result = run_cli("queue-metrics", "--format", "json", env=cli_env(queue_settings))
        assert result.returncode == 0, result.stderr
        doc = json.loads(result.stdout)
        return doc if doc["queue"] == {"waiting": 2, "in_flight": 1, "delayed": 1} else None

    doc = wait_until(counted, timeout=30, what="the queue's counts")
    assert doc["dlq"] == {"waiting": 1, "in_flight": 0, "delayed": 0}
    table = run_cli("queue-metrics", env=cli_env(queue_settings)).stdout.splitlines()
    assert table[0].split() == ["QUEUE", "WAITING", "IN_FLIGHT", "DELAYED"]
    assert table[1].split() == ["queue", "2", "1", "1"] and table[2].split() == ["dlq", "1", "0", "0"]


def test_an_operator_command_waits_out_an_sqs_slower_than_a_request_s_budget(
        sqs, queue_pair, queue_settings):
    """LocalStack on a loaded machine has answered a ReceiveMessage after
    more than the request path's read timeout, twice in a row: a request
    must give up (the outbox keeps the change), an operator's command is no
    request and must wait.  Every SQS reply is held back past the request
    path's read timeout by a proxy in front of LocalStack."""
    from urllib.parse import urlsplit

    from botocore.exceptions import ReadTimeoutError

    from chalicelib.adapters import aws
    from tests.support.servers import TcpProxy

    send(sqs, queue_pair.dlq_url, "not json", NOT_JSON)
    wait_until(lambda: depth(sqs, queue_pair.dlq_url)[0] == 1, timeout=30, what="the DLQ message")
    endpoint = urlsplit(LOCALSTACK_URL)
    proxy = TcpProxy(endpoint.port or 80, endpoint.hostname or "127.0.0.1")
    try:
        slow = f"http://127.0.0.1:{proxy.port}"
        proxy.reply_delay = aws.REQUEST_BUDGET.read_timeout + 1.0
        # the request path's client (the service's, the pipeline functions') gives up
        request_client = aws.client("sqs", Settings(aws_endpoint_url=slow, aws_region="us-east-1"))
        with pytest.raises(ReadTimeoutError):
            request_client.get_queue_attributes(QueueUrl=queue_pair.dlq_url, AttributeNames=["All"])
        # the operator's command, on the same slow SQS, waits and answers
        settings = Settings(redis_url=REDIS_TEST_URL, queue_url=queue_pair.url, dlq_url=queue_pair.dlq_url,
                            aws_endpoint_url=slow, aws_region="us-east-1", channel=TEST_CHANNEL)
        result = run_cli("dlq", "list", "--format", "json", env=cli_env(settings), timeout=120)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["read"] == 1
    finally:
        proxy.close()
    assert depth(sqs, queue_pair.dlq_url) == (1, 0)  # peeked, left in place
