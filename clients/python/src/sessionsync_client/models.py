"""What the API answers, as typed objects (docs/openapi.yaml's schemas)."""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

# RFC 3339 as the server writes it ("2026-01-31T12:00:05.250Z"); Python 3.10's
# fromisoformat takes neither "Z" nor every length of fraction
_TIMESTAMP = re.compile(r"(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?"
                        r"(Z|[+-]\d{2}:?\d{2})?", re.IGNORECASE)


def parse_timestamp(value: Any) -> datetime | None:
    """An aware datetime from the API's ISO 8601 text (None stays None)."""
    if value is None:
        return None
    match = _TIMESTAMP.fullmatch(str(value).strip())
    if match is None:
        raise ValueError(f"not an ISO 8601 timestamp: {value!r}")
    date, time, fraction, zone = match.groups()
    micros = (fraction or "0").ljust(6, "0")[:6]
    offset = "+00:00" if zone is None or zone.upper() == "Z" else zone
    if len(offset) == 5:  # +0100
        offset = offset[:3] + ":" + offset[3:]
    return datetime.fromisoformat(f"{date}T{time}.{micros}{offset}")


@dataclass(frozen=True)
class Session:
    """A session as the API answered it, and how that answer was served."""

    session_id: str
    version: int
    state: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    expires_at: datetime
    ttl_seconds: int
    owner_id: str | None = None
    #: this answer replays a write already done (the retry of a keyed write)
    replayed: bool = False
    #: "postgresql" when recovered or served stale from PostgreSQL, else "redis"
    source: str = "redis"
    #: for a stale copy (``max_stale``): its age in seconds (the ``Age`` header)
    age: int | None = None
    #: the answer's X-Request-Id
    request_id: str | None = field(default=None, compare=False)

    @property
    def etag(self) -> str:
        return f'"{self.version}"'

    @classmethod
    def from_api(cls, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> Session:
        headers = headers or {}
        age = headers.get("age")
        return cls(
            session_id=body["session_id"], version=int(body["version"]), state=body["state"],
            created_at=_required(body, "created_at"), updated_at=_required(body, "updated_at"),
            expires_at=_required(body, "expires_at"), ttl_seconds=int(body["ttl_seconds"]),
            owner_id=body.get("owner_id"),
            replayed=headers.get("idempotent-replayed") == "true",
            source=headers.get("x-session-source", "redis"),
            age=int(age) if age is not None and age.isdigit() else None,
            request_id=headers.get("x-request-id"))


def _required(body: Mapping[str, Any], name: str) -> datetime:
    value = parse_timestamp(body[name])
    assert value is not None, name
    return value


@dataclass(frozen=True)
class Event:
    """One persisted change of a session's history."""

    version: int
    event_type: str
    occurred_at: datetime
    persisted_at: datetime | None
    #: the state after the change; None for a deletion and an expiry
    state: dict[str, Any] | None

    @classmethod
    def from_api(cls, body: Mapping[str, Any]) -> Event:
        occurred = parse_timestamp(body["occurred_at"])
        assert occurred is not None
        return cls(version=int(body["version"]), event_type=body["event_type"], occurred_at=occurred,
                   persisted_at=parse_timestamp(body.get("persisted_at")), state=body.get("state"))


@dataclass(frozen=True)
class EventPage:
    session_id: str
    events: list[Event]
    #: pass as ``cursor`` for the next page; None on the last
    next_cursor: str | None


@dataclass(frozen=True)
class SessionPage:
    owner_id: str
    sessions: list[Session]
    #: pass as ``cursor`` for the next page; None on the last
    next_cursor: str | None


@dataclass(frozen=True)
class RevokeResult:
    """What ``revoke_all`` did, over all the calls it made."""

    owner_id: str
    deleted: int
    blocked: int
    calls: int


@dataclass(frozen=True)
class Health:
    """GET /health: ``status`` ok, degraded or down, and each dependency's check."""

    status: str
    checks: dict[str, dict[str, Any]]
    warnings: list[str]
    http_status: int

    @property
    def ok(self) -> bool:
        return self.status == "ok"
