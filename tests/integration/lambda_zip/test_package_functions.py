"""Every function of the deployment package, from the unpacked zip in a bare
interpreter, with the events AWS sends it (conftest.py, tests/support/lambda_runtime.py).

What each proves: the package alone runs the function (nothing of the
virtualenv, the runtime's boto3 on its own path, the bytecode used); the
migration step migrates an empty database from inside the package; the
authorizer answers API Gateway's TOKEN event with a policy; the API
function answers API Gateway's REST proxy events, carrying the authorizer's
result, exactly as the app in process answers the same requests; its
writes reach sync_events through the consumer function fed as the event
source mapping feeds it, and a poison message reaches the DLQ with its
reason; the schedules do their work on EventBridge's event.
"""
from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from sessionsync.bench import events
from tests.integration.lambda_zip.utils import (
    API_KEY,
    READER,
    READER_RECORD,
    RELAY_INVOCATION_SECONDS,
    allowed,
    authorize,
    change_body,
    gateway_event,
    receive_all,
    ship_unsent,
    sync_events,
)
from tests.support.lambda_runtime import EventSourceMapping, LambdaFunction
from tests.support.packaging import default_runtime, interpreter

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def api(lambda_stack, migrated) -> LambdaFunction:
    return lambda_stack.function("APIHandler")


@pytest.fixture(scope="module")
def consumer(lambda_stack, migrated) -> LambdaFunction:
    return lambda_stack.function("PersistChanges")


@pytest.fixture(scope="module")
def mapping(lambda_stack, sqs) -> EventSourceMapping:
    return EventSourceMapping(sqs, lambda_stack.queues.url)


def test_each_function_runs_from_the_package_the_runtime_s_boto3_and_the_standard_library_alone(lambda_stack):
    task, runtime = str(lambda_stack.task_root), str(lambda_stack.runtime_dir)
    for logical_id, spec in lambda_stack.specs.items():
        # on the interpreter of the runtime the package was built for (not this test's)
        assert spec.runtime == default_runtime(), logical_id
        python = interpreter(spec.runtime)
        stdlib = str(Path(python.base_prefix) / "lib")
        function = lambda_stack.function(logical_id)
        init = function.init
        assert init["executable"] == python.executable, (logical_id, init["executable"])
        assert init["flags"] == {"isolated": 1, "no_site": 1}, logical_id
        assert init["sys_path"][:2] == [task, runtime], logical_id
        rest = init["sys_path"][2:]
        assert all(p.startswith(stdlib) and "-packages" not in p for p in rest), init["sys_path"]
        for name, (origin, cached) in function.loaded_modules().items():
            assert origin.startswith((task, runtime, stdlib)) and "-packages" not in origin, (name, origin)
            # the package's bytecode is what runs (nothing is compiled at start)
            if origin.startswith(task) and origin.endswith(".py"):
                assert cached, f"{logical_id}: {name} has no .pyc in the package"
        function.stop()


def test_the_migration_function_migrates_an_empty_database_and_reports_its_status(lambda_stack, migrated):
    from chalicelib.adapters.postgres.migrations import discover, release_checksum

    files = [m.filename for m in discover()]
    assert migrated["applied_now"] == files and migrated["pending"] == []
    assert migrated["version"] == discover()[-1].version
    status = lambda_stack.function("RunMigrations").invoke({"action": "status"})
    assert status.ok, status.error
    assert status.result["applied_now"] == [] and status.result["release_checksum"] == release_checksum()
    assert {m["state"] for m in status.result["migrations"]} == {"applied"}


