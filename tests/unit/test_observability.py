"""Logs are JSON lines that carry the request id; metrics are EMF lines.

Runs the real app (chalice.test and a raw API Gateway event), real Redis
and a real PostgreSQL connection for the DEBUG step timings.
"""
from __future__ import annotations

import io
import json
import logging
import os
import uuid
from pathlib import Path
from types import SimpleNamespace

import psycopg
import pytest
import redis
from chalice.test import Client

from app import app, persist_changes
from chalicelib.adapters.redis.store import SessionStore, bucket_of, outbox_keys, session_keys
from chalicelib.domain.errors import ConcurrencyError
from chalicelib.domain.events import parse_event
from chalicelib.domain.validation import CreateRequest, UpdateRequest
from chalicelib.observability import logs, metrics, tracing
from chalicelib.service.sessions import SessionService
from tests.conftest import API_KEY, PG_TEST_ADMIN_URL, REDIS_TEST_URL, TEST_CHANNEL

PROJECT_DIR = str(Path(__file__).resolve().parents[2])
AUTH = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}


@pytest.fixture
def log_lines():
    """Every sessionsync log line, at DEBUG, parsed; logging restored after."""
    stream = io.StringIO()
    logs.configure("DEBUG", stream=stream)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    logs.configure()



def test_every_log_line_of_a_request_is_json_and_carries_that_request_s_id(
        log_lines, use_settings, app_settings, session_id):
    use_settings(app_settings)
    with Client(app, stage_name="local", project_dir=PROJECT_DIR) as client:
        created = client.http.post("/sessions", headers=AUTH,
                                   body=json.dumps({"session_id": session_id, "state": {"a": 1}}))
        fetched = client.http.get(f"/sessions/{session_id}", headers=AUTH)
    assert created.status_code == 201 and fetched.status_code == 200
    ids = [created.headers["X-Request-Id"], fetched.headers["X-Request-Id"]]
    assert ids[0] != ids[1]

    lines = log_lines()
    assert lines, "DEBUG logs each Redis step and each invocation"
    by_request = {rid: [line for line in lines if line.get("request_id") == rid] for rid in ids}
    assert all(line.get("request_id") in ids for line in lines), lines
    for request_lines in by_request.values():
        assert {line["logger"] for line in request_lines} >= {"sessionsync.redis",
                                                              "sessionsync.invocation"}
        assert all({"timestamp", "level", "logger", "message"} <= line.keys() for line in request_lines)
    post_done = next(line for line in by_request[ids[0]] if line["message"] == "invocation done")
    assert post_done["status"] == 201 and post_done["route"] == "POST /sessions"


def test_the_request_id_is_api_gateway_s_and_lambda_s_id_is_kept_beside_it(
        log_lines, use_settings, app_settings):
    use_settings(app_settings)
    event = {"resource": "/health", "path": "/health", "httpMethod": "GET", "headers": {},
             "multiValueHeaders": {}, "queryStringParameters": None,
             "multiValueQueryStringParameters": None, "pathParameters": None,
             "stageVariables": None, "body": None, "isBase64Encoded": False,
             "requestContext": {"requestId": "apigw-7f3a", "resourcePath": "/health",
                                "httpMethod": "GET", "stage": "test"}}
    context = SimpleNamespace(aws_request_id="lambda-91c2", function_name="sessionsync",
                              get_remaining_time_in_millis=lambda: 10_000)
    response = app(event, context)

    assert response["statusCode"] == 200
    assert response["headers"]["X-Request-Id"] == "apigw-7f3a"
    lines = log_lines()
    assert lines and all(line["request_id"] == "apigw-7f3a" for line in lines)
    assert all(line["aws_request_id"] == "lambda-91c2" for line in lines)


def test_an_sqs_invocation_logs_lambda_s_request_id_on_every_line(log_lines, use_settings, app_settings):
    class Consumer:
        def handle(self, event):
            logging.getLogger("sessionsync.consumer").info("batch processed", extra={"received": 1})
            return {"batchItemFailures": []}

    use_settings(app_settings, consumer=Consumer())
    event = {"Records": [{"messageId": "m-1", "receiptHandle": "r", "body": "{}", "attributes": {},
                          "messageAttributes": {}, "eventSource": "aws:sqs",
                          "eventSourceARN": "arn:aws:sqs:us-east-1:000000000000:q",
                          "awsRegion": "us-east-1", "md5OfBody": ""}]}
    context = SimpleNamespace(aws_request_id="lambda-sqs-55", function_name="persist_changes",
                              get_remaining_time_in_millis=lambda: 30_000)

    assert persist_changes(event, context) == {"batchItemFailures": []}
    line = next(line for line in log_lines() if line["message"] == "batch processed")
    assert line["request_id"] == "lambda-sqs-55" and line["received"] == 1


