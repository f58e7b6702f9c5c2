"""A session's lifetime over HTTP (chalice.test, real Redis, and real
PostgreSQL where recovery is involved): ``expires_at`` in every session,
``POST /sessions/{id}/touch``, a PUT's ``ttl_seconds``, and the 404
``SessionExpired`` once the lifetime ended.  Bad input gets a 4xx and
writes nothing: the tests look at the Redis keys themselves."""
from __future__ import annotations

import dataclasses
import json

import pytest

from chalicelib.adapters.postgres.database import Database
from chalicelib.adapters.redis.keys import session_keys
from chalicelib.config import Settings
from chalicelib.domain.events import parse_event
from chalicelib.domain.session import iso_plus_seconds
from chalicelib.domain.validation import CreateRequest
from chalicelib.service.sessions import SessionService
from tests.functional.utils import RedisView, assert_error, body
from tests.support.app import app_client
from tests.support.constants import API_KEY, AUTH, BEARER, REDIS_TEST_URL, TEST_CHANNEL
from tests.support.pipeline import wait_until


@pytest.fixture
def redis_view(redis_single) -> RedisView:
    return RedisView(redis_single)


@pytest.fixture
def existing(api, session_id) -> str:
    """A session at version 1 with state {"n": 1} and a TTL of 600 s."""
    response = api.post("/sessions", headers=AUTH,
                        body=body({"session_id": session_id, "state": {"n": 1}, "ttl_seconds": 600}))
    assert response.status_code == 201
    return session_id


def test_every_session_response_carries_expires_at_the_last_write_plus_the_ttl(api, existing):
    doc = api.get(f"/sessions/{existing}", headers=AUTH).json_body

    assert doc["expires_at"] == iso_plus_seconds(doc["updated_at"], 600)


def test_a_touch_bumps_the_version_keeps_the_state_and_slides_the_lifetime(api, redis_view, existing):
    response = api.post(f"/sessions/{existing}/touch", headers=AUTH, body=body({"ttl_seconds": 1200}))

    assert response.status_code == 200, response.body
    doc = response.json_body
    assert (doc["version"], doc["state"], doc["ttl_seconds"]) == (2, {"n": 1}, 1200)
    assert doc["expires_at"] == iso_plus_seconds(doc["updated_at"], 1200)
    assert response.headers["ETag"] == '"2"'
    assert 1100 < redis_view.client.ttl(session_keys(existing)[0]) <= 1200
    assert [e.decode() for e in redis_view.outbox(existing)] == [f"{existing}:1", f"{existing}:2"]
    assert api.get(f"/sessions/{existing}", headers=AUTH).json_body == doc


def test_a_touch_without_a_body_keeps_the_ttl_and_honours_if_match(api, existing):
    first = api.post(f"/sessions/{existing}/touch", headers={**AUTH, "If-Match": '"1"'})
    # as `curl -X POST` sends it: no body, no Content-Type
    second = api.post(f"/sessions/{existing}/touch", headers=BEARER)

    assert first.status_code == 200, first.body
    assert (first.json_body["version"], first.json_body["ttl_seconds"]) == (2, 600)
    assert second.status_code == 200, second.body
    assert second.json_body["version"] == 3


def test_a_touch_with_a_stale_if_match_is_a_412_and_writes_nothing(api, redis_view, existing):
    api.post(f"/sessions/{existing}/touch", headers=AUTH)
    before = redis_view.snapshot(existing)

    response = api.post(f"/sessions/{existing}/touch", headers={**AUTH, "If-Match": '"1"'})

    details = assert_error(response, 412, "PreconditionFailed")["details"]
    assert (details["expected_version"], details["actual_version"]) == (1, 2)
    assert redis_view.snapshot(existing) == before


@pytest.mark.parametrize("payload, headers", [
    (body({"ttl_seconds": 0}), {}),
    (body({"ttl_seconds": 2592001}), {}),
    (body({"ttl_seconds": "60"}), {}),
    (body({"ttl_seconds": True}), {}),
    (body({"state": {}}), {}),
    ("{not json", {}),
    ("[]", {}),
    (None, {"If-Match": 'W/"1"'}),
    (None, {"If-Match": "one"}),
], ids=["ttl 0", "ttl too long", "ttl a string", "ttl a boolean", "a state", "malformed JSON",
        "not an object", "weak If-Match", "malformed If-Match"])
def test_a_touch_with_bad_input_is_a_400_and_writes_nothing(api, redis_view, existing, payload, headers):
    before = redis_view.snapshot(existing)

    response = api.post(f"/sessions/{existing}/touch", headers={**AUTH, **headers}, body=payload)

    assert_error(response, 400, "ValidationError")
    assert redis_view.snapshot(existing) == before


