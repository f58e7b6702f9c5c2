"""docs/openapi.yaml stays true: it documents exactly the app's routes; what
its request schemas allow, the server's validation accepts, and what they
refuse, it refuses (keys, strings, ids, If-Match, integers); and real
responses (Chalice test client, real Redis) match what it says about them:
the status is documented for the operation, the body validates against the
documented schema, and documented headers are there when required and match
their patterns.

schemathesis against a live server, and a client generated from the file,
are in tests/integration/api/test_contract.py.
"""
from __future__ import annotations

import json
import math
import time
from typing import Any

import jsonschema_rs
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from app import app
from chalicelib.adapters.redis.keys import epoch_key
from chalicelib.adapters.redis.store import SessionStore
from chalicelib.api import headers
from chalicelib.domain import errors, validation
from chalicelib.service.sessions import SessionService
from tests.functional.utils import Spec, to_json_schema
from tests.support.app import app_client
from tests.support.constants import AUTH, PROJECT_DIR
from tests.support.schemathesis_hooks import (
    breaks_the_precondition_rule,
    sent_outside_the_if_none_match_pattern,
)

SPEC_PATH = PROJECT_DIR / "docs" / "openapi.yaml"
METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return yaml.safe_load(SPEC_PATH.read_text())








@pytest.fixture(scope="module")
def documented(spec) -> Spec:
    return Spec(spec)


# -- the spec and the routes ---------------------------------------------------

def test_the_spec_documents_exactly_the_routes_and_methods_of_the_app(spec):
    documented = {(path, method.upper()) for path, item in spec["paths"].items()
                  for method in item if method in METHODS}
    served = {(path, method) for path, entries in app.routes.items() for method in entries}
    assert documented - served == set(), "documented but not served"
    assert served - documented == set(), "served but not documented"


