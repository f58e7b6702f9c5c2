"""The change event: the SQS message body that carries one session change.

The store's Lua scripts write the event (``chalicelib.adapters.redis.store``); this module
reads it back on the consumer side.  Schema version 1::

    {"schema_version": 1, "event_id": "<session_id>:<version>",
     "event_type": "session_created" | "session_updated" | "session_deleted"
                   | "session_touched" | "session_expired",
     "session_id": "...", "version": 7,
     "created_at": "2026-11-28T16:33:30.405Z", "occurred_at": "...",
     "expires_at": "...", "ttl_seconds": 3600, "owner_id": "u-42", "state": {...} | null}

``expires_at`` is carried by ``session_expired`` only (the lifetime that
ended, which its ``occurred_at`` does not give).  A write's lifetime ends at
``occurred_at`` plus ``ttl_seconds``, which PostgreSQL derives (and
``Session.expires_at``): the scripts leave the sum out.  An event written by
the previous release (an old outbox entry, a message still in the queue)
carries it for every write, and is persisted with it: the same value.
``session_touched`` carries the unchanged state; ``session_expired``
(written by the expiry sweep) none.


``owner_id`` is optional (only a session created with an owner has it, on
every event of the session; events written before owners existed have
none).

``parse_event`` checks the *shape* (JSON object, field types, a known
schema version, an event id that matches session and version).  Domain
rules (id format, version > 0, known event type, state present unless
deleted) are checked by PostgreSQL's constraints, so that a message that
breaks them fails loudly there with a named constraint and SQLSTATE.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from chalicelib.domain.errors import MalformedMessage

EVENT_SCHEMA_VERSION = 1
CREATED, UPDATED, DELETED = "session_created", "session_updated", "session_deleted"
TOUCHED, EXPIRED = "session_touched", "session_expired"
EVENT_TYPES = (CREATED, UPDATED, DELETED, TOUCHED, EXPIRED)
#: the event types that carry no state (the session is gone)
STATELESS = (DELETED, EXPIRED)

# Every field but ``state``, with its type, in the order the store's scripts
# write them (``state`` comes last: see codec.session_from_event).
_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "schema_version": int,
    "event_id": str,
    "event_type": str,
    "session_id": str,
    "version": int,
    "created_at": str,
    "occurred_at": str,
    "ttl_seconds": int,
}
#: optional fields (see the module docstring)
_OPTIONAL: dict[str, type] = {"expires_at": str}
#: the fields of an event, in the order the store writes them (``owner_id``
#: only when the session has an owner)
EVENT_FIELDS = (*list(_REQUIRED)[:7], "expires_at", "ttl_seconds", "owner_id", "state")


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """One session change, as persisted to ``sync_events``.

    ``state_json`` is the state re-encoded compactly (what PostgreSQL parses
    into jsonb), or None for a deletion.
    """

    event_id: str
    event_type: str
    session_id: str
    version: int
    created_at: str
    occurred_at: str
    ttl_seconds: int
    state_json: str | None
    #: the session's owner, when it was created with one
    owner_id: str | None = None
    #: None but in a session_expired (and a write's event of the previous
    #: release): PostgreSQL derives it from occurred_at and ttl_seconds
    expires_at: str | None = None

    @property
    def deleted(self) -> bool:
        return self.event_type == DELETED

    @property
    def expired(self) -> bool:
        return self.event_type == EXPIRED


def _malformed(reason: str, message: str) -> MalformedMessage:
    return MalformedMessage(message, reason=reason)


def parse_event(body: str | bytes) -> ChangeEvent:
    """Decode and shape-check one message body.

    Raises MalformedMessage (``details["reason"]`` is ``invalid_json``,
    ``not_an_object``, ``unsupported_schema``, ``missing_field``,
    ``wrong_type`` or ``inconsistent_event_id``); it is permanent: the same
    bytes can never be persisted, so the consumer dead-letters them at once.
    """
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError and undecodable bytes
        raise _malformed("invalid_json", f"message body is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise _malformed("not_an_object", "message body is not a JSON object")
    schema = doc.get("schema_version")
    if schema != EVENT_SCHEMA_VERSION or isinstance(schema, bool):
        raise _malformed("unsupported_schema",
                         f"schema_version must be {EVENT_SCHEMA_VERSION}, got {schema!r}")
    for name, kind in _REQUIRED.items():
        if name not in doc:
            raise _malformed("missing_field", f"{name} is missing")
        value = doc[name]
        # bool is an int in Python; a JSON true is never a version or a TTL
        if not isinstance(value, kind) or isinstance(value, bool):
            raise _malformed("wrong_type", f"{name} must be of type {_type_name(kind)}")
    for name, kind in _OPTIONAL.items():
        if doc.get(name) is not None and not isinstance(doc[name], kind):
            raise _malformed("wrong_type", f"{name} must be of type {_type_name(kind)}")
    if "state" not in doc:
        raise _malformed("missing_field", "state is missing")
    state: Any = doc["state"]
    if state is not None and not isinstance(state, dict):
        raise _malformed("wrong_type", "state must be an object or null")
    if doc["event_id"] != f"{doc['session_id']}:{doc['version']}":
        raise _malformed("inconsistent_event_id",
                         "event_id must be '<session_id>:<version>' of this event")
    owner = doc.get("owner_id")
    if owner is not None and not isinstance(owner, str):
        raise _malformed("wrong_type", "owner_id must be of type string")
    state_json = None
    if state is not None:
        state_json = json.dumps(state, ensure_ascii=False, separators=(",", ":"))
        try:
            # A lone surrogate ("\ud800") decodes into a str that cannot be
            # sent as UTF-8: reject it here, not as a driver crash later.
            state_json.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise _malformed("invalid_json", "state holds a lone UTF-16 surrogate") from exc
    return ChangeEvent(doc["event_id"], doc["event_type"], doc["session_id"], doc["version"],
                       doc["created_at"], doc["occurred_at"], doc["ttl_seconds"], state_json,
                       owner, doc.get("expires_at"))


def _type_name(kind: type | tuple[type, ...]) -> str:
    return {int: "integer", str: "string"}.get(kind, str(kind))  # type: ignore[arg-type]