def test_the_authorizer_allows_a_key_of_the_secret_and_denies_any_other(authorizer):
    arn = "arn:aws:execute-api:us-east-1:123456789012:a1b2c3d4e5/prod/PUT/sessions/s1"
    good = authorize(authorizer, f"Bearer {API_KEY}", "PUT", "/sessions/s1")
    # a plaintext key (deprecated): the default tenant's, every scope
    assert good["principalId"] == "legacy" and allowed(good, arn)
    assert good["context"] == {"tenant": "default", "key_id": "legacy",
                               "scopes": "read write owner-admin admin"}
    # a key record: its tenant and scopes, its id the principal (per-key usage plans)
    reader = authorize(authorizer, f"Bearer {READER.token}", "PUT", "/sessions/s1")
    assert reader["principalId"] == READER.key_id and allowed(reader, arn)
    assert reader["context"] == {"tenant": "zip", "key_id": READER.key_id, "scopes": "read"}
    # the keys came from Secrets Manager through the runtime's boto3
    assert authorizer.loaded_modules()["boto3"][0].startswith(str(authorizer.runtime_dir))
    # cached by API Gateway for the whole API: the policy must cover every route
    assert allowed(good, arn.replace("PUT/sessions/s1", "DELETE/owners/o1/sessions"))
    for token in (f"Bearer {API_KEY}x", "Bearer ", API_KEY, "Basic dXNlcjpwYXNz",
                  f"Bearer {READER.token[:-1]}", f"Bearer {READER_RECORD.sha256}"):
        assert not allowed(authorize(authorizer, token, "PUT", "/sessions/s1"), arn), token


def test_the_api_function_scopes_and_separates_tenants_by_the_authorizer_s_context(api, authorizer):
    sid = f"zip-{uuid.uuid4().hex[:8]}"
    legacy = authorize(authorizer, f"Bearer {API_KEY}")
    reader = authorize(authorizer, f"Bearer {READER.token}")

    def call(authorized, method, path, body=None):
        invocation = api.invoke(gateway_event(method, path, {"Content-Type": "application/json"},
                                              None if body is None else json.dumps(body), authorized))
        assert invocation.ok, invocation.error
        return invocation.result["statusCode"], json.loads(invocation.result.get("body") or "{}")

    assert call(legacy, "POST", "/sessions", {"session_id": sid, "state": {}})[0] == 201
    status, problem = call(reader, "PUT", f"/sessions/{sid}", {"state": {"x": 1}, "expected_version": 1})
    assert (status, problem["code"], problem["error"]["details"]["scope"]) == (403, "MissingScope", "write")
    status, problem = call(reader, "GET", f"/sessions/{sid}")  # the default tenant's: not the reader's
    assert (status, problem["code"]) == (404, "SessionNotFound")
    assert call(legacy, "GET", f"/sessions/{sid}")[0] == 200


# --- the API function: as the app in process serves -------------------------------

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")


def normalized(status: int, headers: dict[str, str], body: bytes, ids: dict[str, str]) -> dict[str, Any]:
    """What must be equal between two answers to the same request for other
    sessions: the status, the headers that mean something (a request id is
    each answer's own; Location without the stage's prefix), the body with
    the ids and timestamps replaced."""
    text = body.decode()
    for value, name in ids.items():
        text = text.replace(value, name)
    text = TIMESTAMP.sub("<time>", text)
    kept = {k.lower(): v for k, v in headers.items()
            if k.lower() not in ("x-request-id", "content-length", "date", "server")}
    if "location" in kept:
        for value, name in ids.items():
            kept["location"] = kept["location"].replace(value, name)
        kept["location"] = kept["location"].removeprefix("/prod")
    parsed: Any = text
    if text and "json" in kept.get("content-type", ""):
        parsed = json.loads(text)
        if isinstance(parsed, dict) and "checks" in parsed:
            # /health: latencies are each call's own, and each probe's one-second deadline
            # may pass on a loaded machine: the dependencies it reports, not their state
            return {"status": "200 or 503" if status in (200, 503) else status,
                    "headers": kept, "body": sorted(parsed["checks"])}
    return {"status": status, "headers": kept, "body": parsed}


