"""Helpers of the functional tests: the problem+json shape, the proof that
nothing was written, and docs/openapi.yaml as a checker of real responses."""
from __future__ import annotations

import json
import re
from typing import Any

import jsonschema_rs

from chalicelib.adapters.redis.keys import bucket_of, outbox_keys, session_keys
from tests.support.markers import raw_marker


def body(doc) -> str:
    return json.dumps(doc)


def assert_error(response, status: int, code: str) -> dict:
    """An RFC 9457 problem that keeps today's ``code`` and ``error``; returns ``error``."""
    assert response.status_code == status, response.body
    assert response.headers["Content-Type"] == "application/problem+json"
    doc = json.loads(response.body)
    assert set(doc) == {"type", "title", "status", "detail", "code", "error"}
    assert (doc["type"], doc["status"]) == ("about:blank", status) and doc["title"]
    assert doc["code"] == doc["error"]["code"] == code
    assert isinstance(doc["error"]["message"], str) and doc["error"]["message"]
    assert doc["detail"] == doc["error"]["message"]
    return doc["error"]


class RedisView:
    """What Redis holds for a session: the proof that nothing was written."""

    def __init__(self, client) -> None:
        self.client = client

    def raw(self, sid: str) -> bytes | None:
        return self.client.get(session_keys(sid)[0])

    def marker(self, sid: str) -> bytes | None:
        return raw_marker(self.client, sid)

    def outbox(self, sid: str) -> list[bytes]:
        data = outbox_keys(bucket_of(sid))[1]
        return sorted(k for k in self.client.hkeys(data) if k.decode().rsplit(":", 1)[0] == sid)

    def snapshot(self, sid: str) -> tuple:
        return self.raw(sid), self.marker(sid), self.outbox(sid)

    def assert_untouched(self, sid: str) -> None:
        assert self.snapshot(sid) == (None, None, [])


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
        headers = {name.lower(): deref(self.doc, header)
                   for name, header in documented.get("headers", {}).items()}
        undocumented = {name for name in response.headers
                        if name.lower() not in headers and name.lower() != "content-type"}
        assert not undocumented, f"{method} {route} {status} sends undocumented {undocumented}"
        for name, header in documented.get("headers", {}).items():
            header = deref(self.doc, header)
            if header.get("required"):
                assert name in response.headers, f"{method} {route} {status}: no {name} header"
            pattern = header["schema"].get("pattern")
            if name in response.headers and pattern:
                assert re.search(pattern, response.headers[name]), (name, response.headers[name])

    def validator(self, name: str):
        """A validator of the schema ``components/schemas/<name>``."""
        return jsonschema_rs.validator_for({"$ref": f"#/components/schemas/{name}",
                                            "components": self.components})
