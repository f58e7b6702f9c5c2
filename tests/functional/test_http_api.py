"""The HTTP API through Chalice's test client (API Gateway event in, response
out), on the real Redis (db 1).  Every bad input gets a 4xx in the one error
shape and writes nothing: the tests look at the Redis keys themselves."""
from __future__ import annotations

import pytest

from chalicelib.adapters.redis.keys import session_keys
from chalicelib.config import Settings
from chalicelib.domain.keys import FULL_ACCESS
from tests.functional.utils import RedisView, assert_error, body
from tests.support.constants import API_KEY, AUTH

LIMIT = Settings.max_state_bytes  # what app_settings enforces


@pytest.fixture
def redis_view(redis_single) -> RedisView:
    return RedisView(redis_single)


@pytest.fixture
def existing(api, session_id) -> str:
    """A session at version 1 with state {"n": 1}."""
    response = api.post("/sessions", headers=AUTH,
                        body=body({"session_id": session_id, "state": {"n": 1}}))
    assert response.status_code == 201
    return session_id


# -- every route, the happy paths ----------------------------------------------

def test_post_creates_version_1_with_201_etag_and_location(api, redis_view, session_id):
    response = api.post("/sessions", headers=AUTH,
                        body=body({"session_id": session_id, "state": {"cart": ["book"]},
                                   "ttl_seconds": 120}))
    assert response.status_code == 201
    doc = response.json_body
    assert doc["session_id"] == session_id and doc["version"] == 1
    assert doc["state"] == {"cart": ["book"]} and doc["ttl_seconds"] == 120
    assert doc["created_at"] == doc["updated_at"] and doc["created_at"].endswith("Z")
    assert response.headers["ETag"] == '"1"'
    assert response.headers["Location"] == f"/sessions/{session_id}"
    assert redis_view.raw(session_id) is not None
    assert 115 <= redis_view.client.ttl(session_keys(session_id)[0]) <= 120


def test_post_without_an_id_generates_one(api):
    response = api.post("/sessions", headers=AUTH, body=body({"state": {}}))
    assert response.status_code == 201
    sid = response.json_body["session_id"]
    assert api.get(f"/sessions/{sid}", headers=AUTH).json_body["session_id"] == sid


def test_post_with_an_existing_id_is_409_and_keeps_the_session(api, redis_view, existing):
    before = redis_view.snapshot(existing)
    response = api.post("/sessions", headers=AUTH, body=body({"session_id": existing, "state": {}}))
    error = assert_error(response, 409, "SessionExists")
    assert error["details"]["version"] == 1
    assert redis_view.snapshot(existing) == before


def test_get_returns_the_session_with_its_version_as_etag(api, existing):
    response = api.get(f"/sessions/{existing}", headers=AUTH)
    assert response.status_code == 200
    assert response.headers["ETag"] == '"1"'
    assert response.json_body["state"] == {"n": 1} and response.json_body["version"] == 1


def test_get_of_an_unknown_session_is_404(api, redis_view, session_id):
    error = assert_error(api.get(f"/sessions/{session_id}", headers=AUTH), 404, "SessionNotFound")
    assert error["details"] == {"session_id": session_id, "deleted": False}
    redis_view.assert_untouched(session_id)


def test_a_percent_encoded_path_id_addresses_the_decoded_session(api, redis_view, session_id):
    sid = f"{session_id}:enc"
    encoded = sid.replace(":", "%3A")
    created = api.post("/sessions", headers=AUTH, body=body({"session_id": sid, "state": {"n": 1}}))
    assert created.status_code == 201 and created.json_body["session_id"] == sid

    read = api.get(f"/sessions/{encoded}", headers=AUTH)
    updated = api.put(f"/sessions/{encoded}", headers=AUTH,
                      body=body({"state": {"n": 2}, "expected_version": 1}))
    deleted = api.delete(f"/sessions/{encoded}", headers={**AUTH, "If-Match": '"2"'})

    assert read.status_code == 200 and read.json_body["session_id"] == sid
    assert updated.status_code == 200 and (updated.json_body["session_id"], updated.json_body["version"]) == (
        sid, 2)
    assert deleted.status_code == 204
    assert redis_view.marker(sid) == b"3|D"  # all three addressed the decoded id
    redis_view.assert_untouched(encoded)