def scenario(sid: str, owner: str) -> list[tuple[str, str, dict[str, str], str | None]]:
    """A session's life through every route, with the refusals on the way."""
    json_type = {"Content-Type": "application/json"}
    patch_type = {"Content-Type": "application/merge-patch+json"}
    return [
        ("POST", "/sessions", {**json_type, "Idempotency-Key": f"k-{sid}"},
         json.dumps({"session_id": sid, "state": {"cart": [1]}, "ttl_seconds": 600, "owner_id": owner})),
        ("POST", "/sessions", {**json_type, "Idempotency-Key": f"k-{sid}"},  # a retry: the original answer
         json.dumps({"session_id": sid, "state": {"cart": [1]}, "ttl_seconds": 600, "owner_id": owner})),
        ("POST", "/sessions", json_type, json.dumps({"session_id": sid, "state": {}})),  # 409
        ("GET", f"/sessions/{sid}", {}, None),
        ("GET", f"/sessions/{sid}", {"If-None-Match": '"1"'}, None),  # 304
        ("PUT", f"/sessions/{sid}", json_type,
         json.dumps({"state": {"cart": [1, 2]}, "expected_version": 1})),
        ("PUT", f"/sessions/{sid}", json_type, json.dumps({"state": {"cart": []}, "expected_version": 1})),
        ("PUT", f"/sessions/{sid}", {**json_type, "If-Match": '"7"'}, json.dumps({"state": {}})),  # 412
        ("PUT", f"/sessions/{sid}", json_type, json.dumps({"state": {}})),  # 428
        ("PUT", f"/sessions/{sid}", json_type, '{"state": '),  # malformed
        ("PUT", f"/sessions/{sid}", json_type, json.dumps({"state": {"x": "\u0000"}, "expected_version": 2})),
        ("PATCH", f"/sessions/{sid}", {**patch_type, "If-Match": '"2"'}, json.dumps({"state": {"n": 3}})),
        ("POST", f"/sessions/{sid}/touch", json_type, json.dumps({"ttl_seconds": 900})),
        ("GET", f"/owners/{owner}/sessions", {}, None),
        ("GET", "/sessions/not%20an%20id", {}, None),
        ("DELETE", f"/sessions/{sid}", {"If-Match": '"4"'}, None),
        ("GET", f"/sessions/{sid}", {}, None),
        ("GET", "/health", {}, None),
    ]


def test_the_api_function_answers_every_route_as_the_app_in_process_does(lambda_stack, api, authorizer,
                                                                          mapping, consumer):
    from chalicelib import runtime
    from chalicelib.config import load_settings
    from tests.support.app import app_client

    token = f"Bearer {API_KEY}"
    authorized = authorize(authorizer, token)
    zip_sid, local_sid = f"zip-{uuid.uuid4().hex[:8]}", f"loc-{uuid.uuid4().hex[:8]}"
    zip_owner, local_owner = f"zo-{uuid.uuid4().hex[:6]}", f"lo-{uuid.uuid4().hex[:6]}"
    zip_ids, local_ids = {zip_sid: "<id>", zip_owner: "<owner>"}, {local_sid: "<id>", local_owner: "<owner>"}

    zip_answers = []
    for method, path, headers, body in scenario(zip_sid, zip_owner):
        event = gateway_event(method, path, {"Authorization": token, **headers}, body,
                              None if path == "/health" else authorized)
        invocation = api.invoke(event)
        assert invocation.ok, (method, path, invocation.error)
        answer = invocation.result
        payload = answer.get("body") or ""
        zip_answers.append(normalized(answer["statusCode"], answer.get("headers") or {},
                                      payload.encode(), zip_ids))

    # the same requests, for other ids, to the app in process configured
    # from the API function's own environment
    runtime.reset()
    runtime.install(settings=load_settings({**lambda_stack.environment("APIHandler")}))
    try:
        local_answers = []
        with app_client(stage_name="dev") as http:
            for method, path, headers, body in scenario(local_sid, local_owner):
                response = http.request(method, path, headers={"Authorization": token, **headers},
                                        body=(body or "").encode())
                local_answers.append(normalized(response.status_code, response.headers, response.body,
                                                local_ids))
    finally:
        runtime.reset()

    statuses = [a["status"] for a in zip_answers]
    assert statuses == [201, 201, 409, 200, 304, 200, 409, 412, 428, 400, 400, 200, 200, 200, 400, 204, 404,
                        "200 or 503"], statuses
    assert zip_answers[-1]["body"] == ["dlq", "postgresql", "queue", "redis"]
    for step, (zipped, local) in enumerate(zip(zip_answers, local_answers, strict=True)):
        assert zipped == local, (step, scenario("<id>", "<owner>")[step][:2])

    # persisted alike: the consumer function, fed from the queue as the
    # event source mapping feeds it, writes both sessions' events
    ship_unsent(lambda_stack)
    invocations = mapping.drain(consumer)
    assert invocations and all(i.ok and i.result == {"batchItemFailures": []} for i in invocations), \
        [i.error or i.result for i in invocations]
    with psycopg.connect(lambda_stack.database_url) as conn:
        rows = {sid: conn.execute("SELECT version, event_type, state FROM sync_events WHERE session_id = %s "
                                  "ORDER BY version", (sid,)).fetchall() for sid in (zip_sid, local_sid)}
    assert [(v, t) for v, t, _ in rows[zip_sid]] == [
        (1, "session_created"), (2, "session_updated"), (3, "session_updated"), (4, "session_touched"),
        (5, "session_deleted")], rows[zip_sid]
    assert rows[zip_sid] == rows[local_sid]
    # and the history route reads them back alike
    history = api.invoke(gateway_event("GET", f"/sessions/{zip_sid}/events", {"Authorization": token}, None,
                                       authorized))
    assert history.ok and history.result["statusCode"] == 200, history.error or history.result
    assert [e["version"] for e in json.loads(history.result["body"])["events"]] == [5, 4, 3, 2, 1]


