"""Logs and metrics of the real app on real services: JSON log lines carry
the request id through chalice.test and a raw API Gateway event on the test
Redis; DEBUG times each Redis command and SQL statement on a real
PostgreSQL connection; the service's EMF metrics over Redis and PostgreSQL.
The formats alone are unit-tested in tests/unit/test_observability.py.
"""
from __future__ import annotations

import dataclasses
import io
import json
import uuid
from types import SimpleNamespace

import psycopg
import pytest
import redis

from app import app
from chalicelib.adapters.redis.keys import bucket_of, outbox_keys, session_keys
from chalicelib.adapters.redis.store import SessionStore
from chalicelib.domain.errors import ConcurrencyError
from chalicelib.domain.events import parse_event
from chalicelib.domain.keys import KeySet
from chalicelib.domain.validation import CreateRequest, UpdateRequest
from chalicelib.observability import logs, tracing
from chalicelib.service.sessions import SessionService
from tests.support.app import app_client
from tests.support.constants import PG_TEST_ADMIN_URL, REDIS_TEST_URL, TEST_CHANNEL
from tests.support.keys import make_key


def test_every_log_line_of_a_request_is_json_and_carries_that_request_s_id(
        log_lines, use_settings, app_settings, session_id):
    # a key record (a plaintext key's deprecation is logged when the keys
    # load, by the authorizer: in AWS an invocation of its own)
    key, record = make_key("acme")
    use_settings(dataclasses.replace(app_settings, api_keys=KeySet((record,))))
    with app_client() as http:
        created = http.post("/sessions", headers=key.headers(),
                            body=json.dumps({"session_id": session_id, "state": {"a": 1}}))
        fetched = http.get(f"/sessions/{session_id}", headers=key.headers())
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
    # and the caller: its tenant and key id (never the key)
    assert all((line["tenant"], line["key_id"]) == ("acme", key.key_id) for line in lines)
    assert key.token not in json.dumps(lines)


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