def test_put_with_expected_version_in_the_body_returns_the_new_version(api, existing):
    response = api.put(f"/sessions/{existing}", headers=AUTH,
                       body=body({"state": {"n": 2}, "expected_version": 1}))
    assert response.status_code == 200
    assert response.json_body["version"] == 2 and response.json_body["state"] == {"n": 2}
    assert response.headers["ETag"] == '"2"'


def test_the_etag_of_a_get_is_the_if_match_of_the_next_put(api, existing):
    etag = api.get(f"/sessions/{existing}", headers=AUTH).headers["ETag"]
    first = api.put(f"/sessions/{existing}", headers={**AUTH, "If-Match": etag},
                    body=body({"state": {"n": 2}}))
    assert first.status_code == 200 and first.headers["ETag"] == '"2"'
    # a second writer holding the same ETag loses, and learns the current version
    second = api.put(f"/sessions/{existing}", headers={**AUTH, "If-Match": etag},
                     body=body({"state": {"n": "lost"}}))
    error = assert_error(second, 412, "PreconditionFailed")
    assert error["details"]["expected_version"] == 1 and error["details"]["actual_version"] == 2
    third = api.put(f"/sessions/{existing}", headers={**AUTH, "If-Match": first.headers["ETag"]},
                    body=body({"state": {"n": 3}}))
    assert third.status_code == 200 and third.json_body["version"] == 3
    assert api.get(f"/sessions/{existing}", headers=AUTH).json_body["state"] == {"n": 3}


def test_a_put_with_a_stale_version_is_409_and_changes_nothing(api, redis_view, existing):
    api.put(f"/sessions/{existing}", headers=AUTH, body=body({"state": {"n": 2}, "expected_version": 1}))
    before = redis_view.snapshot(existing)
    response = api.put(f"/sessions/{existing}", headers=AUTH,
                       body=body({"state": {"n": 9}, "expected_version": 1}))
    assert_error(response, 409, "ConcurrencyError")
    assert redis_view.snapshot(existing) == before


def test_a_put_on_an_unknown_session_is_404_and_creates_nothing(api, redis_view, session_id):
    response = api.put(f"/sessions/{session_id}", headers=AUTH,
                       body=body({"state": {}, "expected_version": 1}))
    assert_error(response, 404, "SessionNotFound")
    redis_view.assert_untouched(session_id)


def test_delete_answers_204_and_the_session_stays_deleted(api, existing):
    response = api.delete(f"/sessions/{existing}", headers=AUTH)
    assert response.status_code == 204 and response.body == b""
    error = assert_error(api.get(f"/sessions/{existing}", headers=AUTH), 404, "SessionNotFound")
    assert error["details"]["deleted"] is True
    assert_error(api.put(f"/sessions/{existing}", headers=AUTH,
                         body=body({"state": {}, "expected_version": 1})), 404, "SessionNotFound")
    recreate = api.post("/sessions", headers=AUTH, body=body({"session_id": existing, "state": {}}))
    assert assert_error(recreate, 409, "SessionExists")["details"]["deleted"] is True
    assert_error(api.delete(f"/sessions/{existing}", headers=AUTH), 404, "SessionNotFound")


def test_delete_with_if_match_is_conditional(api, redis_view, existing):
    before = redis_view.snapshot(existing)
    stale = api.delete(f"/sessions/{existing}", headers={**AUTH, "If-Match": '"7"'})
    assert assert_error(stale, 412, "PreconditionFailed")["details"]["actual_version"] == 1
    assert redis_view.snapshot(existing) == before
    assert api.delete(f"/sessions/{existing}", headers={**AUTH, "If-Match": '"1"'}).status_code == 204


