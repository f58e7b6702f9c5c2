"""PATCH /sessions/{id} (a JSON Merge Patch, RFC 7396, of the session) through
Chalice's test client on the real Redis: what it answers, and that a refused
patch writes nothing (the Redis keys themselves are compared)."""
from __future__ import annotations

import json

import pytest

from chalicelib.adapters.redis.keys import bucket_of, outbox_keys
from chalicelib.config import Settings
from chalicelib.domain.events import CREATED, UPDATED
from tests.functional.utils import RedisView, assert_error, body
from tests.support.constants import AUTH, BEARER

LIMIT = Settings.max_state_bytes  # what app_settings enforces

MERGE = {**BEARER, "Content-Type": "application/merge-patch+json"}


@pytest.fixture
def view(redis_single) -> RedisView:
    return RedisView(redis_single)


@pytest.fixture
def cart(api, session_id) -> str:
    """A session at version 1 with state {"items": ["book"], "coupon": "X1", "user": {"id": 7}}."""
    response = api.post("/sessions", headers=AUTH, body=body({
        "session_id": session_id, "state": {"items": ["book"], "coupon": "X1", "user": {"id": 7}}}))
    assert response.status_code == 201
    return session_id


def patch(api, sid: str, doc, **headers: str):
    raw = doc if isinstance(doc, (str, bytes)) else body(doc)
    return api.patch(f"/sessions/{sid}", headers={**MERGE, **headers}, body=raw)


def test_a_patch_merges_into_the_state_and_answers_the_new_version_with_its_etag(api, view, cart):
    response = patch(api, cart, {"state": {"coupon": None, "user": {"name": "Ada"}, "total": 12.5}})
    assert response.status_code == 200, response.body
    assert response.headers["ETag"] == '"2"' and response.headers["Content-Type"] == "application/json"
    doc = response.json_body
    assert doc["version"] == 2 and doc["session_id"] == cart
    assert doc["state"] == {"items": ["book"], "user": {"id": 7, "name": "Ada"}, "total": 12.5}
    assert api.get(f"/sessions/{cart}", headers=AUTH).json_body == doc
    # written like a PUT: one update event in the outbox, with the merged state
    data = outbox_keys(bucket_of(cart))[1]
    events = [json.loads(view.client.hget(data, eid)) for eid in view.outbox(cart)]
    assert [(e["event_type"], e["version"]) for e in events] == [(CREATED, 1), (UPDATED, 2)]
    assert events[1]["state"] == doc["state"]


def test_a_patch_removes_keys_with_null_and_replaces_arrays_whole(api, cart):
    response = patch(api, cart, {"state": {"items": ["pen"], "coupon": None, "user": None}})
    assert response.status_code == 200
    assert response.json_body["state"] == {"items": ["pen"]}


def test_a_patch_with_the_current_version_in_if_match_applies(api, cart):
    response = patch(api, cart, {"state": {"n": 1}}, **{"If-Match": '"1"'})
    assert response.status_code == 200 and response.json_body["version"] == 2


def test_a_patch_with_a_stale_if_match_is_a_412_and_writes_nothing(api, view, cart):
    patch(api, cart, {"state": {"n": 1}})
    before = view.snapshot(cart)
    error = assert_error(patch(api, cart, {"state": {"n": 2}}, **{"If-Match": '"1"'}),
                         412, "PreconditionFailed")
    assert (error["details"]["expected_version"], error["details"]["actual_version"]) == (1, 2)
    assert view.snapshot(cart) == before


def test_if_match_star_patches_a_live_session_and_fails_on_an_absent_one(api, view, cart, session_id):
    assert patch(api, cart, {"state": {"n": 1}}, **{"If-Match": "*"}).status_code == 200
    assert_error(patch(api, session_id + "-x", {"state": {}}, **{"If-Match": "*"}),
                 412, "PreconditionFailed")
    view.assert_untouched(session_id + "-x")


def test_a_patch_without_if_match_applies_to_whatever_version_is_current(api, cart):
    for n in range(3):
        assert patch(api, cart, {"state": {f"k{n}": n}}).status_code == 200
    doc = api.get(f"/sessions/{cart}", headers=AUTH).json_body
    assert doc["version"] == 4 and {"k0": 0, "k1": 1, "k2": 2}.items() <= doc["state"].items()


def test_an_empty_patch_writes_a_new_version_of_the_same_state(api, cart):
    response = patch(api, cart, {})
    assert response.status_code == 200 and response.json_body["version"] == 2
    assert response.json_body["state"] == {"items": ["book"], "coupon": "X1", "user": {"id": 7}}


@pytest.mark.parametrize("content_type", ["application/json", "text/plain",
                                          "application/json-patch+json", None])
def test_a_patch_not_sent_as_a_merge_patch_is_a_415_naming_the_type(api, view, cart, content_type):
    before = view.snapshot(cart)
    headers = {**BEARER} if content_type is None else {**BEARER, "Content-Type": content_type}
    response = api.patch(f"/sessions/{cart}", headers=headers, body=body({"state": {"n": 1}}))
    error = assert_error(response, 415, "UnsupportedMediaType")
    assert "application/merge-patch+json" in error["message"]
    assert view.snapshot(cart) == before