def test_debug_logs_each_redis_command_and_sql_statement_with_timings_but_no_values(log_lines):
    secret_state = f"state-{uuid.uuid4().hex}"
    client = tracing.instrument_redis(redis.Redis.from_url(REDIS_TEST_URL))
    conn = tracing.instrument_psycopg(psycopg.connect(PG_TEST_ADMIN_URL, autocommit=False))
    try:
        key = f"t:{uuid.uuid4().hex}"
        client.set(key, secret_state, ex=30)
        pipe = client.pipeline(transaction=False)
        pipe.get(key)
        pipe.ttl(key)
        pipe.execute()
        client.delete(key)
        conn.execute("SELECT %s::text", (secret_state,)).fetchone()
        conn.commit()
    finally:
        client.close()
        conn.close()

    lines = log_lines()
    redis_lines = [line for line in lines if line["logger"] == "sessionsync.redis"]
    sql_lines = [line for line in lines if line["logger"] == "sessionsync.sql"]
    assert [line["command"] for line in redis_lines] == ["SET", "PIPELINE", "DEL"]
    assert redis_lines[0]["key"] == key and redis_lines[1]["commands"] == 2
    assert [line["sql"] for line in sql_lines] == ["SELECT %s::text", "COMMIT"]
    assert sql_lines[0]["rows"] == 1
    assert all(isinstance(line["ms"], float) for line in redis_lines + sql_lines)
    assert secret_state not in json.dumps(lines)


def test_below_debug_the_clients_are_returned_untouched():
    logs.configure("INFO", stream=io.StringIO())
    try:
        client = redis.Redis.from_url(REDIS_TEST_URL)
        assert tracing.instrument_redis(client) is client
        assert "execute_command" not in vars(client)
        conn = psycopg.connect(PG_TEST_ADMIN_URL)
        try:
            assert tracing.instrument_psycopg(conn).cursor_factory is psycopg.Cursor
        finally:
            conn.close()
    finally:
        logs.configure()


def test_log_level_comes_from_log_level_and_a_bad_value_falls_back_to_info(monkeypatch):
    monkeypatch.setenv("LOG_LEVEL", "warning")
    assert logs.configure(stream=io.StringIO()).level == logging.WARNING
    monkeypatch.setenv("LOG_LEVEL", "chatty")
    assert logs.configure(stream=io.StringIO()).level == logging.INFO
    monkeypatch.delenv("LOG_LEVEL")
    logs.configure()


def test_an_exception_is_logged_as_json_with_its_traceback(log_lines):
    with logs.request_context("req-1"):
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("sessionsync.test").exception("it failed")
    line = log_lines()[-1]
    assert line["exception_type"] == "ValueError" and "boom" in line["exception"]
    assert line["request_id"] == "req-1" and line["level"] == "ERROR"


def test_emf_lines_parse_and_declare_their_metrics_units_and_dimensions(emf_lines):
    with logs.request_context("req-emf"):
        metrics.emit({"ConsumerBatchSize": 10, "PersistedEvents": 9, "DlqSends": 1})
    doc = emf_lines()[-1]
    directive = doc["_aws"]["CloudWatchMetrics"][0]
    assert isinstance(doc["_aws"]["Timestamp"], int)
    assert directive["Namespace"] == os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "sessionsync")
    assert directive["Dimensions"] == [["service"]]
    assert {m["Name"]: m["Unit"] for m in directive["Metrics"]} == {
        "ConsumerBatchSize": "Count", "PersistedEvents": "Count", "DlqSends": "Count"}
    assert (doc["ConsumerBatchSize"], doc["PersistedEvents"], doc["DlqSends"]) == (10, 9, 1)
    assert doc["request_id"] == "req-emf" and doc["service"]


def test_a_metric_outside_the_catalogue_or_not_a_number_is_refused(emf_lines):
    with pytest.raises(KeyError):
        metrics.emit({"Writes": 1})
    with pytest.raises(ValueError):
        metrics.emit({"WriteLatency": float("nan")})
    assert emf_lines() == []


def test_writes_conflicts_and_recovery_reads_emit_their_metrics(emf_lines, redis_single, database,
                                                                 session_id):
    store = SessionStore(redis_single, channel=TEST_CHANNEL)
    service = SessionService(store, durable=database, settle_seconds=0)
    service.create(CreateRequest(session_id, '{"n":0}', 60))
    service.update(UpdateRequest(session_id, '{"n":1}', 1))
    with pytest.raises(ConcurrencyError):
        service.update(UpdateRequest(session_id, '{"n":2}', 1))
    # the consumer persisted version 2 (its event, from the outbox), then Redis lost the key
    event = store.client.hget(outbox_keys(bucket_of(session_id))[1], f"{session_id}:2")
    assert database.apply_events([parse_event(event)]).inserted == 1
    store.client.delete(session_keys(session_id)[0])
    assert service.get(session_id).recovered

    lines = emf_lines()
    latencies = [line for line in lines if "WriteLatency" in line]
    assert [line["operation"] for line in latencies] == ["create", "update"]
    assert all(line["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["service", "operation"]]
               for line in latencies)
    assert all(line["WriteLatency"] >= 0 for line in latencies)
    conflicts = [line for line in lines if "Conflicts" in line]
    assert len(conflicts) == 1 and conflicts[0]["operation"] == "update"
    assert [line["RecoveryReads"] for line in lines if "RecoveryReads" in line] == [1]



def test_each_call_of_a_per_invocation_handler_gets_its_own_request_id(log_lines):
    log = logging.getLogger("sessionsync.consumer")
    handler = logs.per_invocation(lambda event: log.info("batch processed", extra=event))
    handler({"received": 1})
    handler({"received": 2})
    first, second = [line for line in log_lines() if line["message"] == "batch processed"]
    assert first["request_id"] and second["request_id"] and first["request_id"] != second["request_id"]