# -- conditional requests (RFC 9110 section 13) -----------------------------------

def test_a_failed_if_match_is_a_412_and_a_failed_expected_version_a_409(api, redis_view, existing):
    api.put(f"/sessions/{existing}", headers=AUTH, body=body({"state": {"n": 2}, "expected_version": 1}))
    before = redis_view.snapshot(existing)

    header = api.put(f"/sessions/{existing}", headers={**AUTH, "If-Match": '"1"'},
                     body=body({"state": {"n": "lost"}}))
    in_body = api.put(f"/sessions/{existing}", headers=AUTH,
                      body=body({"state": {"n": "lost"}, "expected_version": 1}))

    failed = assert_error(header, 412, "PreconditionFailed")
    assert failed["details"] == {"session_id": existing, "precondition": 'If-Match: "1"',
                                 "expected_version": 1, "actual_version": 2}
    assert assert_error(in_body, 409, "ConcurrencyError")["details"]["actual_version"] == 2
    assert redis_view.snapshot(existing) == before


def test_if_match_star_updates_whatever_version_is_current(api, existing):
    api.put(f"/sessions/{existing}", headers=AUTH, body=body({"state": {"n": 2}, "expected_version": 1}))

    response = api.put(f"/sessions/{existing}", headers={**AUTH, "If-Match": "*"},
                       body=body({"state": {"n": 3}}))

    assert response.status_code == 200, response.body
    assert response.json_body["version"] == 3 and response.headers["ETag"] == '"3"'
    assert api.get(f"/sessions/{existing}", headers=AUTH).json_body["state"] == {"n": 3}


@pytest.mark.parametrize("deleted", [False, True], ids=["never created", "deleted"])
def test_if_match_star_without_a_live_session_is_a_412_and_writes_nothing(api, redis_view, session_id,
                                                                          deleted):
    if deleted:
        api.post("/sessions", headers=AUTH, body=body({"session_id": session_id, "state": {}}))
        api.delete(f"/sessions/{session_id}", headers=AUTH)
    before = redis_view.snapshot(session_id)

    put = api.put(f"/sessions/{session_id}", headers={**AUTH, "If-Match": "*"}, body=body({"state": {}}))
    delete = api.delete(f"/sessions/{session_id}", headers={**AUTH, "If-Match": "*"})

    for response in (put, delete):
        details = assert_error(response, 412, "PreconditionFailed")["details"]
        assert details["precondition"] == "If-Match: *" and details["actual_version"] is None
    assert redis_view.snapshot(session_id) == before


def test_if_match_star_deletes_whatever_version_is_current(api, redis_view, existing):
    api.put(f"/sessions/{existing}", headers=AUTH, body=body({"state": {"n": 2}, "expected_version": 1}))
    response = api.delete(f"/sessions/{existing}", headers={**AUTH, "If-Match": "*"})
    assert response.status_code == 204
    assert redis_view.marker(existing) == b"3|D"


@pytest.mark.parametrize("method", ["PUT", "DELETE"])
def test_a_weak_if_match_is_a_400_that_says_so_and_writes_nothing(api, redis_view, existing, method):
    before = redis_view.snapshot(existing)
    response = api.request(method, f"/sessions/{existing}", headers={**AUTH, "If-Match": 'W/"1"'},
                           body=body({"state": {"n": 2}}).encode())
    error = assert_error(response, 400, "ValidationError")
    assert "strong" in error["message"] and error["details"] == {"field": "If-Match"}
    assert redis_view.snapshot(existing) == before


@pytest.mark.parametrize("header", ['"1"', 'W/"1"', '"7", "1"', "*"])
def test_a_get_with_a_matching_if_none_match_is_a_304_with_the_etag_and_no_body(api, existing, header):
    response = api.get(f"/sessions/{existing}", headers={**AUTH, "If-None-Match": header})
    assert response.status_code == 304
    assert response.body == b"" and "Content-Type" not in response.headers
    assert response.headers["ETag"] == '"1"'


