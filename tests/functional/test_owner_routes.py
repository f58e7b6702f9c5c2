"""GET and DELETE /owners/{owner_id}/sessions through Chalice's test client
(API Gateway event in, response out) on the real Redis; every response is
checked against docs/openapi.yaml.  Bad input is a 400 in the one error
shape, an unknown owner an empty answer, never a 500."""
from __future__ import annotations

import json
import uuid

import pytest
import yaml

from chalicelib.adapters.redis.keys import owner_index_key
from tests.functional.utils import Spec, assert_error
from tests.support.constants import AUTH, PROJECT_DIR

LIST = "/owners/{owner_id}/sessions"


@pytest.fixture(scope="module")
def documented() -> Spec:
    return Spec(yaml.safe_load((PROJECT_DIR / "docs" / "openapi.yaml").read_text()))


@pytest.fixture
def owner() -> str:
    return f"user-{uuid.uuid4().hex[:10]}"


def _create(api, owner: str | None, sid: str | None = None, **extra) -> dict:
    doc = {"state": {"n": 1}, **({"owner_id": owner} if owner else {}), **extra}
    if sid:
        doc["session_id"] = sid
    response = api.post("/sessions", headers=AUTH, body=json.dumps(doc))
    assert response.status_code == 201, response.body
    return response.json_body


def test_a_session_created_with_an_owner_shows_it_and_is_listed_under_it(api, documented, owner):
    created = _create(api, owner)
    assert created["owner_id"] == owner
    sid = created["session_id"]
    assert api.get(f"/sessions/{sid}", headers=AUTH).json_body["owner_id"] == owner
    put = api.put(f"/sessions/{sid}-put", headers={**AUTH, "If-None-Match": "*"},
                  body=json.dumps({"state": {}, "owner_id": owner}))
    assert put.status_code == 201 and put.json_body["owner_id"] == owner
    updated = api.put(f"/sessions/{sid}", headers={**AUTH, "If-Match": '"1"'},
                      body=json.dumps({"state": {"n": 2}}))
    assert updated.json_body["owner_id"] == owner  # kept by an update

    response = api.get(f"/owners/{owner}/sessions", headers=AUTH)

    assert response.status_code == 200
    documented.assert_conforms("GET", LIST, response)
    page = response.json_body
    assert [s["session_id"] for s in page["sessions"]] == sorted([sid, f"{sid}-put"])
    assert page["next_cursor"] is None and page["owner_id"] == owner


def test_the_owner_s_sessions_page_with_an_opaque_cursor_to_the_end(api, documented, owner):
    ids = sorted(_create(api, owner)["session_id"] for _ in range(5))
    seen, cursor = [], None
    for _ in range(10):  # bounded: 5 sessions, 2 per page
        query = "limit=2" + (f"&cursor={cursor}" if cursor else "")
        response = api.get(f"/owners/{owner}/sessions?{query}", headers=AUTH)
        documented.assert_conforms("GET", LIST, response)
        seen += [s["session_id"] for s in response.json_body["sessions"]]
        cursor = response.json_body["next_cursor"]
        if cursor is None:
            break
    assert seen == ids


def test_delete_logs_the_owner_out_everywhere_and_says_how_many(api, documented, owner):
    mine = [_create(api, owner)["session_id"] for _ in range(3)]
    theirs = _create(api, f"{owner}-other")["session_id"]

    response = api.delete(f"/owners/{owner}/sessions", headers=AUTH)

    assert response.status_code == 200
    documented.assert_conforms("DELETE", LIST, response)
    assert response.json_body == {"owner_id": owner, "deleted": 3, "blocked": 0, "remaining": False}
    for sid in mine:
        assert_error(api.get(f"/sessions/{sid}", headers=AUTH), 404, "SessionNotFound")
    assert api.get(f"/sessions/{theirs}", headers=AUTH).status_code == 200
    assert api.get(f"/owners/{owner}/sessions", headers=AUTH).json_body["sessions"] == []
    again = api.delete(f"/owners/{owner}/sessions", headers=AUTH)
    assert again.json_body["deleted"] == 0


