"""What the zip tier's tests share: API Gateway's calls of the authorizer
and the API function, the bodies the producer writes, the queue and the
table read back."""
from __future__ import annotations

import re
import time
from typing import Any
from urllib.parse import unquote

import psycopg

from sessionsync.bench import events
from tests.support.keys import make_key
from tests.support.lambda_runtime import EventSourceMapping, LambdaFunction

API_KEY = "zip-tier-key-0123456789abcdef"
#: a read-only key of tenant "zip", as a record in the stack's keys secret
READER, READER_RECORD = make_key("zip", ("read",))


def authorize(authorizer: LambdaFunction, token: str | None, method: str = "GET",
              path: str = "/sessions/s1") -> dict[str, Any]:
    """API Gateway's call of a TOKEN authorizer (the Authorization header)."""
    event = events.authorizer_event("unused")
    event["authorizationToken"] = token
    event["methodArn"] = f"arn:aws:execute-api:us-east-1:123456789012:a1b2c3d4e5/prod/{method}{path}"
    invocation = authorizer.invoke(event)
    assert invocation.ok, invocation.error
    return invocation.result


def allowed(policy: dict[str, Any], method_arn: str) -> bool:
    """API Gateway's reading of an IAM policy for ``method_arn``: an
    explicit Deny wins, else an Allow whose resource pattern matches."""
    def matches(pattern: str) -> bool:
        regex = re.escape(pattern).replace(r"\*", ".*").replace(r"\?", ".")
        return re.fullmatch(regex, method_arn) is not None
    verdicts = [(s["Effect"], any(matches(r) for r in (s["Resource"] if isinstance(s["Resource"], list)
                                                        else [s["Resource"]])))
                for s in policy["policyDocument"]["Statement"]]
    return not any(e == "Deny" and m for e, m in verdicts) and any(e == "Allow" and m for e, m in verdicts)


def route_of(path: str) -> tuple[str, dict[str, str]]:
    """The app's route (API Gateway's ``resource``) for ``path``, and its parameters."""
    from app import app as chalice_app

    for resource in chalice_app.routes:
        pattern = re.sub(r"\\{(\w+)\\}", r"(?P<\1>[^/]+)", re.escape(resource))
        found = re.fullmatch(pattern, path)
        if found:
            return resource, found.groupdict()
    raise AssertionError(f"no route for {path}")


def gateway_event(method: str, path: str, headers: dict[str, str], body: str | None,
                  authorized: dict[str, Any] | None) -> dict[str, Any]:
    """A REST API proxy event, with the authorizer's result in the request
    context as API Gateway puts it there (principalId, its context, the
    integration latency); a route without an authorizer has none."""
    resource, parameters = route_of(path)
    parameters = {name: unquote(value) for name, value in parameters.items()}  # API Gateway decodes them
    event = events.api_gateway_event(method, resource, path, api_key=API_KEY,
                                     path_parameters=parameters or None, body=body, headers=headers)
    if authorized is None:
        del event["requestContext"]["authorizer"]
    else:
        event["requestContext"]["authorizer"] = {"principalId": authorized["principalId"],
                                                 **authorized.get("context", {}), "integrationLatency": 4}
    return event


def change_body(session_id: str, version: int, state_json: str) -> str:
    """A change event's body as the store's scripts write it."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    return ('{"schema_version":1,"event_id":"%s:%d","event_type":"%s","session_id":"%s","version":%d,'
            '"created_at":"%s","occurred_at":"%s","ttl_seconds":3600,"state":%s}' % (
                session_id, version, "session_created" if version == 1 else "session_updated", session_id,
                version, stamp, stamp, state_json))


def receive_all(mapping: EventSourceMapping, count: int, *markers: str,
                timeout: float = 30.0) -> list[dict[str, Any]]:
    """The ``count`` messages of the queue whose body holds one of
    ``markers`` (a test's session ids, its own bodies); any other message
    (another test's, left behind) is made visible again at once."""
    deadline, records = time.monotonic() + timeout, []
    while len(records) < count and time.monotonic() < deadline:
        for record in mapping.receive():
            if any(marker in record["body"] for marker in markers):
                records.append(record)
            else:
                mapping.sqs.change_message_visibility(QueueUrl=mapping.queue_url,
                                                      ReceiptHandle=record["receiptHandle"],
                                                      VisibilityTimeout=0)
    assert len(records) == count, f"{len(records)} of {count} messages received"
    return records


def sync_events(dsn: str, session_ids: list[str]) -> dict[str, list[tuple[int, str]]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT session_id, version, event_type FROM sync_events "
                            "WHERE session_id = ANY(%s) ORDER BY session_id, version",
                            (session_ids,)).fetchall()
    found: dict[str, list[tuple[int, str]]] = {}
    for sid, version, kind in rows:
        found.setdefault(sid, []).append((version, kind))
    return found




#: the relay's invocations here: a run holds the lease until its deadline
#: less the schedule's margin (5 s), so this gives it a few seconds
RELAY_INVOCATION_SECONDS = 8


def ship_unsent(stack: Any) -> None:
    """What the relay function does all the time: send the writes' outbox
    entries (a write answers once Redis committed it), so that every
    acknowledged write is in the queue now."""
    relay = stack.function("RelayOutbox", OUTBOX_RELAY_AGE_SECONDS="0")
    try:
        drained = relay.invoke(events.schedule_event(), timeout=RELAY_INVOCATION_SECONDS)
        assert drained.ok, drained.error
    finally:
        relay.stop()
