"""The Idempotency-Key header through the HTTP API (Chalice's test client
on the real Redis): a retry gets the original status, body, ETag and
Location, marked ``Idempotent-Replayed: true``; the key reused for another
request is a 422 that writes nothing; a malformed key is a 400."""
from __future__ import annotations

import json

import pytest

from chalicelib.adapters.redis.keys import idempotency_key, session_keys
from chalicelib.domain.idempotency import Idempotency
from tests.functional.utils import assert_error, body
from tests.support.constants import AUTH

REPLAYED = "Idempotent-Replayed"


def keyed(key: str, **headers: str) -> dict[str, str]:
    return {**AUTH, "Idempotency-Key": key, **headers}


def same_outcome(first, again) -> None:
    assert (again.status_code, again.body) == (first.status_code, first.body)
    for header in ("ETag", "Location", "Content-Type"):
        assert again.headers.get(header) == first.headers.get(header)
    assert REPLAYED not in first.headers
    assert again.headers[REPLAYED] == "true"


def test_a_post_retried_with_its_key_gets_the_original_201(api, session_id):
    request = body({"session_id": session_id, "state": {"n": 1}})
    first = api.post("/sessions", headers=keyed('"post-1"'), body=request)
    again = api.post("/sessions", headers=keyed('"post-1"'), body=request)

    assert first.status_code == 201
    same_outcome(first, again)
    # without the key, as before: the session exists
    assert_error(api.post("/sessions", headers=AUTH, body=request), 409, "SessionExists")


def test_a_keyed_post_without_an_id_names_the_same_session_on_retry(api):
    request = body({"state": {"cart": []}})
    key = '"8e03978e-40d5-43e8-bc93-6894a57f9324"'
    first = api.post("/sessions", headers=keyed(key), body=request)
    again = api.post("/sessions", headers=keyed(key), body=request)

    same_outcome(first, again)
    sid = json.loads(first.body)["session_id"]
    assert sid == Idempotency("8e03978e-40d5-43e8-bc93-6894a57f9324", "").session_id()


def test_the_quoted_and_the_bare_form_name_the_same_key(api, session_id):
    request = body({"session_id": session_id, "state": {}})
    first = api.post("/sessions", headers=keyed('"a-key:1"'), body=request)
    again = api.post("/sessions", headers=keyed("a-key:1"), body=request)
    same_outcome(first, again)


def test_a_key_reused_with_another_body_is_a_422_that_writes_nothing(api, redis_single, session_id):
    api.post("/sessions", headers=AUTH, body=body({"session_id": session_id, "state": {"n": 0}}))
    first = api.put(f"/sessions/{session_id}", headers=keyed('"k"', **{"If-Match": '"1"'}),
                    body=body({"state": {"n": 1}}))
    before = redis_single.get(session_keys(session_id)[0])

    other_body = api.put(f"/sessions/{session_id}", headers=keyed('"k"', **{"If-Match": '"2"'}),
                         body=body({"state": {"n": 2}}))
    other_condition = api.put(f"/sessions/{session_id}", headers=keyed('"k"', **{"If-Match": '"2"'}),
                              body=body({"state": {"n": 1}}))
    other_method = api.delete(f"/sessions/{session_id}", headers=keyed('"k"'))

    assert first.status_code == 200
    for response in (other_body, other_condition, other_method):
        error = assert_error(response, 422, "IdempotencyKeyReused")
        assert error["details"] == {"session_id": session_id, "idempotency_key": "k"}
    assert redis_single.get(session_keys(session_id)[0]) == before


def test_a_put_retried_after_another_write_gets_its_own_200_not_a_412(api, session_id):
    api.post("/sessions", headers=AUTH, body=body({"session_id": session_id, "state": {"n": 0}}))
    request = body({"state": {"n": 1}})
    first = api.put(f"/sessions/{session_id}", headers=keyed('"put-1"', **{"If-Match": '"1"'}), body=request)
    api.put(f"/sessions/{session_id}", headers={**AUTH, "If-Match": '"2"'}, body=body({"state": {"n": 2}}))

    again = api.put(f"/sessions/{session_id}", headers=keyed('"put-1"', **{"If-Match": '"1"'}), body=request)

    same_outcome(first, again)
    assert json.loads(again.body)["state"] == {"n": 1} and again.headers["ETag"] == '"2"'


def test_a_put_if_none_match_retried_gets_the_original_201_and_location(api, session_id):
    headers = keyed('"create-by-put"', **{"If-None-Match": "*"})
    first = api.put(f"/sessions/{session_id}", headers=headers, body=body({"state": {"a": 1}}))
    again = api.put(f"/sessions/{session_id}", headers=headers, body=body({"state": {"a": 1}}))

    assert first.status_code == 201 and first.headers["Location"] == f"/sessions/{session_id}"
    same_outcome(first, again)