def test_every_session_route_requires_the_bearer_key_and_health_does_not(spec):
    assert spec["security"] == [{"bearerAuth": []}]
    scheme = spec["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    for path, entries in app.routes.items():
        for method, entry in entries.items():
            operation = spec["paths"][path][method.lower()]
            public = operation.get("security") == []
            assert public == (entry.authorizer is None), f"{method} {path}"
            if not public:
                assert {"401", "403"} <= set(operation["responses"]), f"{method} {path}"


def test_the_error_codes_in_the_spec_are_the_codes_of_real_errors(spec):
    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    real = {errors.SessionSyncError.code} | {cls.code for cls in subclasses(errors.SessionSyncError)}
    documented = set(spec["components"]["schemas"]["Error"]["properties"]["error"]["properties"]
                     ["code"]["enum"])
    assert documented <= real, documented - real
    # every error of the error tree a route can answer with is documented
    # (other modules' errors, e.g. migrations', never reach a route)
    http_errors = {cls.code for cls in subclasses(errors.SessionSyncError)
                   if cls.__module__ == errors.__name__
                   and not issubclass(cls, errors.PersistenceError)}
    assert http_errors <= documented, http_errors - documented


def test_the_session_id_pattern_is_the_one_validation_enforces(spec):
    from chalicelib.domain.validation import SESSION_ID_PATTERN

    assert spec["components"]["schemas"]["SessionId"]["pattern"] == f"^{SESSION_ID_PATTERN}$"


# -- what the request schemas allow, the server accepts ----------------------------

def _accepts(parse, *args, **kwargs) -> bool:
    try:
        parse(*args, **kwargs)
    except errors.ValidationError:
        return False
    return True


# NUL, noncharacters and astral characters turn up often, not once in a while;
# no lone surrogates: not Unicode, so no schema's business (a 400, documented)
TEXT = st.text(st.sampled_from("a\x00 \u00e9\ufffe\U0001f600") | st.characters(codec="utf-8"),
               max_size=6)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | TEXT,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(TEXT, children, max_size=3),
    max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(state=st.dictionaries(TEXT, JSON_VALUES, max_size=4))
def test_a_state_is_accepted_exactly_when_the_state_schema_allows_it(documented, state):
    # within the two rules the schema cannot state (64 levels, MAX_STATE_BYTES)
    allowed = documented.validator("State").is_valid(state)
    assert allowed == _accepts(validation.check_state, state, 1 << 20), state


@settings(max_examples=300, deadline=None)
@given(value=st.text(st.characters(codec="utf-8"), max_size=130)
       | st.from_regex(validation.SESSION_ID_PATTERN, fullmatch=True))
def test_a_session_id_in_a_body_is_accepted_exactly_when_its_schema_allows_it(documented, value):
    allowed = documented.validator("SessionId").is_valid(value)
    assert allowed == _accepts(validation.session_id, value, percent_encoded=False), value


@settings(max_examples=300, deadline=None)
@given(value=st.text(st.sampled_from(' \t"0123W/*,\u00a0\u0085\x1c'), max_size=8)
       | st.from_regex(r'[ \t]*(\*|"[1-9][0-9]{0,17}"|[1-9][0-9]{0,17})[ \t]*', fullmatch=True))
def test_an_if_match_is_accepted_exactly_when_its_pattern_allows_it(spec, value):
    schema = spec["components"]["parameters"]["IfMatch"]["schema"]
    allowed = jsonschema_rs.validator_for(schema).is_valid(value)
    assert allowed == _accepts(headers.if_match, value), repr(value)


INTEGERS = (st.integers(min_value=-5, max_value=2 ** 63 + 5) | st.booleans() | st.none()
            # JSON Schema's integer is any whole number: 3600.0 is one; past 2**53 a
            # float spells no single integer, and the server refuses it (documented)
            | st.floats(min_value=-(2 ** 53), max_value=2 ** 53) | st.integers(1, 2 ** 53).map(float))


@settings(max_examples=300, deadline=None)
@given(value=INTEGERS)
def test_integers_in_a_body_are_accepted_exactly_when_their_schema_allows_them(spec, value):
    components = to_json_schema(spec["components"])
    for schema, field in (("CreateSession", "ttl_seconds"), ("UpdateSession", "expected_version")):
        property_schema = {**components["schemas"][schema]["properties"][field], "components": components}
        allowed = jsonschema_rs.validator_for(property_schema).is_valid(value)
        parse = validation.ttl_seconds if field == "ttl_seconds" else (
            lambda v: v is None or validation.version(v, "expected_version"))
        assert allowed == _accepts(parse, value), (field, value)


@settings(max_examples=300, deadline=None)
@given(patch=st.dictionaries(st.sampled_from(["state", "version", "session_id", "ttl_seconds", "x"]),
                             st.dictionaries(TEXT, JSON_VALUES, max_size=3) | JSON_VALUES, max_size=2))
def test_a_merge_patch_is_accepted_exactly_when_the_session_patch_schema_allows_it(documented, patch):
    allowed = documented.validator("SessionPatch").is_valid(patch)
    raw = json.dumps(patch).encode()
    assert allowed == _accepts(validation.patch_request, "s1", raw, if_match=None,
                               max_state_bytes=1 << 20), patch


def test_the_hooks_drop_only_refusals_of_the_precondition_rule_with_the_documented_answer():
    breaks = breaks_the_precondition_rule
    required = {"code": "PreconditionRequired", "message": "send expected_version..."}
    disagree = {"code": "ValidationError", "message": "expected_version and If-Match disagree",
                "details": {"expected_version": 1, "if_match": 3}}
    assert breaks(428, required, None, None, False)
    assert breaks(400, disagree, 1, 3, True)
    # a PUT that kept the rule was wrongly refused: a failure all the same
    assert not breaks(428, required, 2, None, False)
    assert not breaks(428, required, None, 2, True)
    assert not breaks(400, disagree, 3, 3, True)
    assert not breaks(400, {**disagree, "details": {"field": "state"}}, 1, 3, True)
    assert not breaks(400, {"code": "ValidationError", "details": {"field": "state"}}, None, 3, True)
    assert not breaks(409, required, None, None, False)
    # the conditional headers' rules: If-None-Match: * alone, If-Match: * without a version
    field = {"code": "ValidationError", "details": {"field": "If-None-Match"}}
    assert breaks(400, field, None, 3, True, frozenset({"If-None-Match"}))
    assert breaks(400, {**field, "details": {"field": "expected_version"}}, 1, None, True,
                  frozenset({"If-Match"}))
    assert not breaks(400, field, None, None, False, frozenset({"If-None-Match"}))
    assert not breaks(400, field, None, 3, True, frozenset())
    # an owner_id on an update (not a create): refused naming owner_id
    owner = {"code": "ValidationError", "details": {"field": "owner_id"}}
    assert breaks(400, owner, None, 3, True, frozenset(), owner_sent=True)
    assert not breaks(400, owner, None, None, False, frozenset({"If-None-Match"}), owner_sent=True)
    assert not breaks(400, owner, None, 3, True, frozenset(), owner_sent=False)


def test_the_hooks_drop_only_an_if_none_match_outside_its_documented_pattern():
    put, get = "PUT /sessions/{session_id}", "GET /sessions/{session_id}"
    assert sent_outside_the_if_none_match_pattern(put, {"If-None-Match": "0"})
    assert sent_outside_the_if_none_match_pattern(get, {"If-None-Match": "0"})
    assert not sent_outside_the_if_none_match_pattern(put, {"If-None-Match": " * "})
    assert not sent_outside_the_if_none_match_pattern(get, {"If-None-Match": 'W/"1", "x"'})
    assert not sent_outside_the_if_none_match_pattern(get, {})




# -- real responses conform ----------------------------------------------------

def test_responses_of_the_session_routes_conform_to_the_spec(api, documented, session_id):
    route, item = "/sessions", "/sessions/{session_id}"
    path = f"/sessions/{session_id}"

    def check(method, spec_route, response, status):
        assert response.status_code == status, response.body
        documented.assert_conforms(method, spec_route, response)

    check("POST", route, api.post(route, headers=AUTH, body=json.dumps(
        {"session_id": session_id, "state": {"cart": [1, 2.5, None, {"x": True}]}})), 201)
    check("POST", route, api.post(route, headers=AUTH, body=json.dumps(
        {"session_id": session_id, "state": {}})), 409)
    check("POST", route, api.post(route, headers=AUTH, body='{"state": [1]}'), 400)
    check("POST", route, api.post(route, headers={**AUTH, "Content-Type": "text/plain"},
                                  body='{"state": {}}'), 415)
    check("POST", route, api.post(route, headers=AUTH, body=json.dumps(
        {"state": {"s": "x" * 300_000}})), 413)
    check("GET", item, api.get(path, headers=AUTH), 200)
    check("GET", item, api.get("/sessions/never-created-here", headers=AUTH), 404)
    check("GET", item, api.get("/sessions/a%2Fb", headers=AUTH), 400)
    check("PUT", item, api.put(path, headers={**AUTH, "If-Match": '"1"'},
                               body='{"state": {"n": 2}}'), 200)
    check("PUT", item, api.put(path, headers=AUTH, body='{"state": {}, "expected_version": 1}'), 409)
    check("PUT", item, api.put(path, headers=AUTH, body='{"state": {}}'), 428)
    check("GET", item, api.get(path, headers={**AUTH, "If-None-Match": '"2"'}), 304)
    check("PUT", item, api.put(path, headers={**AUTH, "If-None-Match": "*"},
                               body='{"state": {}}'), 412)
    check("PUT", item, api.put(f"{path}-new", headers={**AUTH, "If-None-Match": "*"},
                               body='{"state": {}}'), 201)
    merge = {**AUTH, "Content-Type": "application/merge-patch+json"}
    check("PATCH", item, api.patch(path, headers=merge, body='{"state": {"n": null, "m": [1]}}'), 200)
    check("PATCH", item, api.patch(path, headers={**merge, "If-Match": '"2"'}, body="{}"), 412)
    check("PATCH", item, api.patch(path, headers=AUTH, body='{"state": {}}'), 415)
    check("PATCH", item, api.patch(path, headers=merge, body='{"version": 9}'), 400)
    check("PATCH", item, api.patch(path, headers=merge, body=json.dumps({"state": {"s": "x" * 300_000}})),
          413)
    check("PATCH", item, api.patch("/sessions/never-created-here", headers=merge, body="{}"), 404)
    check("DELETE", item, api.delete(path, headers={**AUTH, "If-Match": '"1"'}), 412)
    check("DELETE", item, api.delete(path, headers=AUTH), 204)
    check("DELETE", item, api.delete(path, headers=AUTH), 404)
    check("GET", item + "/events", api.get(f"{path}/events?limit=0", headers=AUTH), 400)
    check("GET", item + "/events", api.get(f"{path}/events", headers=AUTH), 404)


def test_health_conforms_to_the_spec(api, documented):
    response = api.get("/health")
    assert response.status_code == 200
    documented.assert_conforms("GET", "/health", response)


def test_refused_credentials_are_documented_statuses(api, documented):
    # the body is API Gateway's here (its Gateway Responses set the shape);
    # `sessionsync serve` answers in the Error shape, checked by schemathesis
    for sent, status in (({}, 401), ({"Authorization": "Bearer nope"}, 403)):
        response = api.get("/sessions/x", headers=sent)
        assert response.status_code == status
        assert str(status) in documented.operation("GET", "/sessions/{session_id}")["responses"]


class History:
    """The durable read side (``DurableSessions``) with a fixed history."""

    def __init__(self, session_id: str, versions: int) -> None:
        self.events = [{"version": v, "event_type": "session_updated" if v > 1 else "session_created",
                        "occurred_at": f"2026-01-01T00:00:0{v}.000Z",
                        "persisted_at": f"2026-01-01T00:00:0{v}.500Z", "state": {"v": v}}
                       for v in range(versions, 0, -1)]
        self.events[0] = {**self.events[0], "event_type": "session_deleted", "state": None}
        self.session_id = session_id

    def latest(self, session_id):
        return None

    def history_page(self, session_id, *, limit, before_version, max_bytes):
        if session_id != self.session_id:
            return [], False
        below = [e for e in self.events if before_version is None or e["version"] < before_version]
        return below[:limit], len(below) > limit


def test_an_events_page_conforms_to_the_spec_and_pages_to_the_end(
        use_settings, app_settings, redis_single, documented, session_id):
    # the service takes its durable history as an argument: here a fixed one
    service = SessionService(SessionStore(redis_single, channel=app_settings.channel),
                             durable=History(session_id, 5))
    use_settings(app_settings, service=service)
    with app_client() as http:
        seen, cursor = [], None
        for _ in range(5):  # bounded: 5 events, 2 per page
            query = "limit=2" + (f"&before_version={cursor}" if cursor else "")
            response = http.get(f"/sessions/{session_id}/events?{query}", headers=AUTH)
            assert response.status_code == 200
            documented.assert_conforms("GET", "/sessions/{session_id}/events", response)
            page = response.json_body
            seen += [e["version"] for e in page["events"]]
            cursor = page["next_before_version"]
            if cursor is None:
                break
    assert seen == [5, 4, 3, 2, 1]


class NothingPersisted:
    """A durable read side that has no session at all."""

    def latest(self, session_id):
        return None

    def history_page(self, session_id, *, limit, before_version, max_bytes):
        return [], False


def test_a_503_of_the_settle_time_conforms_to_the_spec_and_says_when_to_come_back(
        use_settings, app_settings, redis_single, documented, session_id):
    # Redis went back in time: the bucket's record is of another epoch than the node's
    key = epoch_key(session_id)
    before = redis_single.get(key)
    node = redis_single.info("replication")["master_replid"][:8]
    other = "0" * 8 if node != "0" * 8 else "1" * 8
    redis_single.set(key, f"{other}|{int(time.time() * 1000)}")
    service = SessionService(SessionStore(redis_single, channel=app_settings.channel),
                             durable=NothingPersisted(), settle_seconds=30)
    use_settings(app_settings, service=service)
    try:
        with app_client() as http:
            response = http.get(f"/sessions/{session_id}", headers=AUTH)
    finally:
        # the bucket now settles for 30 s: give it back as it was, for the
        # other tests' sessions that share it
        if before is None:
            redis_single.delete(key)
        else:
            redis_single.set(key, before)
    assert response.status_code == 503, response.body
    documented.assert_conforms("GET", "/sessions/{session_id}", response)
    left = response.json_body["error"]["details"]["retry_after_seconds"]
    assert 20 < left <= 30
    assert response.headers["Retry-After"] == str(math.ceil(left))


@settings(max_examples=300, deadline=None)
@given(value=st.text(st.sampled_from(' \t"\\k,;\u00e9\x7f\x1f'), max_size=6)
       | st.from_regex(r'[ \t]*("([\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\]){1,255}"'
                       r'|[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]{1,255})[ \t]*', fullmatch=True)
       | st.sampled_from(['"' + "k" * 255 + '"', '"' + "k" * 256 + '"', "k" * 255, "k" * 256,
                          '"' + "\\\\" * 255 + '"', '"' + "\\\\" * 256 + '"']))
def test_an_idempotency_key_is_accepted_exactly_when_its_pattern_allows_it(spec, value):
    schema = spec["components"]["parameters"]["IdempotencyKey"]["schema"]
    allowed = jsonschema_rs.validator_for(schema).is_valid(value)
    assert allowed == _accepts(headers.idempotency_key, value), repr(value)


def test_replays_and_a_reused_key_conform_to_the_spec(api, documented, session_id):
    route, item = "/sessions", "/sessions/{session_id}"
    path = f"/sessions/{session_id}"

    def twice(method, spec_route, send, status):
        first, again = send(), send()
        for response in (first, again):
            assert response.status_code == status, response.body
            documented.assert_conforms(method, spec_route, response)
        assert again.headers["Idempotent-Replayed"] == "true"

    def keyed(key, **headers):
        return {**AUTH, "Idempotency-Key": key, **headers}

    twice("POST", route, lambda: api.post(route, headers=keyed('"c"'), body=json.dumps(
        {"session_id": session_id, "state": {}})), 201)
    twice("PUT", item, lambda: api.put(path, headers=keyed('"u"', **{"If-Match": "1"}),
                                       body='{"state": {"n": 2}}'), 200)
    twice("PUT", item, lambda: api.put(f"{path}-new", headers=keyed('"n"', **{"If-None-Match": "*"}),
                                       body='{"state": {}}'), 201)
    merge = {"Content-Type": "application/merge-patch+json"}
    twice("PATCH", item, lambda: api.patch(path, headers=keyed('"p"', **merge),
                                           body='{"state": {"m": 1}}'), 200)
    twice("DELETE", item, lambda: api.delete(path, headers=keyed('"d"')), 204)
    reused = api.put(f"{path}-new", headers=keyed('"n"', **{"If-Match": "1"}), body='{"state": {}}')
    assert reused.status_code == 422, reused.body
    documented.assert_conforms("PUT", item, reused)
    bad = api.delete(path, headers=keyed('"'))
    assert bad.status_code == 400, bad.body
    documented.assert_conforms("DELETE", item, bad)