def test_a_get_with_an_if_none_match_of_another_version_gets_the_session(api, existing):
    response = api.get(f"/sessions/{existing}", headers={**AUTH, "If-None-Match": '"2", W/"0"'})
    assert response.status_code == 200 and response.json_body["version"] == 1


@pytest.mark.parametrize("header", ["1", '"1', "", '"1";"2"'])
def test_a_malformed_if_none_match_on_a_get_is_a_400(api, existing, header):
    response = api.get(f"/sessions/{existing}", headers={**AUTH, "If-None-Match": header})
    assert assert_error(response, 400, "ValidationError")["details"] == {"field": "If-None-Match"}


def test_a_put_with_if_none_match_star_creates_an_absent_session(api, redis_view, session_id):
    response = api.put(f"/sessions/{session_id}", headers={**AUTH, "If-None-Match": "*"},
                       body=body({"state": {"cart": []}}))
    assert response.status_code == 201, response.body
    assert response.json_body["version"] == 1 and response.json_body["state"] == {"cart": []}
    assert response.headers["ETag"] == '"1"'
    assert response.headers["Location"] == f"/sessions/{session_id}"
    # created as a POST creates: marker and outbox entry (the event) included
    assert redis_view.marker(session_id) == b"1|L"
    assert redis_view.outbox(session_id) == [f"{session_id}:1".encode()]


@pytest.mark.parametrize("deleted", [False, True], ids=["live", "deleted"])
def test_a_put_with_if_none_match_star_on_an_existing_session_is_a_412(api, redis_view, existing, deleted):
    if deleted:
        api.delete(f"/sessions/{existing}", headers=AUTH)
    before = redis_view.snapshot(existing)
    response = api.put(f"/sessions/{existing}", headers={**AUTH, "If-None-Match": "*"},
                       body=body({"state": {"n": "again"}}))
    details = assert_error(response, 412, "PreconditionFailed")["details"]
    assert details["precondition"] == "If-None-Match: *"
    assert details["actual_version"] == (None if deleted else 1)
    assert redis_view.snapshot(existing) == before


def test_a_204_has_no_content_type(api, existing):
    response = api.delete(f"/sessions/{existing}", headers=AUTH)
    assert response.status_code == 204 and "Content-Type" not in response.headers


def test_delete_of_an_unknown_session_is_404_and_writes_no_tombstone(api, redis_view, session_id):
    assert_error(api.delete(f"/sessions/{session_id}", headers=AUTH), 404, "SessionNotFound")
    redis_view.assert_untouched(session_id)


def test_events_of_a_session_without_persisted_history_is_404(api, existing):
    # this app has no PostgreSQL configured: there is no persisted history
    assert_error(api.get(f"/sessions/{existing}/events", headers=AUTH), 404, "SessionNotFound")


def test_health_needs_no_key_and_shows_no_secret(api):
    response = api.get("/health")
    assert response.status_code == 200
    doc = response.json_body
    assert doc["status"] == "ok" and doc["checks"]["redis"]["status"] == "ok"
    assert isinstance(doc["checks"]["redis"]["latency_ms"], (int, float))
    assert API_KEY not in response.body.decode() and "redis://" not in response.body.decode()


# -- bad input: a 4xx in the one shape, and nothing written ---------------------

NESTED_65 = "{}"
for _ in range(65):
    NESTED_65 = '{"k":' + NESTED_65 + "}"

