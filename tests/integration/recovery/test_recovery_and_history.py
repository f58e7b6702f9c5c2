"""Reads that fall back to PostgreSQL, over HTTP (the Chalice test client):
recovery after the Redis key is gone, no resurrection after DELETE,
RecoveryPending while PostgreSQL is behind the marker, and the history."""
from __future__ import annotations

import json
import uuid

import pytest
from chalice.test import Client

from app import app
from chalicelib.adapters.redis.keys import session_keys
from tests.support.constants import API_KEY
from tests.support.markers import forget_marker

pytestmark = pytest.mark.localstack

HEADERS = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}


@pytest.fixture
def client(pipeline_settings, use_settings):
    use_settings(pipeline_settings)
    with Client(app, stage_name="local") as c:
        yield c


def _create(client, sid, state):
    reply = client.http.post("/sessions", headers=HEADERS,
                             body=json.dumps({"session_id": sid, "state": state, "ttl_seconds": 900}))
    assert reply.status_code == 201, reply.body


def _update(client, sid, state, expected):
    reply = client.http.put(f"/sessions/{sid}", headers=HEADERS,
                            body=json.dumps({"state": state, "expected_version": expected}))
    assert reply.status_code == 200, reply.body
    return json.loads(reply.body)


def _get(client, sid):
    return client.http.get(f"/sessions/{sid}", headers=HEADERS)


def test_a_session_whose_redis_key_is_gone_is_served_from_postgresql_and_written_back(client, pipeline):
    sid = f"recover-{uuid.uuid4().hex[:8]}"
    _create(client, sid, {"cart": [1]})
    _update(client, sid, {"cart": [1, 2]}, 1)
    _update(client, sid, {"cart": [1, 2, 3]}, 2)
    pipeline.deliver()
    pipeline.store.client.delete(session_keys(sid)[0])  # expired or evicted

    reply = _get(client, sid)

    assert reply.status_code == 200, reply.body
    assert reply.headers["X-Session-Source"] == "postgresql"
    body = json.loads(reply.body)
    assert (body["version"], body["state"], body["ttl_seconds"]) == (3, {"cart": [1, 2, 3]}, 900)
    assert reply.headers["ETag"] == '"3"'
    assert pipeline.store.get(sid).version == 3  # written back to Redis
    again = _get(client, sid)
    assert again.status_code == 200 and "X-Session-Source" not in again.headers
    # and it can be updated again from there, the pipeline carrying on
    assert _update(client, sid, {"cart": []}, 3)["version"] == 4


def test_a_deleted_session_is_not_resurrected_from_postgresql(client, pipeline):
    sid = f"deleted-{uuid.uuid4().hex[:8]}"
    _create(client, sid, {"a": 1})
    _update(client, sid, {"a": 2}, 1)
    assert client.http.delete(f"/sessions/{sid}", headers=HEADERS).status_code == 204
    pipeline.deliver()
    assert pipeline.session_rows([sid]) == {sid: (3, None, True)}
    assert pipeline.event_rows([sid]) == [(sid, 1), (sid, 2), (sid, 3)]

    session_key = session_keys(sid)[0]
    pipeline.store.client.delete(session_key)  # the tombstone expired
    assert _get(client, sid).status_code == 404
    forget_marker(pipeline.store.client, sid)  # and the marker too: only PostgreSQL knows
    reply = _get(client, sid)

    assert reply.status_code == 404
    assert json.loads(reply.body)["error"]["details"]["deleted"] is True
    assert pipeline.store.client.exists(session_key) == 0  # nothing written back


def test_recovery_answers_503_while_postgresql_is_behind_the_last_acknowledged_version(client, pipeline):
    sid = f"behind-{uuid.uuid4().hex[:8]}"
    _create(client, sid, {"v": 1})
    pipeline.deliver()
    _update(client, sid, {"v": 2}, 1)  # acknowledged, still on the queue
    pipeline.store.client.delete(session_keys(sid)[0])

    reply = _get(client, sid)

    assert reply.status_code == 503
    error = json.loads(reply.body)["error"]
    assert error["code"] == "RecoveryPending"
    assert (error["details"]["acknowledged_version"], error["details"]["persisted_version"]) == (2, 1)
    assert reply.headers["Retry-After"] == "1"
    pipeline.deliver()  # the consumer catches up
    reply = _get(client, sid)
    assert reply.status_code == 200
    assert (json.loads(reply.body)["version"], reply.headers["X-Session-Source"]) == (2, "postgresql")


def test_the_history_lists_persisted_events_newest_first_one_page_at_a_time(client, pipeline):
    sid = f"history-{uuid.uuid4().hex[:8]}"
    _create(client, sid, {"v": 1})
    for version in range(1, 5):
        _update(client, sid, {"v": version + 1}, version)
    assert client.http.delete(f"/sessions/{sid}", headers=HEADERS).status_code == 204
    pipeline.deliver()

    pages, cursor = [], None
    for _ in range(5):  # bounded: 6 events, 2 per page
        query = "limit=2" + (f"&before_version={cursor}" if cursor else "")
        reply = client.http.get(f"/sessions/{sid}/events?{query}", headers=HEADERS)
        assert reply.status_code == 200, reply.body
        page = json.loads(reply.body)
        pages.append(page["events"])
        cursor = page["next_before_version"]
        if cursor is None:
            break

    assert [[e["version"] for e in p] for p in pages] == [[6, 5], [4, 3], [2, 1]]
    events = [e for p in pages for e in p]
    assert [e["event_type"] for e in events] == (
        ["session_deleted"] + ["session_updated"] * 4 + ["session_created"])
    assert events[0]["state"] is None and events[1]["state"] == {"v": 5}
    assert all(e["occurred_at"].endswith("Z") and e["persisted_at"] >= e["occurred_at"] for e in events)
    missing = client.http.get("/sessions/never-written/events", headers=HEADERS)
    assert missing.status_code == 404


def test_a_session_not_yet_persisted_has_an_empty_history_and_an_unknown_one_is_404(client):
    sid = f"fresh-{uuid.uuid4().hex[:8]}"
    _create(client, sid, {"v": 1})  # the worker has not run: nothing in PostgreSQL yet
    reply = client.http.get(f"/sessions/{sid}/events", headers=HEADERS)
    assert reply.status_code == 200, reply.body
    assert json.loads(reply.body) == {"session_id": sid, "events": [], "next_cursor": None,
                                      "next_before_version": None}
    for query in ("", "?before_version=5"):
        unknown = client.http.get(f"/sessions/never-{sid}/events{query}", headers=HEADERS)
        assert unknown.status_code == 404, query
