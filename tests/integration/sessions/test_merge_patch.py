"""Merge patches (PATCH, RFC 7396) racing on one session, on the real Redis
single node and the real 3-master cluster, and through the real pipeline to
PostgreSQL: every patch lands, each on exactly the version it read, and
each one's change event carries the state it made.

The proof that each patch was applied to the version it read: the event of
version v must be the event of version v-1 with exactly the key of the
patch that answered v added.  A patch written onto a stale read (the
lost update) drops another patch's key from some version onwards.
"""
from __future__ import annotations

import json
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from chalicelib.adapters.redis.keys import bucket_of, outbox_keys, session_keys
from chalicelib.adapters.redis.store import SessionStore
from chalicelib.domain.errors import ConcurrencyError
from chalicelib.domain.events import UPDATED
from chalicelib.domain.validation import CreateRequest, IfMatch, PatchRequest
from chalicelib.service import sessions
from chalicelib.service.sessions import SessionService
from tests.support.app import app_client
from tests.support.constants import AUTH, BEARER
from tests.support.pipeline import outbox_entries_of, wait_until

PATCHES = 64
LIMIT = 256 * 1024
INITIAL = {"owner": "ada", "items": []}


def key(i: int) -> str:
    return f"k{i:02d}"


def race(service: SessionService, sid: str, patches: int = PATCHES) -> dict[int, int]:
    """``patches`` threads, released together, each merging {k<i>: i} into
    the state; returns the version each patch answered, by i."""
    start = threading.Barrier(patches)

    def one(i: int) -> int:
        start.wait(timeout=60)
        return service.patch(PatchRequest(sid, {key(i): i}, LIMIT)).version

    with ThreadPoolExecutor(max_workers=patches) as pool:
        futures = {i: pool.submit(one, i) for i in range(patches)}
        return {i: future.result(timeout=240) for i, future in futures.items()}


def assert_each_patch_applied_to_the_version_it_read(answered: dict[int, int],
                                                     states: dict[int, dict]) -> None:
    """``states``: version -> the state its event carries, versions 1..N+1."""
    by_version = {version: i for i, version in answered.items()}
    assert sorted(by_version) == list(range(2, PATCHES + 2)), "two patches answered one version"
    assert states[1] == INITIAL
    for version in range(2, PATCHES + 2):
        i = by_version[version]
        assert states[version] == {**states[version - 1], key(i): i}, f"version {version}"


@pytest.fixture
def counted_pauses(monkeypatch):
    """The retries the race caused (the pauses between attempts), counted."""
    pauses: list[int] = []
    pause = sessions._pause

    def counting(attempt: int) -> None:
        pauses.append(attempt)
        pause(attempt)

    monkeypatch.setattr(sessions, "_pause", counting)
    return pauses


def test_64_concurrent_patches_of_different_keys_all_land_each_on_the_version_it_read(
        store, session_id, counted_pauses):
    service = SessionService(store)  # no PostgreSQL behind it: Redis is trusted
    store.create(session_id, json.dumps(INITIAL), 3600)

    answered = race(service, session_id)

    final = store.get(session_id)
    assert final.version == 1 + PATCHES
    assert final.state == {**INITIAL, **{key(i): i for i in range(PATCHES)}}
    events = [json.loads(store.client.hget(outbox_data(session_id), eid))
              for eid in outbox_entries_of(store, [session_id])]
    assert [e["version"] for e in events] == list(range(1, PATCHES + 2))
    assert {e["event_type"] for e in events[1:]} == {UPDATED}
    assert_each_patch_applied_to_the_version_it_read(answered, {e["version"]: e["state"] for e in events})
    assert counted_pauses, "the patches never raced; the test proved nothing"


def outbox_data(sid: str) -> str:
    return outbox_keys(bucket_of(sid))[1]


def test_a_patch_with_if_match_is_not_retried_when_another_write_came_first(store, session_id):
    service = SessionService(store)
    store.create(session_id, json.dumps(INITIAL), 3600)
    store.update(session_id, json.dumps({"owner": "bob"}), 1)
    with pytest.raises(ConcurrencyError) as caught:
        service.patch(PatchRequest(session_id, {"x": 1}, LIMIT, IfMatch('"1"', 1)))
    assert caught.value.actual_version == 2
    assert store.get(session_id).state == {"owner": "bob"}