BAD_CREATES = [
    pytest.param('{{"session_id":"{sid}","state":', 400, "ValidationError", id="malformed JSON"),
    pytest.param('{{"session_id":"{sid}","state":{{}}}} x', 400, "ValidationError", id="trailing garbage"),
    pytest.param("", 400, "ValidationError", id="empty body"),
    pytest.param('["{sid}"]', 400, "ValidationError", id="body is an array"),
    pytest.param('{{"session_id":"{sid}","state":[1]}}', 400, "ValidationError", id="state is an array"),
    pytest.param('{{"session_id":"{sid}","state":"x"}}', 400, "ValidationError", id="state is a string"),
    pytest.param('{{"session_id":"{sid}","state":null}}', 400, "ValidationError", id="state is null"),
    pytest.param('{{"session_id":"{sid}"}}', 400, "ValidationError", id="state missing"),
    pytest.param('{{"session_id":"{sid}","state":{{}},"owner":"x"}}', 400, "ValidationError",
                 id="unknown field"),
    pytest.param('{{"session_id":"{sid}","state":{{}},"ttl_seconds":"60"}}', 400, "ValidationError",
                 id="ttl is a string"),
    pytest.param('{{"session_id":"{sid}","state":{{}},"ttl_seconds":0}}', 400, "ValidationError",
                 id="ttl is zero"),
    pytest.param('{{"session_id":"{sid}","state":{{"a":"x\\u0000y"}}}}', 400, "ValidationError",
                 id="NUL in a value"),
    pytest.param('{{"session_id":"{sid}","state":{{"a\\u0000":1}}}}', 400, "ValidationError",
                 id="NUL in a key"),
    pytest.param('{{"session_id":"{sid}","state":{{"a":[{{"b":["\\u0000"]}}]}}}}', 400,
                 "ValidationError", id="NUL deep inside"),
    pytest.param('{{"session_id":"{sid}","state":{{"a":NaN}}}}', 400, "ValidationError", id="NaN"),
    pytest.param('{{"session_id":"{sid}","state":{{"a":Infinity}}}}', 400, "ValidationError",
                 id="Infinity"),
    pytest.param('{{"session_id":"{sid}","state":{{"a":1e999}}}}', 400, "ValidationError",
                 id="number overflowing to infinity"),
    pytest.param('{{"session_id":"{sid}","state":{{"a":' + "9" * 5000 + "}}}}", 400, "ValidationError",
                 id="5000-digit integer"),
    pytest.param('{{"session_id":"{sid}","state":{{"a":"\\ud800"}}}}', 400, "ValidationError",
                 id="lone surrogate"),
    pytest.param('{{"session_id":"{sid}","state":' + NESTED_65.replace("{", "{{").replace("}", "}}")
                 + "}}", 400, "ValidationError", id="65 levels deep"),
    pytest.param('{{"session_id":"{sid}","state":{{"a":' + "[" * 50_000 + "]" * 50_000 + "}}}}",
                 400, "ValidationError", id="50000 levels deep"),
    pytest.param('{{"session_id":"{sid}","state":{{"s":"' + "x" * LIMIT + '"}}}}', 413,
                 "PayloadTooLarge", id="state over MAX_STATE_BYTES"),
    pytest.param('{{"session_id":"{sid}","state":{{}},"pad":"' + "x" * (6 * LIMIT + 4096) + '"}}', 413,
                 "PayloadTooLarge", id="body far over the limit"),
    pytest.param('{{"session_id":"{sid}/x","state":{{}}}}', 400, "ValidationError", id="id with a slash"),
    pytest.param('{{"session_id":"{sid}' + "x" * 128 + '","state":{{}}}}', 400, "ValidationError",
                 id="id over 128 characters"),
    pytest.param('{{"session_id":"{sid} ","state":{{}}}}', 400, "ValidationError", id="id with a space"),
    pytest.param('{{"session_id":["{sid}"],"state":{{}}}}', 400, "ValidationError", id="id is a list"),
    pytest.param('{{"session_id":"{sid}%3Ax","state":{{}}}}', 400, "ValidationError",
                 id="percent-encoded id in the body"),
]


