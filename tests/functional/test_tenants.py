"""Tenants and scopes through the app (Chalice's test client runs the
authorizer as API Gateway would) on the real Redis: two tenants' keys on
one server cannot see or change each other's sessions through any route,
and a key without a route's scope gets 403 MissingScope, touching nothing."""
from __future__ import annotations

import json
import uuid

import pytest
import yaml

from chalicelib.adapters.redis.keys import owner_index_key, session_keys
from chalicelib.config import Settings
from chalicelib.domain.keys import SCOPES
from tests.functional.utils import RedisView, assert_error
from tests.support.app import app_client
from tests.support.constants import AUTH, PROJECT_DIR, REDIS_TEST_URL, TEST_CHANNEL
from tests.support.keys import key_set

MERGE = {"Content-Type": "application/merge-patch+json"}


@pytest.fixture
def keys():
    keyset, made = key_set(("acme", SCOPES), ("beta", SCOPES), ("acme", ("read",)),
                           ("default", SCOPES))
    return keyset, dict(zip(("acme", "beta", "acme_read", "default"), made, strict=True))


@pytest.fixture
def http(use_settings, redis_single, keys):
    use_settings(Settings(redis_url=REDIS_TEST_URL, api_keys=keys[0], channel=TEST_CHANNEL))
    with app_client() as client:
        yield client


@pytest.fixture
def key(keys):
    return keys[1]


def _sid() -> str:
    return f"s-{uuid.uuid4().hex[:12]}"


def _create(http, key, sid: str, owner: str | None = None, state=None) -> dict:
    doc = {"session_id": sid, "state": state or {"n": 1}, **({"owner_id": owner} if owner else {})}
    response = http.post("/sessions", headers=key.headers(), body=json.dumps(doc))
    assert response.status_code == 201, response.body
    return response.json_body


# --- isolation ---------------------------------------------------------------------

def test_another_tenant_s_key_gets_404_on_every_route_of_a_session_and_changes_nothing(
        http, key, redis_single):
    sid = _sid()
    _create(http, key["acme"], sid)
    internal = f"acme/{sid}"
    before = RedisView(redis_single).snapshot(internal)
    beta = key["beta"]
    calls = [
        http.get(f"/sessions/{sid}", headers=beta.headers()),
        http.put(f"/sessions/{sid}", headers=beta.headers(),
                 body=json.dumps({"state": {"x": 1}, "expected_version": 1})),
        http.put(f"/sessions/{sid}", headers=beta.headers(**{"If-Match": "*"}), body='{"state": {}}'),
        http.patch(f"/sessions/{sid}", headers={**beta.headers(), **MERGE}, body='{"state": {"x": 1}}'),
        http.delete(f"/sessions/{sid}", headers=beta.headers()),
        http.post(f"/sessions/{sid}/touch", headers=beta.headers()),
        http.get(f"/sessions/{sid}/events", headers=beta.headers()),
    ]
    for response in calls:
        assert response.status_code in (404, 412), response.body
        assert "acme" not in response.body.decode()
    assert [json.loads(c.body)["code"] for c in calls] == [
        "SessionNotFound", "SessionNotFound", "PreconditionFailed", "SessionNotFound",
        "SessionNotFound", "SessionNotFound", "SessionNotFound"]
    assert RedisView(redis_single).snapshot(internal) == before
    # and the owner of the session still reads it, untouched
    assert http.get(f"/sessions/{sid}", headers=key["acme"].headers()).json_body["version"] == 1


def test_the_same_id_in_two_tenants_is_two_sessions(http, key, redis_single):
    sid = _sid()
    a = _create(http, key["acme"], sid, state={"who": "acme"})
    b = _create(http, key["beta"], sid, state={"who": "beta"})
    assert a["session_id"] == b["session_id"] == sid  # ids are the client's own
    assert http.get(f"/sessions/{sid}", headers=key["acme"].headers()).json_body["state"] == {"who": "acme"}
    assert http.get(f"/sessions/{sid}", headers=key["beta"].headers()).json_body["state"] == {"who": "beta"}
    # inside, each is kept under its tenant
    assert redis_single.get(session_keys(f"acme/{sid}")[0]) is not None
    assert redis_single.get(session_keys(f"beta/{sid}")[0]) is not None
    assert redis_single.get(session_keys(sid)[0]) is None


