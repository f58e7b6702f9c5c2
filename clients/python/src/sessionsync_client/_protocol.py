"""The API's rules, without any I/O: what to send for each call, what an
answer means, when and how long to wait before trying again.

Each operation is a generator that yields effects (``Send`` a request,
``Sleep``) and gets back what they produced (a ``Reply``, or a ``NoAnswer``
thrown in), and returns the call's result.  ``Client`` drives them with
urllib3 and ``time.sleep``, ``AsyncClient`` with httpx and ``asyncio.sleep``:
the retry rules, the conflict loop and the paging exist once.
"""
from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Literal, TypeVar
from urllib.parse import quote, urlencode

from sessionsync_client import errors
from sessionsync_client._version import __version__
from sessionsync_client.models import Event, EventPage, Health, RevokeResult, Session, SessionPage

T = TypeVar("T")
Version = int | Literal["*"]
#: a change for ``update``: the new state from the current one (or None
#: when it changed the state it was given in place)
Change = Callable[[dict[str, Any]], dict[str, Any] | None]

MERGE_PATCH = "application/merge-patch+json"
# Answers worth another attempt: throttled by API Gateway (429: the request
# never reached the service), the service's own 503 (a dependency down or
# settling), and a gateway's 502/504 (the function failed or timed out: it
# may have written, so like a timeout only a keyed write is sent again).
RETRY_STATUSES = frozenset({429, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """How a call that got no answer, a 503, a 429, a 502 or a 504 is tried
    again: at most ``attempts`` sends within ``budget_seconds``, waiting the
    answer's Retry-After, else a jittered exponential backoff
    (``backoff_base`` doubling, at most ``backoff_cap``).  A write is sent
    again only when it carries an Idempotency-Key (the default), so that the
    server applies it once whatever happened to the first answer."""

    attempts: int = 4
    budget_seconds: float = 10.0
    backoff_base: float = 0.1
    backoff_cap: float = 2.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")


@dataclass(frozen=True)
class Request:
    method: str
    #: path and query, percent-encoded, after the base URL
    path: str
    headers: dict[str, str]
    body: bytes | None = None
    #: safe to send again when the first answer was lost (a read, a keyed write)
    retryable: bool = True


@dataclass(frozen=True)
class Reply:
    status: int
    #: lower-case names
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Send:
    request: Request


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Apply:
    """Run the caller's change on a state (the async driver awaits a
    coroutine function's result); the new state is sent back."""

    change: Callable[[dict[str, Any]], Any]
    state: dict[str, Any]


class NoAnswer(Exception):
    """Thrown into an operation by a driver: the request got no answer.
    ``sent``: whether it may have reached the server."""

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


Effect = Send | Sleep | Apply
Operation = Generator[Effect, Any, T]


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP date (RFC 9110)."""
    value = (headers.get("retry-after") or "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def session_path(session_id: str, suffix: str = "") -> str:
    # ':' is kept as is (ids use it: "cart:42"); '/' and the rest are escaped,
    # so an id never changes the route (the server refuses it with a 400)
    return f"/sessions/{quote(session_id, safe=':')}{suffix}"


def idempotency_header(key: str) -> str:
    """A Structured Field string (the header's form): in quotes, ``"`` and
    ``\\`` escaped; 1 to 255 printable ASCII characters."""
    if not 1 <= len(key) <= 255 or not all(" " <= c <= "~" for c in key):
        raise ValueError("an Idempotency-Key is 1 to 255 printable ASCII characters")
    return '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'


def encode(body: Mapping[str, Any]) -> bytes:
    """The request body, encoded once: a retry resends these exact bytes (the
    server compares a keyed retry's body byte for byte)."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


@dataclass
class Protocol:
    """Everything a call needs but the connection: credentials, headers,
    the retry policy, whether writes carry Idempotency-Keys."""

    api_key: str | None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    idempotency_keys: bool = True
    headers: Mapping[str, str] = field(default_factory=dict)
    conflict_backoff_base: float = 0.01
    conflict_backoff_cap: float = 0.5
    clock: Callable[[], float] = time.monotonic
    jitter: Callable[[], float] = random.random

    def base_headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json, application/problem+json",
                   "User-Agent": f"sessionsync-client-python/{__version__}"}
        if self.api_key is not None:
            headers["Authorization"] = f"Bearer {self.api_key}"
        headers.update(self.headers)
        return headers

    # --- sending, with the retry budget -------------------------------------

    def exchange(self, request: Request) -> Operation[Reply]:
        """Send ``request``, again after a lost answer or a retryable status
        while the policy allows; the last reply (an error one too)."""
        policy = self.retry
        deadline = self.clock() + policy.budget_seconds
        for attempt in range(1, policy.attempts + 1):
            last = attempt == policy.attempts
            try:
                reply = yield Send(request)
            except NoAnswer as exc:
                if last or (exc.sent and not request.retryable):
                    raise errors.TransportError(
                        f"{request.method} {request.path}: {exc} "
                        f"(after {attempt} attempt{'s' if attempt > 1 else ''})", sent=exc.sent) from exc
                wait = self._backoff(attempt, policy.backoff_base, policy.backoff_cap)
                if self.clock() + wait > deadline:
                    raise errors.TransportError(
                        f"{request.method} {request.path}: {exc} (the retry budget of "
                        f"{policy.budget_seconds}s is spent)", sent=exc.sent) from exc
            else:
                if (last or reply.status not in RETRY_STATUSES
                        or (reply.status != 429 and not request.retryable)):
                    return reply
                after = retry_after_seconds(reply.headers)
                wait = after if after is not None else self._backoff(
                    attempt, policy.backoff_base, policy.backoff_cap)
                if self.clock() + wait > deadline:
                    return reply
            yield Sleep(wait)
        raise AssertionError("unreachable")

    def _backoff(self, attempt: int, base: float, cap: float) -> float:
        # full jitter: uniform in [0, min(cap, base * 2^(attempt-1))), so
        # that clients that failed together do not come back together
        return min(cap, base * 2 ** (attempt - 1)) * self.jitter()

    def call(self, request: Request) -> Operation[Reply]:
        """``exchange``, then raise the error of an error answer."""
        reply = yield from self.exchange(request)
        if reply.status >= 400:
            raise errors.error_from_reply(reply.status, reply.headers, reply.body,
                                          retry_after_seconds(reply.headers))
        return reply

    # --- requests -----------------------------------------------------------

    def _write(self, method: str, path: str, body: Mapping[str, Any] | None, *,
               idempotency_key: str | None, content_type: str = "application/json",
               extra: Mapping[str, str] | None = None) -> Request:
        headers = self.base_headers()
        if body is not None:
            headers["Content-Type"] = content_type
        if idempotency_key is None and self.idempotency_keys:
            idempotency_key = str(uuid.uuid4())
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_header(idempotency_key)
        headers.update(extra or {})
        return Request(method, path, headers, None if body is None else encode(body),
                       retryable=idempotency_key is not None)

    def _read(self, path: str, query: Mapping[str, Any] | None = None,
              extra: Mapping[str, str] | None = None) -> Request:
        query = {k: v for k, v in (query or {}).items() if v is not None}
        return Request("GET", path + ("?" + urlencode(query) if query else ""),
                       {**self.base_headers(), **(extra or {})})

    @staticmethod
    def _if_match(version: Version | None) -> dict[str, str]:
        if version is None:
            return {}
        if version == "*":
            return {"If-Match": "*"}
        if isinstance(version, bool) or not isinstance(version, int):
            raise TypeError(f"version must be an int or '*', not {version!r}")
        return {"If-Match": f'"{version}"'}

    # --- operations -----------------------------------------------------------

    def create(self, state: Mapping[str, Any], *, session_id: str | None, ttl_seconds: int | None,
               owner_id: str | None, idempotency_key: str | None) -> Operation[Session]:
        body: dict[str, Any] = {"state": state}
        for name, value in (("session_id", session_id), ("ttl_seconds", ttl_seconds),
                            ("owner_id", owner_id)):
            if value is not None:
                body[name] = value
        reply = yield from self.call(self._write("POST", "/sessions", body,
                                                 idempotency_key=idempotency_key))
        return Session.from_api(reply.json(), reply.headers)

    def get(self, session_id: str, *, max_stale: int | bool | None = None) -> Operation[Session]:
        extra = {}
        if max_stale is True:
            extra["Cache-Control"] = "max-stale"
        elif max_stale is not None and max_stale is not False:
            if isinstance(max_stale, bool) or not isinstance(max_stale, int) or max_stale < 0:
                raise ValueError("max_stale is a number of seconds (or True: any age)")
            extra["Cache-Control"] = f"max-stale={max_stale}"
        reply = yield from self.call(self._read(session_path(session_id), extra=extra))
        return Session.from_api(reply.json(), reply.headers)

    def refresh(self, session: Session) -> Operation[Session]:
        reply = yield from self.call(self._read(session_path(session.session_id),
                                                extra={"If-None-Match": session.etag}))
        if reply.status == 304:
            return session
        return Session.from_api(reply.json(), reply.headers)

    def put(self, session_id: str, state: Mapping[str, Any], *, version: Version | None,
            if_absent: bool = False, ttl_seconds: int | None = None, owner_id: str | None = None,
            idempotency_key: str | None = None) -> Operation[Session]:
        body: dict[str, Any] = {"state": state}
        if ttl_seconds is not None:
            body["ttl_seconds"] = ttl_seconds
        if owner_id is not None:
            body["owner_id"] = owner_id
        extra = self._if_match(version)
        if if_absent:
            extra["If-None-Match"] = "*"
        reply = yield from self.call(self._write("PUT", session_path(session_id), body,
                                                 idempotency_key=idempotency_key, extra=extra))
        return Session.from_api(reply.json(), reply.headers)

    def patch(self, session_id: str, state_patch: Mapping[str, Any] | None, *,
              version: Version | None, ttl_seconds: int | None,
              idempotency_key: str | None) -> Operation[Session]:
        body: dict[str, Any] = {}
        if state_patch is not None:
            body["state"] = state_patch
        if ttl_seconds is not None:
            body["ttl_seconds"] = ttl_seconds
        reply = yield from self.call(self._write(
            "PATCH", session_path(session_id), body, idempotency_key=idempotency_key,
            content_type=MERGE_PATCH, extra=self._if_match(version)))
        return Session.from_api(reply.json(), reply.headers)

    def delete(self, session_id: str, *, version: Version | None,
               idempotency_key: str | None) -> Operation[None]:
        yield from self.call(self._write("DELETE", session_path(session_id), None,
                                         idempotency_key=idempotency_key, extra=self._if_match(version)))
        return None

    def touch(self, session_id: str, *, ttl_seconds: int | None, version: Version | None,
              idempotency_key: str | None) -> Operation[Session]:
        body = None if ttl_seconds is None else {"ttl_seconds": ttl_seconds}
        reply = yield from self.call(self._write(
            "POST", session_path(session_id, "/touch"), body, idempotency_key=idempotency_key,
            extra=self._if_match(version)))
        return Session.from_api(reply.json(), reply.headers)

    def update(self, session_id: str, change: Change, *, attempts: int,
               ttl_seconds: int | None) -> Operation[Session]:
        """Read, re-apply ``change``, write if unchanged (If-Match); on a lost
        race start again from a fresh read, at most ``attempts`` times."""
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        for attempt in range(1, attempts + 1):
            session = yield from self.get(session_id)
            state = yield Apply(change, session.state)
            try:
                return (yield from self.put(session_id, state, version=session.version,
                                            ttl_seconds=ttl_seconds))
            except errors.ConcurrencyError:
                if attempt == attempts:
                    raise
            yield Sleep(self._backoff(attempt, self.conflict_backoff_base, self.conflict_backoff_cap))
        raise AssertionError("unreachable")

    def history_page(self, session_id: str, *, cursor: str | None, limit: int) -> Operation[EventPage]:
        reply = yield from self.call(self._read(session_path(session_id, "/events"),
                                                {"limit": limit, "cursor": cursor}))
        body = reply.json()
        return EventPage(body["session_id"], [Event.from_api(e) for e in body["events"]],
                         body.get("next_cursor"))

    def owner_sessions_page(self, owner_id: str, *, cursor: str | None,
                            limit: int) -> Operation[SessionPage]:
        reply = yield from self.call(self._read(f"/owners/{quote(owner_id, safe=':')}/sessions",
                                                {"limit": limit, "cursor": cursor}))
        body = reply.json()
        return SessionPage(body["owner_id"], [Session.from_api(s) for s in body["sessions"]],
                           body.get("next_cursor"))

    def revoke_all(self, owner_id: str, *, max_calls: int) -> Operation[RevokeResult]:
        """DELETE /owners/{id}/sessions until ``remaining`` is false (each call
        stops after a time budget on the server), at most ``max_calls`` times."""
        deleted = blocked = 0
        for call in range(1, max_calls + 1):
            # safe to repeat (a call cut short is finished by the next one)
            request = Request("DELETE", f"/owners/{quote(owner_id, safe=':')}/sessions",
                              self.base_headers(), retryable=True)
            body = (yield from self.call(request)).json()
            deleted += int(body["deleted"])
            blocked += int(body["blocked"])
            if not body["remaining"]:
                return RevokeResult(owner_id, deleted, blocked, call)
        raise errors.SessionSyncError(
            f"revoking the sessions of {owner_id!r} still had sessions left after {max_calls} calls "
            f"({deleted} deleted so far); call revoke_all again")

    def health(self) -> Operation[Health]:
        reply = yield from self.exchange(self._read("/health"))
        if reply.status not in (200, 503) or not reply.body:
            raise errors.error_from_reply(reply.status, reply.headers, reply.body)
        body = reply.json()
        if "checks" not in body:  # a 503 of another kind: not a health report
            raise errors.error_from_reply(reply.status, reply.headers, reply.body)
        return Health(body["status"], body["checks"], body.get("warnings", []), reply.status)


class CursorLoop:
    """Guards an iterator that follows ``next_cursor``: a listing ends when
    the cursor is null, and a cursor seen before would loop forever (a page
    may be empty and still have a next one, so emptiness proves nothing)."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def follow(self, cursor: str | None) -> bool:
        if cursor is None:
            return False
        if cursor in self.seen:
            raise errors.SessionSyncError(f"the server returned the cursor {cursor!r} twice; "
                                          "the listing would not end")
        self.seen.add(cursor)
        return True