@pytest.mark.parametrize("template, status, code", BAD_CREATES)
def test_a_bad_create_gets_a_4xx_and_writes_nothing(api, redis_view, session_id, template, status, code):
    response = api.post("/sessions", headers=AUTH, body=template.format(sid=session_id))
    assert_error(response, status, code)
    for written in (session_id, session_id + "/x", session_id + ":x"):
        redis_view.assert_untouched(written)


def test_a_body_that_is_not_utf8_gets_a_400(api, redis_view, session_id):
    raw = b'{"session_id":"' + session_id.encode() + b'","state":{"a":"\xff"}}'
    assert_error(api.post("/sessions", headers=AUTH, body=raw), 400, "ValidationError")
    redis_view.assert_untouched(session_id)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
def test_a_body_not_sent_as_json_gets_a_415_in_the_error_shape(api, redis_view, session_id, content_type):
    # curl -d without -H sends a form: chalice refuses it before any view runs
    response = api.post("/sessions", headers={**AUTH, "Content-Type": content_type},
                        body=body({"session_id": session_id, "state": {}}))
    assert "application/json" in assert_error(response, 415, "UnsupportedMediaType")["message"]
    redis_view.assert_untouched(session_id)


def test_a_state_of_exactly_max_state_bytes_is_accepted(api, session_id):
    state = {"s": "x" * (LIMIT - len('{"s":""}'))}
    response = api.post("/sessions", headers=AUTH, body=body({"session_id": session_id, "state": state}))
    assert response.status_code == 201


BAD_UPDATES = [
    pytest.param({}, '{"state":{"n":2}}', 428, "PreconditionRequired", id="no precondition"),
    pytest.param({}, '{"state":{"n":2},"expected_version":null}', 428, "PreconditionRequired",
                 id="null expected_version"),
    pytest.param({"If-Match": '"2"'}, '{"state":{"n":2},"expected_version":1}', 400, "ValidationError",
                 id="If-Match disagrees with the body"),
    pytest.param({}, '{"state":{"n":2},"expected_version":"1"}', 400, "ValidationError",
                 id="version is a string"),
    pytest.param({}, '{"state":{"n":2},"expected_version":1.5}', 400, "ValidationError",
                 id="version is not a whole number"),
    pytest.param({}, '{"state":{"n":2},"expected_version":true}', 400, "ValidationError",
                 id="version is a boolean"),
    pytest.param({}, '{"state":{"n":2},"expected_version":0}', 400, "ValidationError", id="version 0"),
    pytest.param({}, '{"state":{"n":2},"expected_version":-1}', 400, "ValidationError",
                 id="negative version"),
    pytest.param({}, '{"state":{"n":2},"expected_version":[1]}', 400, "ValidationError",
                 id="version is a list"),
    pytest.param({"If-Match": 'W/"1"'}, '{"state":{"n":2}}', 400, "ValidationError", id="weak ETag"),
    pytest.param({"If-Match": "*"}, '{"state":{"n":2},"expected_version":1}', 400, "ValidationError",
                 id="If-Match star and a version"),
    pytest.param({"If-None-Match": '"1"'}, '{"state":{"n":2}}', 400, "ValidationError",
                 id="If-None-Match a tag on a PUT"),
    pytest.param({"If-None-Match": "*", "If-Match": '"1"'}, '{"state":{"n":2}}', 400, "ValidationError",
                 id="If-None-Match and If-Match"),
    pytest.param({"If-None-Match": "*"}, '{"state":{"n":2},"expected_version":1}', 400,
                 "ValidationError", id="If-None-Match star and a version"),
    pytest.param({"If-None-Match": "3"}, '{"state":{"n":2}}', 400, "ValidationError",
                 id="If-None-Match without quotes"),
    pytest.param({"If-None-Match": "*"}, '{"state":[]}', 400, "ValidationError",
                 id="If-None-Match star and a bad state"),
    pytest.param({"If-Match": '"one"'}, '{"state":{"n":2}}', 400, "ValidationError", id="If-Match text"),
    pytest.param({"If-Match": "\u00b2"}, '{"state":{"n":2}}', 400, "ValidationError",
                 id="If-Match superscript two"),
    pytest.param({"If-Match": "9" * 5000}, '{"state":{"n":2}}', 400, "ValidationError",
                 id="If-Match 5000 digits"),
    pytest.param({}, '{"state":{"n":2},"expected_version":1,"x":1}', 400, "ValidationError",
                 id="unknown field"),
    pytest.param({}, '{"expected_version":1}', 400, "ValidationError", id="state missing"),
    pytest.param({}, '{"state":[],"expected_version":1}', 400, "ValidationError", id="state is an array"),
    pytest.param({}, '{"state":{"n":NaN},"expected_version":1}', 400, "ValidationError", id="NaN"),
    pytest.param({}, '{"state":{"\\u0000":1},"expected_version":1}', 400, "ValidationError",
                 id="NUL in a key"),
    pytest.param({}, '{"state":' + NESTED_65 + ',"expected_version":1}', 400, "ValidationError",
                 id="65 levels deep"),
    pytest.param({}, '{"state":{"s":"' + "x" * LIMIT + '"},"expected_version":1}', 413,
                 "PayloadTooLarge", id="state over MAX_STATE_BYTES"),
    pytest.param({}, '{"state":{"n":2},"expected_version":1', 400, "ValidationError",
                 id="malformed JSON"),
    pytest.param({}, "", 400, "ValidationError", id="empty body"),
]