def test_64_concurrent_patches_reach_postgresql_as_64_update_events_with_their_states(pipeline):
    sid = f"mp-{uuid.uuid4().hex[:12]}"
    service = SessionService(pipeline.store, durable=pipeline.database)
    service.create(_create(sid))

    answered = race(service, sid)
    pipeline.deliver()

    rows = wait_until(lambda: (lambda found: found if len(found) == PATCHES + 1 else None)(
        _events(pipeline, sid)), timeout=60, what=f"{PATCHES + 1} events of {sid} in PostgreSQL")
    assert [version for version, _, _ in rows] == list(range(1, PATCHES + 2))
    assert {kind for _, kind, _ in rows[1:]} == {UPDATED}
    assert_each_patch_applied_to_the_version_it_read(answered, {v: state for v, _, state in rows})
    assert pipeline.session_rows([sid])[sid] == (
        1 + PATCHES, {**INITIAL, **{key(i): i for i in range(PATCHES)}}, False)
    assert pipeline.totals()["dead_lettered"] == 0


def _create(sid: str) -> CreateRequest:
    return CreateRequest(sid, json.dumps(INITIAL), None)


def _events(pipeline, sid: str) -> list[tuple[int, str, dict]]:
    return [(int(v), kind, state) for v, kind, state in pipeline.query(
        "SELECT version, event_type, state FROM sync_events WHERE session_id = %s ORDER BY version",
        [sid])]



class AlwaysBeaten(SessionStore):
    """A store on which another writer always commits between a patch's read
    and its compare-and-set (a real write, on the real Redis)."""

    def update(self, session_id, state_json, expected_version, *, persisted_version=0,
               ttl_seconds=None, idempotency=None):
        if expected_version is not None:
            super().update(session_id, '{"other":"writer"}', None)
        return super().update(session_id, state_json, expected_version,
                              persisted_version=persisted_version, ttl_seconds=ttl_seconds,
                              idempotency=idempotency)


@pytest.mark.parametrize("if_match", [None, "*"])
def test_a_patch_that_loses_every_attempt_is_a_409_after_a_bounded_number_of_them(
        use_settings, app_settings, redis_single, session_id, counted_pauses, if_match):
    store = AlwaysBeaten(redis_single, channel=app_settings.channel)
    use_settings(app_settings, service=SessionService(store))
    store.create(session_id, json.dumps(INITIAL), 3600)
    headers = {**BEARER, "Content-Type": "application/merge-patch+json"}
    if if_match:
        headers["If-Match"] = if_match
    with app_client() as http:
        response = http.patch(f"/sessions/{session_id}", headers=headers, body='{"state":{"mine":1}}')
        final = http.get(f"/sessions/{session_id}", headers=AUTH).json_body

    assert response.status_code == 409, response.body
    error = response.json_body["error"]
    assert error["code"] == "ConcurrencyError" and "kept changing" in error["message"]
    attempts = sessions.PATCH_ATTEMPTS
    # attempt k read version k, and the other writer made it k + 1
    assert error["details"] == {"session_id": session_id, "expected_version": attempts,
                                "actual_version": attempts + 1}
    assert counted_pauses == list(range(attempts - 1))  # a pause between attempts, none after
    assert final["version"] == 1 + attempts and "mine" not in final["state"]


def test_a_patch_of_a_session_redis_lost_merges_into_the_state_recovered_from_postgresql(pipeline):
    # the key expired or was evicted, its marker left: the patch's read
    # recovers the session from PostgreSQL, as a GET would, then writes
    sid = f"mp-{uuid.uuid4().hex[:12]}"
    service = SessionService(pipeline.store, durable=pipeline.database)
    service.create(_create(sid))
    pipeline.deliver()
    wait_until(lambda: _events(pipeline, sid), timeout=60, what=f"the creation of {sid} in PostgreSQL")
    pipeline.store.client.delete(session_keys(sid)[0])

    patched = service.patch(PatchRequest(sid, {"owner": None, "coupon": "X1"}, LIMIT))

    assert (patched.version, patched.state) == (2, {"items": [], "coupon": "X1"})
    pipeline.deliver()
    rows = wait_until(lambda: (lambda found: found if len(found) == 2 else None)(_events(pipeline, sid)),
                      timeout=60, what=f"version 2 of {sid} in PostgreSQL")
    assert rows[1] == (2, UPDATED, {"items": [], "coupon": "X1"})