def test_a_delete_retried_gets_the_original_204_not_a_404(api, session_id):
    api.post("/sessions", headers=AUTH, body=body({"session_id": session_id, "state": {}}))
    headers = keyed('"del-1"', **{"If-Match": '"1"'})
    first = api.delete(f"/sessions/{session_id}", headers=headers)
    again = api.delete(f"/sessions/{session_id}", headers=headers)

    assert (first.status_code, again.status_code) == (204, 204)
    assert again.headers[REPLAYED] == "true" and REPLAYED not in first.headers
    assert_error(api.delete(f"/sessions/{session_id}", headers=AUTH), 404, "SessionNotFound")


@pytest.mark.parametrize("key", ['""', '"' + "k" * 256 + '"', "k" * 256, '"un"terminated"',
                                 '"tab\there"', "two words", '"caf\u00e9"', "a,b", '"back\\slash"'])
def test_a_malformed_key_is_a_400_that_writes_nothing(api, redis_single, session_id, key):
    response = api.post("/sessions", headers=keyed(key),
                        body=body({"session_id": session_id, "state": {}}))
    error = assert_error(response, 400, "ValidationError")
    assert error["details"] == {"field": "Idempotency-Key"}
    assert redis_single.exists(session_keys(session_id)[0]) == 0


def test_the_longest_key_and_escaped_quotes_are_taken(api, redis_single, session_id):
    longest = "k" * 255
    created = api.post("/sessions", headers=keyed(f'"{longest}"'),
                       body=body({"session_id": session_id, "state": {}}))
    updated = api.put(f"/sessions/{session_id}", headers=keyed(r'"say \"hi\" \\ bye"', **{"If-Match": "1"}),
                      body=body({"state": {"n": 1}}))
    assert (created.status_code, updated.status_code) == (201, 200)
    assert redis_single.exists(idempotency_key(session_id, longest),
                               idempotency_key(session_id, r'say "hi" \ bye')) == 2


MERGE_PATCH = {**AUTH, "Content-Type": "application/merge-patch+json"}


def test_a_patch_retried_with_its_key_is_not_merged_again_even_with_its_if_match_now_stale(
        api, redis_single, session_id):
    api.post("/sessions", headers=AUTH, body=body({"session_id": session_id, "state": {"n": 0}}))
    headers = {**MERGE_PATCH, "Idempotency-Key": '"patch-1"', "If-Match": '"1"'}
    unpinned = {**MERGE_PATCH, "Idempotency-Key": '"patch-2"'}
    first = api.patch(f"/sessions/{session_id}", headers=headers, body=body({"state": {"a": 1}}))
    second = api.patch(f"/sessions/{session_id}", headers=unpinned, body=body({"state": {"b": 2}}))

    # the session is at v3: without its key the first patch's retry is a
    # 412, and the second one's would merge again (v4)
    again_first = api.patch(f"/sessions/{session_id}", headers=headers, body=body({"state": {"a": 1}}))
    again_second = api.patch(f"/sessions/{session_id}", headers=unpinned, body=body({"state": {"b": 2}}))
    reused = api.patch(f"/sessions/{session_id}", headers=unpinned, body=body({"state": {"b": 3}}))

    same_outcome(first, again_first)
    same_outcome(second, again_second)
    assert json.loads(again_first.body)["state"] == {"n": 0, "a": 1}
    assert_error(reused, 422, "IdempotencyKeyReused")
    assert api.get(f"/sessions/{session_id}", headers=AUTH).headers["ETag"] == '"3"'
    # after a delete too: the recorded outcome, not a 404
    api.delete(f"/sessions/{session_id}", headers=AUTH)
    same_outcome(second, api.patch(f"/sessions/{session_id}", headers=unpinned,
                                   body=body({"state": {"b": 2}})))


def test_a_touch_retried_with_its_key_gets_the_original_200_and_is_not_touched_again(api, session_id):
    api.post("/sessions", headers=AUTH, body=body({"session_id": session_id, "state": {"n": 0}}))
    first = api.post(f"/sessions/{session_id}/touch", headers=keyed('"touch-1"'), body=b"")

    again = api.post(f"/sessions/{session_id}/touch", headers=keyed('"touch-1"'), body=b"")

    same_outcome(first, again)
    assert first.headers["ETag"] == '"2"'
    current = api.get(f"/sessions/{session_id}", headers=AUTH)
    assert current.headers["ETag"] == '"2"'  # one touch, not two


def test_a_touch_key_reused_with_another_ttl_is_a_422_that_touches_nothing(api, session_id):
    api.post("/sessions", headers=AUTH, body=body({"session_id": session_id, "state": {"n": 0}}))
    api.post(f"/sessions/{session_id}/touch", headers=keyed('"touch-2"'), body=body({"ttl_seconds": 600}))

    reused = api.post(f"/sessions/{session_id}/touch", headers=keyed('"touch-2"'),
                      body=body({"ttl_seconds": 900}))

    assert_error(reused, 422, "IdempotencyKeyReused")
    current = api.get(f"/sessions/{session_id}", headers=AUTH)
    assert current.headers["ETag"] == '"2"' and json.loads(current.body)["ttl_seconds"] == 600