@pytest.mark.parametrize("headers, raw, status, code", BAD_UPDATES)
def test_a_bad_update_gets_a_4xx_and_changes_nothing(api, redis_view, existing, headers, raw, status, code):
    before = redis_view.snapshot(existing)
    response = api.put(f"/sessions/{existing}", headers={**AUTH, **headers}, body=raw)
    assert_error(response, status, code)
    assert redis_view.snapshot(existing) == before


@pytest.mark.parametrize("bad_id", ["a%2Fb", "%00", "a%20b", "%C3%BC", "%FF", "x" * 129, "a%25", "a%7Bb%7D"])
def test_a_bad_id_in_the_path_gets_a_400_on_every_route(api, redis_view, bad_id):
    for response in (
        api.get(f"/sessions/{bad_id}", headers=AUTH),
        api.put(f"/sessions/{bad_id}", headers=AUTH, body=body({"state": {}, "expected_version": 1})),
        api.delete(f"/sessions/{bad_id}", headers=AUTH),
        api.get(f"/sessions/{bad_id}/events", headers=AUTH),
    ):
        assert assert_error(response, 400, "ValidationError")["details"] == {"field": "session_id"}


@pytest.mark.parametrize("query", ["limit=0", "limit=501", "limit=ten", "limit=%C2%B2",
                                   "before_version=0", "before_version=x", "before_version=" + "9" * 30])
def test_bad_paging_parameters_get_a_400(api, existing, query):
    assert_error(api.get(f"/sessions/{existing}/events?{query}", headers=AUTH), 400, "ValidationError")


def test_a_bad_if_match_on_delete_gets_a_400_and_deletes_nothing(api, redis_view, existing):
    before = redis_view.snapshot(existing)
    assert_error(api.delete(f"/sessions/{existing}", headers={**AUTH, "If-Match": "soon"}),
                 400, "ValidationError")
    assert redis_view.snapshot(existing) == before


@pytest.mark.parametrize("method, path", [
    ("PATCH", "/sessions"), ("POST", "/sessions/some-id"), ("DELETE", "/sessions"),
    ("GET", "/sessions"), ("PUT", "/health"), ("POST", "/sessions/some-id/events"),
])
def test_a_method_a_route_does_not_have_gets_405_in_the_error_shape(api, method, path):
    response = api.request(method, path, headers=AUTH, body=b"{}")
    error = assert_error(response, 405, "MethodNotAllowed")
    assert method not in error["details"]["allowed"]
    assert response.headers["Allow"]