def test_the_default_tenant_s_sessions_are_today_s_keys_read_by_plaintext_and_new_keys_alike(
        http, key, redis_single):
    sid = _sid()
    # a session written with the plaintext key (as before tenants existed)
    assert http.post("/sessions", headers=AUTH, body=json.dumps({"session_id": sid, "state": {}})
                     ).status_code == 201
    assert redis_single.get(session_keys(sid)[0]) is not None  # no prefix: today's key
    read = http.get(f"/sessions/{sid}", headers=key["default"].headers())
    assert read.status_code == 200 and read.json_body["session_id"] == sid
    assert http.get(f"/sessions/{sid}", headers=key["acme"].headers()).status_code == 404


def test_responses_and_errors_show_the_client_s_ids_only(http, key):
    sid, owner = _sid(), f"u-{uuid.uuid4().hex[:8]}"
    created = http.post("/sessions", headers=key["acme"].headers(),
                        body=json.dumps({"session_id": sid, "state": {}, "owner_id": owner}))
    assert created.json_body["session_id"] == sid and created.json_body["owner_id"] == owner
    assert created.headers["Location"] == f"/sessions/{sid}"
    conflict = http.put(f"/sessions/{sid}", headers=key["acme"].headers(),
                        body=json.dumps({"state": {}, "expected_version": 7}))
    error = assert_error(conflict, 409, "ConcurrencyError")
    assert error["details"]["session_id"] == sid and "acme" not in error["message"]
    again = http.post("/sessions", headers=key["acme"].headers(),
                      body=json.dumps({"session_id": sid, "state": {}}))
    error = assert_error(again, 409, "SessionExists")
    assert error["details"]["session_id"] == sid and f"'{sid}'" in error["message"]
    listed = http.get(f"/owners/{owner}/sessions", headers=key["acme"].headers()).json_body
    assert listed["owner_id"] == owner and [s["session_id"] for s in listed["sessions"]] == [sid]
    assert listed["sessions"][0]["owner_id"] == owner


def test_an_owner_s_listing_and_revoke_all_reach_only_the_key_s_tenant(http, key, redis_single):
    owner = f"u-{uuid.uuid4().hex[:8]}"
    acme_ids = sorted(_sid() for _ in range(3))
    beta_ids = sorted(_sid() for _ in range(2))
    for sid in acme_ids:
        _create(http, key["acme"], sid, owner)
    for sid in beta_ids:
        _create(http, key["beta"], sid, owner)
    shared = acme_ids[0]
    _create(http, key["beta"], shared, owner)  # the same id, beta's own

    def listed(k):
        page = http.get(f"/owners/{owner}/sessions?limit=50", headers=k.headers()).json_body
        return sorted(s["session_id"] for s in page["sessions"])

    assert listed(key["acme"]) == acme_ids
    assert listed(key["beta"]) == sorted([*beta_ids, shared])
    assert listed(key["default"]) == []

    revoked = http.delete(f"/owners/{owner}/sessions", headers=key["beta"].headers()).json_body
    assert revoked == {"owner_id": owner, "deleted": 3, "blocked": 0, "remaining": False}
    assert listed(key["beta"]) == []
    assert listed(key["acme"]) == acme_ids
    for sid in acme_ids:
        assert http.get(f"/sessions/{sid}", headers=key["acme"].headers()).status_code == 200
    assert redis_single.zcard(owner_index_key(f"acme/{owner}")) == 3
    assert redis_single.exists(owner_index_key(owner)) == 0  # the default tenant's owner: untouched