@pytest.mark.parametrize("content_type", ["*/*", "application/merge-patch+json; charset=latin-1"])
def test_a_content_type_chalice_lets_through_is_still_refused_with_a_415(api, view, cart, content_type):
    before = view.snapshot(cart)
    response = api.patch(f"/sessions/{cart}", headers={**BEARER, "Content-Type": content_type},
                         body=body({"state": {"n": 1}}))
    assert "application/merge-patch+json" in assert_error(response, 415, "UnsupportedMediaType")["message"]
    assert view.snapshot(cart) == before


def test_a_charset_parameter_of_utf8_is_accepted(api, cart):
    response = api.patch(f"/sessions/{cart}", body=body({"state": {"n": 1}}),
                         headers={**BEARER, "Content-Type": "application/merge-patch+json; charset=utf-8"})
    assert response.status_code == 200


@pytest.mark.parametrize("raw, code", [
    ('{"state":', "ValidationError"), ("[1]", "ValidationError"), ('"x"', "ValidationError"),
    ('{"state":null}', "ValidationError"), ('{"state":[1]}', "ValidationError"),
    ('{"version":9}', "ValidationError"), ('{"expires_at":"2030-01-01T00:00:00.000Z"}', "ValidationError"),
    ('{"ttl_seconds":null}', "ValidationError"), ('{"ttl_seconds":0}', "ValidationError"),
    ('{"ttl_seconds":"60"}', "ValidationError"), ('{"owner_id":"someone"}', "ValidationError"),
    ('{"other":1}', "ValidationError"), ('{"state":{"a":"\\u0000"}}', "ValidationError"),
    ('{"state":{"a":1e999}}', "ValidationError"), ("", "ValidationError"),
])
def test_a_malformed_patch_is_a_400_and_writes_nothing(api, view, cart, raw, code):
    before = view.snapshot(cart)
    assert_error(patch(api, cart, raw), 400, code)
    assert view.snapshot(cart) == before


def test_a_bad_if_match_is_a_400(api, view, cart):
    before = view.snapshot(cart)
    assert_error(patch(api, cart, {"state": {}}, **{"If-Match": 'W/"1"'}), 400, "ValidationError")
    assert view.snapshot(cart) == before


def test_a_patch_over_the_state_limit_is_a_413(api, view, cart):
    before = view.snapshot(cart)
    assert_error(patch(api, cart, {"state": {"a": "x" * LIMIT}}), 413, "PayloadTooLarge")
    assert view.snapshot(cart) == before


def test_a_patch_whose_result_is_over_the_limit_is_a_413_and_writes_nothing(api, view, cart):
    half = "x" * (LIMIT // 2)
    assert patch(api, cart, {"state": {"a": half}}).status_code == 200
    before = view.snapshot(cart)
    error = assert_error(patch(api, cart, {"state": {"b": half}}), 413, "PayloadTooLarge")
    assert error["details"]["limit"] == LIMIT
    assert view.snapshot(cart) == before
    # the same bytes fit once the other half goes
    assert patch(api, cart, {"state": {"a": None, "b": half}}).status_code == 200


def test_a_patch_of_an_unknown_session_is_a_404_and_creates_nothing(api, view, session_id):
    error = assert_error(patch(api, session_id, {"state": {"n": 1}}), 404, "SessionNotFound")
    assert error["details"] == {"session_id": session_id, "deleted": False}
    view.assert_untouched(session_id)


def test_a_patch_of_a_deleted_session_is_a_404_saying_so(api, view, cart):
    assert api.delete(f"/sessions/{cart}", headers=AUTH).status_code == 204
    before = view.snapshot(cart)
    error = assert_error(patch(api, cart, {"state": {"n": 1}}), 404, "SessionNotFound")
    assert error["details"]["deleted"] is True
    assert view.snapshot(cart) == before


def test_a_patch_of_ttl_seconds_sets_a_new_lifetime_from_now_and_keeps_the_state(api, cart):
    before = json.loads(api.get(f"/sessions/{cart}", headers=BEARER).body)
    response = patch(api, cart, {"ttl_seconds": 120})
    assert response.status_code == 200, response.body
    after = json.loads(response.body)
    assert after["ttl_seconds"] == 120 and after["version"] == before["version"] + 1
    assert after["state"] == before["state"]
    assert after["expires_at"] < before["expires_at"]  # 120 s from now, not the default hour


def test_a_patch_of_state_and_ttl_changes_both_in_one_version(api, cart):
    response = patch(api, cart, {"state": {"coupon": None}, "ttl_seconds": 7200})
    assert response.status_code == 200, response.body
    after = json.loads(response.body)
    assert after["ttl_seconds"] == 7200 and "coupon" not in after["state"] and after["version"] == 2