# --- the consumer function: a batch with poison, a batch that must wait ------------

def test_a_batch_with_poison_persists_the_rest_and_dead_letters_the_poison_with_its_reason(
        lambda_stack, api, authorizer, consumer, mapping, sqs):
    authorized = authorize(authorizer, f"Bearer {API_KEY}")
    sids = [f"zb-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    for sid in sids:
        created = api.invoke(gateway_event("POST", "/sessions", {"Content-Type": "application/json"},
                                           json.dumps({"session_id": sid, "state": {"n": 1}}), authorized))
        assert created.ok and created.result["statusCode"] == 201, created.error or created.result
    garbage, unstorable = "not an event", change_body(f"zp-{uuid.uuid4().hex[:8]}", 1, '{"x":"\\u0000"}')
    for body in (garbage, unstorable):
        sqs.send_message(QueueUrl=lambda_stack.queues.url, MessageBody=body)
    ship_unsent(lambda_stack)
    records = receive_all(mapping, 5, *sids, garbage, unstorable)

    invocation = mapping.deliver(consumer, records)

    assert invocation.ok, invocation.error
    assert invocation.result == {"batchItemFailures": []}
    assert sync_events(lambda_stack.database_url, sids) == {sid: [(1, "session_created")] for sid in sids}
    letters = sqs.receive_message(QueueUrl=lambda_stack.queues.dlq_url, MaxNumberOfMessages=10,
                                  WaitTimeSeconds=2, MessageAttributeNames=["All"]).get("Messages", [])
    reasons = {m["Body"]: {k: v["StringValue"] for k, v in m["MessageAttributes"].items()} for m in letters}
    assert set(reasons) == {garbage, unstorable}
    assert reasons[garbage]["error_class"] == "MalformedMessage"
    assert reasons[unstorable]["error_class"] == "PermanentPersistenceError"
    assert reasons[unstorable]["sqlstate"].startswith("22"), reasons[unstorable]
    for reason in reasons.values():
        assert reason["source_queue"] == mapping.queue_arn and reason["error_message"]
    assert mapping.receive() == []  # nothing left behind in the main queue


def test_a_batch_the_database_cannot_take_fails_whole_and_comes_back(lambda_stack, api, authorizer, consumer,
                                                                    sqs):
    from tests.support.servers import free_port

    unreachable = lambda_stack.function("PersistChanges", DB_HOST=f"127.0.0.1:{free_port()}")
    mapping = EventSourceMapping(sqs, lambda_stack.queues.url, visibility_timeout=1)
    authorized = authorize(authorizer, f"Bearer {API_KEY}")
    sids = [f"zr-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    for sid in sids:
        created = api.invoke(gateway_event("POST", "/sessions", {"Content-Type": "application/json"},
                                           json.dumps({"session_id": sid, "state": {}}), authorized))
        assert created.ok and created.result["statusCode"] == 201, created.error or created.result

    ship_unsent(lambda_stack)
    failed = mapping.deliver(unreachable, receive_all(mapping, 2, *sids))

    # every record must be retried: the handler raises (so that a mapping
    # without ReportBatchItemFailures deletes nothing either)
    assert not failed.ok and failed.error["errorType"] == "BatchIncomplete", failed.error
    assert "2 of 2 records must be retried" in failed.error["errorMessage"]
    # they come back after the visibility timeout, and the healthy function persists them
    delivered = mapping.deliver(consumer, receive_all(mapping, 2, *sids))
    assert delivered.ok and delivered.result == {"batchItemFailures": []}
    assert sync_events(lambda_stack.database_url, sids) == {sid: [(1, "session_created")] for sid in sids}
    unreachable.stop()


# --- the schedules: EventBridge's event ------------------------------------------------

def test_the_relay_ships_an_outbox_entry_the_request_never_sent(lambda_stack, consumer, mapping):
    import redis

    from chalicelib.adapters.redis.store import SessionStore

    sid = f"zo-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(lambda_stack.redis.url)
    SessionStore(client).create(sid, '{"shipped":"by the relay"}', 600)  # in Redis, not sent
    client.close()
    relay = lambda_stack.function("RelayOutbox", OUTBOX_RELAY_AGE_SECONDS="0")

    drained = relay.invoke(events.schedule_event(), timeout=RELAY_INVOCATION_SECONDS)

    assert drained.ok and drained.result["sent"] >= 1, drained.error or drained.result
    assert drained.result["ended"] == "budget", drained.result
    assert all(i.ok for i in mapping.drain(consumer))
    assert sync_events(lambda_stack.database_url, [sid]) == {sid: [(1, "session_created")]}
    relay.stop()


def test_the_sweep_records_an_expired_session_and_the_purge_drops_old_replaced_rows(
        lambda_stack, api, authorizer, consumer, mapping):
    authorized = authorize(authorizer, f"Bearer {API_KEY}")
    sid = f"ze-{uuid.uuid4().hex[:8]}"
    for method, body in (("POST", {"session_id": sid, "state": {}, "ttl_seconds": 1}),
                         ("PUT", {"state": {"v": 2}, "expected_version": 1, "ttl_seconds": 1})):
        path = "/sessions" if method == "POST" else f"/sessions/{sid}"
        answer = api.invoke(gateway_event(method, path, {"Content-Type": "application/json"},
                                          json.dumps(body), authorized))
        assert answer.ok and answer.result["statusCode"] in (200, 201), answer.error or answer.result
    ship_unsent(lambda_stack)  # the relay function ships the writes
    assert all(i.ok for i in mapping.drain(consumer))
    sweep = lambda_stack.function("SweepExpired", SESSION_EXPIRY_GRACE_SECONDS="0")
    time.sleep(1.5)  # the lifetime ends

    swept = sweep.invoke(events.schedule_event())

    assert swept.ok and swept.result["expired"] >= 1, swept.error or swept.result
    assert all(i.ok for i in mapping.drain(consumer))
    assert sync_events(lambda_stack.database_url, [sid])[sid] == [
        (1, "session_created"), (2, "session_updated"), (3, "session_expired")]

    # the purge (SYNC_EVENTS_RETENTION_DAYS from the template's parameter):
    # rows older than that which a newer version replaced go, the latest stays
    with psycopg.connect(lambda_stack.database_url, autocommit=True) as conn:
        conn.execute("UPDATE sync_events SET persisted_at = now() - interval '40 days' WHERE session_id = %s",
                     (sid,))
    purge = lambda_stack.function("PurgeSyncEvents")
    report = purge.invoke(events.schedule_event())
    assert report.ok, report.error
    assert report.result["days"] == 30 and report.result["complete"], report.result
    assert sync_events(lambda_stack.database_url, [sid])[sid] == [(3, "session_expired")]
    sweep.stop()
    purge.stop()
