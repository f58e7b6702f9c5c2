"""Reads while Redis is down, for the clients that opt in: a GET with
``Cache-Control: max-stale`` is served the last state PostgreSQL persisted
(``X-Session-Source: postgresql``, ``Age``), only while Redis cannot answer;
every other request keeps its 503.

Each test stops a redis-server of its own (``throwaway_redis``) and
persists the rows it reads into the test database itself, with the times
it chooses (the copy's age is what ``max-stale=N`` is compared with).
"""
from __future__ import annotations

import dataclasses
import json
import time
from datetime import UTC, datetime

import pytest
import redis

from chalicelib.adapters.redis.keys import session_keys
from chalicelib.config import Settings
from chalicelib.domain.events import CREATED, DELETED, UPDATED, ChangeEvent
from tests.support.app import app_client
from tests.support.constants import API_KEY, AUTH
from tests.support.servers import free_port

# A copy persisted this long ago: its Age is at least this, and at most this
# plus the test's own duration (bounded by MARGIN_SECONDS, wide for a busy machine).
WRITTEN_AGO_SECONDS = 1000
MARGIN_SECONDS = 120
STALE = {**AUTH, "Cache-Control": "max-stale"}


def iso(epoch_seconds: float) -> str:
    return datetime.fromtimestamp(epoch_seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def persist(database, session_id: str, version: int, state: dict | None, *,
            ago: float = WRITTEN_AGO_SECONDS) -> None:
    """Write version ``version`` of ``session_id`` into PostgreSQL as the
    consumer does, as changed ``ago`` seconds ago (None state: a deletion)."""
    written = iso(time.time() - ago)
    kind = DELETED if state is None else CREATED if version == 1 else UPDATED
    result = database.apply_events([ChangeEvent(
        f"{session_id}:{version}", kind, session_id, version, written, written, 3600,
        None if state is None else json.dumps(state, separators=(",", ":")))])
    assert not result.failures, result.failures


@pytest.fixture
def settings(throwaway_redis, pg_test_dsn) -> Settings:
    return Settings(redis_url=throwaway_redis.url, database_url=pg_test_dsn, api_keys=(API_KEY,))


@pytest.fixture
def stale_api(settings, use_settings):
    use_settings(settings)
    with app_client() as http:
        yield http


def create(api, session_id: str, state: dict):
    response = api.post("/sessions", headers=AUTH,
                        body=json.dumps({"session_id": session_id, "state": state}))
    assert response.status_code == 201, response.body
    return response


def put(api, session_id: str, version: int, state: dict, **headers: str):
    return api.put(f"/sessions/{session_id}", headers={**AUTH, "If-Match": f'"{version}"', **headers},
                   body=json.dumps({"state": state}))


def assert_redis_unavailable(response) -> None:
    assert response.status_code == 503, response.body
    assert response.json_body["code"] == "ServiceUnavailable"
    assert response.json_body["error"]["details"]["dependency"] == "redis"
    assert "Age" not in response.headers and "X-Session-Source" not in response.headers


def test_with_max_stale_a_read_while_redis_is_stopped_is_the_persisted_copy_with_its_age(
        throwaway_redis, stale_api, database, session_id):
    create(stale_api, session_id, {"step": 1})
    assert put(stale_api, session_id, 1, {"step": 2}).status_code == 200
    persist(database, session_id, 1, {"step": 1})  # version 2 is not persisted yet
    throwaway_redis.stop()

    response = stale_api.get(f"/sessions/{session_id}", headers=STALE)

    assert response.status_code == 200, response.body
    # behind the acknowledged version 2: what the client chose to accept
    assert (response.json_body["version"], response.json_body["state"]) == (1, {"step": 1})
    assert response.headers["X-Session-Source"] == "postgresql"
    assert response.headers["ETag"] == '"1"'
    assert WRITTEN_AGO_SECONDS <= int(response.headers["Age"]) <= WRITTEN_AGO_SECONDS + MARGIN_SECONDS

    not_modified = stale_api.get(f"/sessions/{session_id}", headers={**STALE, "If-None-Match": '"1"'})
    assert not_modified.status_code == 304 and not_modified.body == b""
    assert not_modified.headers["ETag"] == '"1"'
    assert not_modified.headers["X-Session-Source"] == "postgresql"
    assert int(not_modified.headers["Age"]) >= WRITTEN_AGO_SECONDS


def test_without_max_stale_a_read_while_redis_is_stopped_stays_503(
        throwaway_redis, stale_api, database, session_id):
    create(stale_api, session_id, {"a": 1})
    persist(database, session_id, 1, {"a": 1})
    throwaway_redis.stop()

    assert_redis_unavailable(stale_api.get(f"/sessions/{session_id}", headers=AUTH))
    assert_redis_unavailable(stale_api.get(f"/sessions/{session_id}",
                                           headers={**AUTH, "Cache-Control": "no-cache, max-age=0"}))


@pytest.mark.parametrize("cache_control", [
    "max-stale=abc", "max-stale=-5", "max-stale=1.5", 'max-stale="9', "max-stale =9"])
def test_a_malformed_max_stale_is_ignored_503_while_redis_is_down_200_while_it_is_up(
        throwaway_redis, stale_api, database, session_id, cache_control):
    create(stale_api, session_id, {"a": 1})
    persist(database, session_id, 1, {"a": 1})
    headers = {**AUTH, "Cache-Control": cache_control}
    up = stale_api.get(f"/sessions/{session_id}", headers=headers)
    assert up.status_code == 200 and "Age" not in up.headers, up.body  # never a 400

    throwaway_redis.stop()
    assert_redis_unavailable(stale_api.get(f"/sessions/{session_id}", headers=headers))


def test_max_stale_with_seconds_accepts_a_copy_that_old_at_most(
        throwaway_redis, stale_api, database, session_id):
    create(stale_api, session_id, {"a": 1})
    persist(database, session_id, 1, {"a": 1})
    throwaway_redis.stop()

    too_old = stale_api.get(f"/sessions/{session_id}",
                            headers={**AUTH, "Cache-Control": f"max-stale={WRITTEN_AGO_SECONDS // 2}"})
    assert_redis_unavailable(too_old)
    details = too_old.json_body["error"]["details"]
    assert details["max_stale_seconds"] == WRITTEN_AGO_SECONDS // 2
    assert details["persisted_age_seconds"] >= WRITTEN_AGO_SECONDS
    assert too_old.headers["Retry-After"] == "1"

    for accepted in (f"max-stale={WRITTEN_AGO_SECONDS + MARGIN_SECONDS}",
                     f'no-store, max-stale="{WRITTEN_AGO_SECONDS + MARGIN_SECONDS}"'):
        response = stale_api.get(f"/sessions/{session_id}", headers={**AUTH, "Cache-Control": accepted})
        assert response.status_code == 200, (accepted, response.body)
        assert int(response.headers["Age"]) <= WRITTEN_AGO_SECONDS + MARGIN_SECONDS


def test_with_max_stale_a_session_persisted_as_deleted_is_404(
        throwaway_redis, stale_api, database, session_id):
    create(stale_api, session_id, {"a": 1})
    persist(database, session_id, 1, {"a": 1})
    persist(database, session_id, 2, None)
    throwaway_redis.stop()

    response = stale_api.get(f"/sessions/{session_id}", headers=STALE)
    assert response.status_code == 404, response.body
    assert response.json_body["code"] == "SessionNotFound"
    assert response.json_body["error"]["details"]["deleted"] is True


def test_with_max_stale_a_session_not_persisted_yet_is_503_not_404(
        throwaway_redis, stale_api, session_id):
    create(stale_api, session_id, {"a": 1})  # acknowledged; its event never reached PostgreSQL
    throwaway_redis.stop()

    assert_redis_unavailable(stale_api.get(f"/sessions/{session_id}", headers=STALE))


def test_writes_with_max_stale_while_redis_is_stopped_stay_503(
        throwaway_redis, stale_api, database, session_id):
    create(stale_api, session_id, {"a": 1})
    persist(database, session_id, 1, {"a": 1})
    throwaway_redis.stop()

    assert_redis_unavailable(put(stale_api, session_id, 1, {"a": 2}, **{"Cache-Control": "max-stale"}))
    assert_redis_unavailable(stale_api.post("/sessions", headers=STALE,
                                            body=json.dumps({"session_id": "other", "state": {}})))
    assert_redis_unavailable(stale_api.delete(f"/sessions/{session_id}",
                                              headers={**STALE, "If-Match": '"1"'}))


def test_with_max_stale_and_postgresql_down_too_the_read_is_redis_s_503(
        throwaway_redis, settings, use_settings, session_id):
    use_settings(settings)
    with app_client() as api:
        create(api, session_id, {"a": 1})
    throwaway_redis.stop()
    use_settings(dataclasses.replace(
        settings, database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/none"))
    with app_client() as api:
        assert_redis_unavailable(api.get(f"/sessions/{session_id}", headers=STALE))


def test_max_stale_changes_nothing_while_redis_answers(stale_api, database, session_id):
    create(stale_api, session_id, {"a": 1})
    assert put(stale_api, session_id, 1, {"a": 2}).status_code == 200
    persist(database, session_id, 1, {"a": 1})

    response = stale_api.get(f"/sessions/{session_id}", headers=STALE)
    assert response.status_code == 200
    assert response.json_body["version"] == 2  # Redis's, not PostgreSQL's older copy
    assert "Age" not in response.headers and "X-Session-Source" not in response.headers


def test_max_stale_does_not_serve_a_copy_behind_what_an_answering_redis_acknowledged(
        throwaway_redis, stale_api, database, session_id):
    create(stale_api, session_id, {"a": 1})
    assert put(stale_api, session_id, 1, {"a": 2}).status_code == 200
    persist(database, session_id, 1, {"a": 1})
    admin = redis.Redis.from_url(throwaway_redis.url, socket_timeout=5)
    try:
        admin.delete(session_keys(session_id)[0])  # the key evicted; its marker says 2
    finally:
        admin.close()

    # Redis answers: the opt-in is not for PostgreSQL being behind it
    response = stale_api.get(f"/sessions/{session_id}", headers=STALE)
    assert response.status_code == 503, response.body
    assert response.json_body["code"] == "RecoveryPending"


def test_with_max_stale_a_read_while_redis_hangs_is_the_persisted_copy_after_one_timeout(
        throwaway_redis, stale_api, database, session_id):
    create(stale_api, session_id, {"a": 1})
    persist(database, session_id, 1, {"a": 1})
    throwaway_redis.pause()  # keeps its port, answers nothing

    start = time.monotonic()
    response = stale_api.get(f"/sessions/{session_id}", headers=STALE)
    seconds = time.monotonic() - start

    assert response.status_code == 200, response.body
    assert response.headers["X-Session-Source"] == "postgresql" and "Age" in response.headers
    # REDIS_TIMEOUT (1 s) once, then PostgreSQL; the bound is wide for a busy machine
    assert seconds < 5 * Settings().redis_timeout, f"took {seconds:.2f}s"
