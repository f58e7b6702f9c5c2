"""TENANT_MAX_SESSIONS through the app on the real Redis: a tenant at its
cap gets 429 SessionLimitReached with Retry-After and nothing is written;
other tenants are not held by it; a place frees up when a session is
deleted or its lifetime ends; creates racing for the last place never
pass the cap."""
from __future__ import annotations

import json
import threading
import time
import uuid

import pytest

from chalicelib.adapters.redis.keys import session_keys, tenant_sessions_key
from chalicelib.config import Settings
from chalicelib.domain.keys import SCOPES
from tests.functional.utils import assert_error
from tests.support.app import app_client
from tests.support.constants import REDIS_TEST_URL, TEST_CHANNEL
from tests.support.keys import key_set

CAP = 3


@pytest.fixture
def capped(use_settings, redis_single):
    # tenants of the test's own: the test Redis is shared by the session's tests
    run = uuid.uuid4().hex[:8]
    keyset, (acme, beta) = key_set((f"acme-{run}", SCOPES), (f"beta-{run}", SCOPES))
    use_settings(Settings(redis_url=REDIS_TEST_URL, api_keys=keyset, channel=TEST_CHANNEL,
                          tenant_max_sessions=CAP))
    with app_client() as http:
        yield http, acme, beta


def _post(http, key, sid: str, **extra):
    return http.post("/sessions", headers=key.headers(),
                     body=json.dumps({"session_id": sid, "state": {}, **extra}))


def _sid() -> str:
    return f"c-{uuid.uuid4().hex[:10]}"


def test_a_tenant_at_its_cap_gets_429_with_retry_after_and_nothing_is_written(capped, redis_single):
    http, acme, beta = capped
    for _ in range(CAP):
        assert _post(http, acme, _sid(), ttl_seconds=600).status_code == 201
    refused_id = _sid()
    refused = _post(http, acme, refused_id)
    error = assert_error(refused, 429, "SessionLimitReached")
    assert error["details"]["limit"] == CAP and error["details"]["tenant"] == acme.tenant
    # the first lifetime ends in about 600 s: Retry-After says so (never 0)
    assert 1 <= int(refused.headers["Retry-After"]) <= 600
    assert redis_single.get(session_keys(f"{acme.tenant}/{refused_id}")[0]) is None
    assert redis_single.zcard(tenant_sessions_key(acme.tenant)) == CAP
    # If-None-Match: * creates too, and is capped the same way
    put = http.put(f"/sessions/{_sid()}", headers=acme.headers(**{"If-None-Match": "*"}),
                   body='{"state": {}}')
    assert_error(put, 429, "SessionLimitReached")
    # another tenant is not held by acme's cap
    assert _post(http, beta, _sid()).status_code == 201


def test_a_deleted_session_and_a_failed_create_give_their_place_back(capped):
    http, acme, _ = capped
    ids = [_sid() for _ in range(CAP)]
    for sid in ids:
        assert _post(http, acme, sid).status_code == 201
    # a create of a taken id writes nothing, and takes no second place
    assert_error(_post(http, acme, ids[0]), 409, "SessionExists")
    assert http.delete(f"/sessions/{ids[0]}", headers=acme.headers(**{"If-Match": '"1"'})).status_code == 204
    assert _post(http, acme, _sid()).status_code == 201
    assert_error(_post(http, acme, _sid()), 429, "SessionLimitReached")


def test_a_session_whose_lifetime_ended_frees_its_place(capped):
    http, acme, _ = capped
    for _ in range(CAP):
        assert _post(http, acme, _sid(), ttl_seconds=1).status_code == 201
    assert_error(_post(http, acme, _sid()), 429, "SessionLimitReached")
    time.sleep(1.5)  # past every lifetime: only "ended" is asserted, not when
    assert _post(http, acme, _sid()).status_code == 201


def test_a_write_that_slides_the_lifetime_keeps_the_place(capped, redis_single):
    http, acme, _ = capped
    sid = _sid()
    assert _post(http, acme, sid, ttl_seconds=1).status_code == 201
    touched = http.post(f"/sessions/{sid}/touch", headers=acme.headers(), body='{"ttl_seconds": 600}')
    assert touched.status_code == 200, touched.body
    ends = redis_single.zscore(tenant_sessions_key(acme.tenant), f"{acme.tenant}/{sid}")
    assert ends > (time.time() + 300) * 1000  # the touch's new end, not the create's


def test_creates_racing_for_the_last_places_never_pass_the_cap(capped, redis_single):
    http, acme, _ = capped
    results: list[int] = []
    lock = threading.Lock()

    def create() -> None:
        status = _post(http, acme, _sid()).status_code
        with lock:
            results.append(status)

    threads = [threading.Thread(target=create) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(results) == [201] * CAP + [429] * (12 - CAP)
    assert redis_single.zcard(tenant_sessions_key(acme.tenant)) == CAP