@pytest.mark.parametrize("path", ["/", "/nope", "/sessions/a/b", "/sessions/a/events/1"])
def test_an_unknown_route_gets_a_4xx(api, path):
    # API Gateway's (and chalice's) answer; `sessionsync serve` makes it a 404
    assert 400 <= api.get(path, headers=AUTH).status_code < 500


# -- authentication -------------------------------------------------------------

ROUTES = [
    ("POST", "/sessions", lambda sid: body({"session_id": sid, "state": {"n": "intruder"}})),
    ("GET", "/sessions/{sid}", lambda sid: b""),
    ("PUT", "/sessions/{sid}", lambda sid: body({"state": {"n": "intruder"}, "expected_version": 1})),
    ("DELETE", "/sessions/{sid}", lambda sid: b""),
    ("GET", "/sessions/{sid}/events", lambda sid: b""),
    ("PATCH", "/sessions/{sid}", lambda sid: body({"state": {"n": "intruder"}})),
]


@pytest.mark.parametrize("method, path, make_body", ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
@pytest.mark.parametrize("authorization, status", [
    (None, 401),
    (f"Bearer {API_KEY}x", 403),
    (f"Bearer {API_KEY[:-1]}", 403),
    ("Bearer wrong-key-0123456789abcdef", 403),
    (f"Basic {API_KEY}", 403),
    ("Bearer", 403),
])
def test_missing_or_wrong_credentials_are_refused_and_touch_nothing(
        api, redis_view, existing, method, path, make_body, authorization, status):
    other = existing + "-new"
    before = redis_view.snapshot(existing)
    headers = {"Content-Type": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    response = api.request(method, path.format(sid=existing), headers=headers,
                           body=make_body(other if method == "POST" else existing))
    assert response.status_code == status
    assert API_KEY not in response.body.decode()
    assert redis_view.snapshot(existing) == before
    redis_view.assert_untouched(other)


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_the_right_key_is_accepted_whatever_the_scheme_case(api, existing, scheme):
    response = api.get(f"/sessions/{existing}", headers={"Authorization": f"{scheme} {API_KEY}"})
    assert response.status_code == 200


def _through_api_gateway(method: str, path: str, stage_path: str, raw: str, **headers: str) -> dict:
    """The proxy event API Gateway sends for ``path`` called on a stage (or a
    custom domain's base path), answered by the Lambda handler itself."""
    from app import app
    resource = "/sessions" if path == "/sessions" else "/sessions/{session_id}"
    event = {
        "resource": resource, "path": path, "httpMethod": method,
        "headers": {"Content-Type": "application/json", **headers},
        "multiValueHeaders": None, "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "pathParameters": None if path == "/sessions" else {"session_id": path.rsplit("/", 1)[1]},
        "stageVariables": None, "isBase64Encoded": False, "body": raw,
        "requestContext": {"resourcePath": resource, "httpMethod": method, "stage": "dev",
                           "path": stage_path + path, "requestId": "test-request",
                           "authorizer": {"principalId": "legacy", **FULL_ACCESS.to_context()}},
    }
    return app(event, None)


@pytest.mark.parametrize("prefix", ["/dev", "/v1/api"], ids=["stage", "custom domain base path"])
def test_location_keeps_the_stage_prefix_the_client_called(api, session_id, prefix):
    posted = _through_api_gateway("POST", "/sessions", prefix,
                                  body({"session_id": session_id, "state": {}}))
    put = _through_api_gateway("PUT", f"/sessions/{session_id}-put", prefix, body({"state": {}}),
                               **{"If-None-Match": "*"})

    assert posted["statusCode"] == 201, posted["body"]
    assert posted["headers"]["Location"] == f"{prefix}/sessions/{session_id}"
    assert put["statusCode"] == 201, put["body"]
    assert put["headers"]["Location"] == f"{prefix}/sessions/{session_id}-put"