def test_a_touch_of_an_unknown_or_deleted_session_is_a_404_and_creates_nothing(api, redis_view, session_id,
                                                                                existing):
    unknown = api.post(f"/sessions/{session_id}-x/touch", headers=AUTH)
    assert_error(unknown, 404, "SessionNotFound")
    redis_view.assert_untouched(f"{session_id}-x")

    api.delete(f"/sessions/{existing}", headers=AUTH)
    before = redis_view.snapshot(existing)
    gone = api.post(f"/sessions/{existing}/touch", headers=AUTH)
    assert assert_error(gone, 404, "SessionNotFound")["details"]["deleted"] is True
    assert redis_view.snapshot(existing) == before


def test_a_put_may_change_the_ttl(api, redis_view, existing):
    response = api.put(f"/sessions/{existing}", headers={**AUTH, "If-Match": '"1"'},
                       body=body({"state": {"n": 2}, "ttl_seconds": 90}))

    assert response.status_code == 200, response.body
    assert (response.json_body["version"], response.json_body["ttl_seconds"]) == (2, 90)
    assert 80 < redis_view.client.ttl(session_keys(existing)[0]) <= 90


def test_a_put_with_a_bad_ttl_is_a_400_and_writes_nothing(api, redis_view, existing):
    before = redis_view.snapshot(existing)

    response = api.put(f"/sessions/{existing}", headers={**AUTH, "If-Match": '"1"'},
                       body=body({"state": {"n": 2}, "ttl_seconds": 0}))

    assert assert_error(response, 400, "ValidationError")["details"]["field"] == "ttl_seconds"
    assert redis_view.snapshot(existing) == before


def test_once_the_lifetime_ended_every_route_answers_404_session_expired(
        use_settings, redis_single, pg_test_dsn, session_id):
    """With PostgreSQL behind the service (no queue: the test persists the
    creation itself, as the consumer would)."""
    use_settings(Settings(redis_url=REDIS_TEST_URL, api_keys=(API_KEY,), channel=TEST_CHANNEL,
                          database_url=pg_test_dsn, redis_settle=0.0))
    database = Database.from_dsn(pg_test_dsn)
    view = RedisView(redis_single)
    try:
        with app_client() as api:
            created = api.post("/sessions", headers=AUTH,
                               body=body({"session_id": session_id, "state": {"n": 1}, "ttl_seconds": 1}))
            assert created.status_code == 201
            event = view.client.hget(session_keys(session_id)[3], f"{session_id}:1")
            assert database.apply_events([parse_event(event)]).failures == {}
            wait_until(lambda: view.raw(session_id) is None, timeout=15, what="Redis to expire the key")
            before = view.snapshot(session_id)

            responses = [api.get(f"/sessions/{session_id}", headers=AUTH),
                         api.put(f"/sessions/{session_id}", headers={**AUTH, "If-Match": '"1"'},
                                 body=body({"state": {"n": 2}})),
                         api.delete(f"/sessions/{session_id}", headers=AUTH),
                         api.post(f"/sessions/{session_id}/touch", headers=AUTH)]

            for response in responses:
                error = assert_error(response, 404, "SessionExpired")
                assert error["details"] == {"session_id": session_id, "deleted": False,
                                            "expires_at": created.json_body["expires_at"]}
            assert view.snapshot(session_id) == before
            assert json.loads(api.get(f"/sessions/{session_id}/events", headers=AUTH).body)["events"]
    finally:
        database.close()


def test_the_scheduled_sweep_records_session_expired_through_the_pipeline(
        pipeline, pipeline_settings, use_settings, session_id):
    """The ``sweep_expired`` function as its schedule invokes it, on the real
    pipeline (LocalStack SQS, the consumer, PostgreSQL).  The settle time
    stays at its default: sessions of other tests in the shared database,
    which this module's Redis has no trace of, are held, never expired."""
    from chalice.test import Client

    from app import app
    use_settings(dataclasses.replace(pipeline_settings, expiry_grace=0.0))
    service = SessionService(pipeline.store, durable=pipeline.database)
    service.create(CreateRequest(session_id, '{"n":1}', 1))
    pipeline.deliver(timeout=60)
    wait_until(lambda: not pipeline.store.client.exists(session_keys(session_id)[0]), timeout=15,
               what="Redis to expire the key")

    with Client(app, stage_name="local") as client:
        cron = client.events.generate_cw_event(source="aws.events", detail_type="Scheduled Event",
                                               detail={}, resources=[])
        first = client.lambda_.invoke("sweep_expired", cron).payload
        second = client.lambda_.invoke("sweep_expired", cron).payload
    pipeline.deliver(timeout=60)

    assert first["expired"] >= 1 and first["candidates"] >= 1
    # the second run came before the consumer persisted the expiry: PostgreSQL
    # still named the session, and the final marker turned the sweep away
    assert second["skipped"].get("final", 0) >= 1
    assert pipeline.event_rows([session_id]) == [(session_id, 1), (session_id, 2)]
    assert pipeline.query("SELECT event_type FROM sync_events WHERE session_id = %s AND version = 2",
                          [session_id]) == [("session_expired",)]
    assert pipeline.session_rows([session_id])[session_id] == (2, None, False)
    assert pipeline.totals()["dead_lettered"] == 0