def test_an_unknown_owner_has_an_empty_list_and_nothing_to_delete(api, documented, owner):
    listed = api.get(f"/owners/{owner}/sessions", headers=AUTH)
    assert listed.json_body == {"owner_id": owner, "sessions": [], "next_cursor": None}
    documented.assert_conforms("GET", LIST, listed)
    deleted = api.delete(f"/owners/{owner}/sessions", headers=AUTH)
    assert deleted.json_body == {"owner_id": owner, "deleted": 0, "blocked": 0, "remaining": False}


@pytest.mark.parametrize("path", ["/owners/a%2Fb/sessions", "/owners/" + "x" * 129 + "/sessions",
                                  "/owners/%7Bo%7D/sessions", "/owners/%20/sessions"])
def test_a_bad_owner_id_is_a_400_for_both_methods(api, documented, path, redis_single):
    for method in ("GET", "DELETE"):
        response = api.get(path, headers=AUTH) if method == "GET" else api.delete(path, headers=AUTH)
        error = assert_error(response, 400, "ValidationError")
        assert error["details"]["field"] == "owner_id"
        documented.assert_conforms(method, LIST, response)
    assert redis_single.keys("so:*{o}*") == []


@pytest.mark.parametrize("query", ["cursor=", "cursor=%24%24", "cursor=" + "A" * 300, "cursor=a%2Fb",
                                   "limit=0", "limit=501", "limit=x"])
def test_a_bad_cursor_or_limit_is_a_400(api, documented, owner, query):
    response = api.get(f"/owners/{owner}/sessions?{query}", headers=AUTH)
    assert_error(response, 400, "ValidationError")
    documented.assert_conforms("GET", LIST, response)


@pytest.mark.parametrize("owner_value", ["a/b", "", 7, ["x"], "x" * 129, "{o}"])
def test_a_bad_owner_id_in_a_create_is_a_400_and_writes_nothing(api, session_id, owner_value,
                                                                redis_single):
    response = api.post("/sessions", headers=AUTH, body=json.dumps(
        {"session_id": session_id, "state": {}, "owner_id": owner_value}))
    error = assert_error(response, 400, "ValidationError")
    assert error["details"]["field"] == "owner_id"
    assert api.get(f"/sessions/{session_id}", headers=AUTH).status_code == 404


def test_an_update_cannot_change_the_owner(api, owner):
    sid = _create(api, owner)["session_id"]
    response = api.put(f"/sessions/{sid}", headers={**AUTH, "If-Match": '"1"'},
                       body=json.dumps({"state": {}, "owner_id": f"{owner}-x"}))
    assert assert_error(response, 400, "ValidationError")["details"]["field"] == "owner_id"
    assert api.get(f"/sessions/{sid}", headers=AUTH).json_body["version"] == 1


def test_an_owner_id_null_is_the_same_as_none(api, redis_single):
    created = _create(api, None, owner_id=None)
    assert "owner_id" not in created
    updated = api.put(f"/sessions/{created['session_id']}", headers={**AUTH, "If-Match": '"1"'},
                      body=json.dumps({"state": {}, "owner_id": None}))
    assert updated.status_code == 200 and "owner_id" not in updated.json_body


def test_any_cursor_of_the_documented_pattern_pages_on_from_there(api, owner):
    ids = sorted(_create(api, owner)["session_id"] for _ in range(3))
    response = api.get(f"/owners/{owner}/sessions?cursor={ids[0]}", headers=AUTH)
    assert [s["session_id"] for s in response.json_body["sessions"]] == ids[1:]
    assert api.get(f"/owners/{owner}/sessions?cursor=0", headers=AUTH).status_code == 200


def test_the_owner_index_key_is_the_owner_s_own_hash_tag(owner):
    assert owner_index_key(owner) == "so:{%s}:i" % owner


def test_a_replayed_create_of_an_owned_session_shows_its_owner(api, owner, session_id):
    headers = {**AUTH, "Idempotency-Key": f"k-{uuid.uuid4().hex}"}
    body = json.dumps({"session_id": session_id, "owner_id": owner, "state": {"n": 1}})
    first = api.post("/sessions", headers=headers, body=body)
    again = api.post("/sessions", headers=headers, body=body)
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert first.json_body["owner_id"] == again.json_body["owner_id"] == owner