def test_an_idempotency_key_is_its_tenant_s(http, key):
    headers = {"Idempotency-Key": "retry-1"}
    a = http.post("/sessions", headers=key["acme"].headers(**headers), body='{"state": {"t": "a"}}')
    b = http.post("/sessions", headers=key["beta"].headers(**headers), body='{"state": {"t": "b"}}')
    assert a.status_code == b.status_code == 201
    assert "Idempotent-Replayed" not in b.headers  # not acme's write replayed to beta
    assert a.json_body["session_id"] == b.json_body["session_id"]  # derived from the key alone
    assert http.get(f"/sessions/{a.json_body['session_id']}",
                    headers=key["beta"].headers()).json_body["state"] == {"t": "b"}


# --- scopes ------------------------------------------------------------------------

def _operations() -> list[tuple[str, str, str]]:
    spec = yaml.safe_load((PROJECT_DIR / "docs" / "openapi.yaml").read_text())
    return sorted((path, method.upper(), operation["x-scope"]) for path, item in spec["paths"].items()
                  for method, operation in item.items() if isinstance(operation, dict)
                  and "x-scope" in operation)


def _call(http, key, path: str, method: str, sid: str, owner: str):
    url = path.replace("{session_id}", sid).replace("{owner_id}", owner)
    headers = key.headers()
    body = None
    if method == "POST" and path == "/sessions":
        body = json.dumps({"state": {}, "session_id": f"{sid}-new"})
    elif method == "PUT":
        body = json.dumps({"state": {"put": 1}, "expected_version": 1})
    elif method == "PATCH":
        headers.update(MERGE)
        body = '{"state": {"patched": 1}}'
    elif method == "DELETE" and "{session_id}" in path:
        headers["If-Match"] = '"1"'
    return http.request(method, url, headers=headers, body=body)


def test_the_spec_names_a_scope_for_every_authorized_operation():
    assert {scope for _, _, scope in _operations()} == set(SCOPES)
    assert len(_operations()) == 9


@pytest.mark.parametrize("path, method, scope", _operations())
def test_a_key_without_the_route_s_scope_gets_403_naming_it_and_changes_nothing(
        use_settings, redis_single, path, method, scope):
    others = tuple(s for s in SCOPES if s != scope)
    tenant = f"t-{uuid.uuid4().hex[:8]}"  # its keys alone are looked at: the test Redis is shared
    keyset, (full, lacking, only) = key_set((tenant, SCOPES), (tenant, others), (tenant, (scope,)))
    use_settings(Settings(redis_url=REDIS_TEST_URL, api_keys=keyset, channel=TEST_CHANNEL))
    sid, owner = _sid(), f"u-{uuid.uuid4().hex[:8]}"

    def tenant_state():
        """Every key of the tenant (sessions, markers, owner index,
        idempotency records) and the session's outbox entries."""
        keys = sorted(redis_single.scan_iter(match=f"*{tenant}/*", count=1000))
        return [(k, redis_single.dump(k)) for k in keys], RedisView(redis_single).outbox(f"{tenant}/{sid}")

    with app_client() as http:
        _create(http, full, sid, owner)
        before = tenant_state()
        assert before[0], "the tenant's keys are found"
        refused = _call(http, lacking, path, method, sid, owner)
        error = assert_error(refused, 403, "MissingScope")
        assert error["details"] == {"scope": scope, "granted": sorted(others)}
        assert tenant_state() == before
        allowed = _call(http, only, path, method, sid, owner)
        assert allowed.status_code != 403, allowed.body


def test_a_read_only_key_reads_and_cannot_write(http, key):
    sid = _sid()
    _create(http, key["acme"], sid)
    reader = key["acme_read"]
    assert http.get(f"/sessions/{sid}", headers=reader.headers()).status_code == 200
    refused = http.put(f"/sessions/{sid}", headers=reader.headers(),
                       body=json.dumps({"state": {"x": 1}, "expected_version": 1}))
    assert assert_error(refused, 403, "MissingScope")["details"]["scope"] == "write"
    # the scope is checked first: another tenant's id gets the same 403, saying nothing of it
    elsewhere = http.put(f"/sessions/{_sid()}", headers=reader.headers(),
                         body=json.dumps({"state": {"x": 1}, "expected_version": 1}))
    assert elsewhere.status_code == 403 and json.loads(elsewhere.body)["code"] == "MissingScope"
