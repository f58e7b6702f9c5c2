"""docs/openapi.yaml stays true: it documents exactly the app's routes, and
real responses (Chalice test client, real Redis) match what it says about
them: the status is documented for the operation, the body validates against
the documented schema, and documented headers match their patterns.

The schemathesis run against a live server is in
tests/integration/test_serve.py.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
import yaml
from chalice.test import Client

from app import app
from chalicelib import errors
from chalicelib.sessions import SessionService
from chalicelib.store import SessionStore
from tests.conftest import API_KEY

PROJECT_DIR = Path(__file__).resolve().parents[2]
SPEC_PATH = PROJECT_DIR / "docs" / "openapi.yaml"
AUTH = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return yaml.safe_load(SPEC_PATH.read_text())


def to_json_schema(node: Any) -> Any:
    """OpenAPI 3.0 schema -> JSON Schema: ``nullable: true`` becomes a null branch."""
    if isinstance(node, list):
        return [to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {key: to_json_schema(value) for key, value in node.items()}
    if converted.pop("nullable", False):
        return {"anyOf": [converted, {"type": "null"}]}
    return converted


def deref(spec: dict, node: dict) -> dict:
    """Follow a local ``$ref`` (``#/components/...``) to its target."""
    while isinstance(node, dict) and "$ref" in node:
        target: Any = spec
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


class Spec:
    def __init__(self, doc: dict) -> None:
        self.doc = doc
        self.components = to_json_schema(doc["components"])

    def operation(self, method: str, route: str) -> dict:
        return self.doc["paths"][route][method.lower()]

    def assert_conforms(self, method: str, route: str, response) -> None:
        """``response`` is one the spec documents for ``method route``."""
        responses = self.operation(method, route)["responses"]
        status = str(response.status_code)
        assert status in responses, f"{method} {route} answered {status}, not documented"
        documented = deref(self.doc, responses[status])
        content = documented.get("content")
        if content is None:
            assert not response.body, f"{method} {route} {status} has an undocumented body"
        else:
            assert response.headers["Content-Type"] in content
            schema = content[response.headers["Content-Type"]]["schema"]
            validator = jsonschema_rs.validator_for(
                {**to_json_schema(schema), "components": self.components}, validate_formats=True)
            errors_found = [e.message for e in validator.iter_errors(json.loads(response.body))]
            assert not errors_found, f"{method} {route} {status}: {errors_found}"
        for name, header in documented.get("headers", {}).items():
            header = deref(self.doc, header)
            pattern = header["schema"].get("pattern")
            if name in response.headers and pattern:
                assert re.search(pattern, response.headers[name]), (name, response.headers[name])


@pytest.fixture
def documented(spec) -> Spec:
    return Spec(spec)


@pytest.fixture
def api(use_settings, app_settings, redis_single):
    use_settings(app_settings)
    with Client(app, stage_name="local", project_dir=str(PROJECT_DIR)) as client:
        yield client.http


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
    from chalicelib.validation import SESSION_ID_PATTERN

    assert spec["components"]["schemas"]["SessionId"]["pattern"] == f"^{SESSION_ID_PATTERN}$"


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
    check("DELETE", item, api.delete(path, headers={**AUTH, "If-Match": '"1"'}), 409)
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
    for headers, status in (({}, 401), ({"Authorization": "Bearer nope"}, 403)):
        response = api.get("/sessions/x", headers=headers)
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
    with Client(app, stage_name="local", project_dir=str(PROJECT_DIR)) as client:
        seen, cursor = [], None
        for _ in range(5):  # bounded: 5 events, 2 per page
            query = "limit=2" + (f"&before_version={cursor}" if cursor else "")
            response = client.http.get(f"/sessions/{session_id}/events?{query}", headers=AUTH)
            assert response.status_code == 200
            documented.assert_conforms("GET", "/sessions/{session_id}/events", response)
            page = response.json_body
            seen += [e["version"] for e in page["events"]]
            cursor = page["next_before_version"]
            if cursor is None:
                break
    assert seen == [5, 4, 3, 2, 1]
