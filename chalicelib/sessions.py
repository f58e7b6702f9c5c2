"""The session service: what every route and CLI command calls.

It composes the Redis store, the SQS producer and (when configured) the
durable PostgreSQL copy used for recovery and history.  It owns the
recovery rule: a session whose Redis key is gone is served from
PostgreSQL only if PostgreSQL is not behind the version Redis last
acknowledged (the long-lived marker); otherwise the client gets a
retryable ``RecoveryPending`` (503) instead of an older version.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from chalicelib import metrics
from chalicelib.errors import RecoveryPending, SessionNotFound, SessionSyncError
from chalicelib.store import KeyBehind, KeyMissing, Session, SessionStore, WriteResult
from chalicelib.validation import CreateRequest, UpdateRequest

log = logging.getLogger("sessionsync.sessions")


class Publisher(Protocol):
    def publish(self, result: WriteResult) -> bool: ...


class DurableSessions(Protocol):
    """The read side of PostgreSQL that the service needs."""

    def latest(self, session_id: str) -> Session | None:
        """Latest persisted state (deleted ones included), or None."""

    def history_page(self, session_id: str, *, limit: int, before_version: int | None,
                     max_bytes: int) -> tuple[Sequence[dict[str, Any]], bool]:
        """Persisted events, newest first, versions below ``before_version``:
        at most ``limit``, stopping before their states pass about
        ``max_bytes`` (at least one), and whether older ones remain."""


@dataclass(frozen=True)
class Read:
    session: Session
    #: served from PostgreSQL after the Redis key was gone
    recovered: bool = False


# A history page stops before its response passes this: a Lambda response
# is capped at 6 MB, and the rest is headroom for the page's own fields and
# the response's headers.  One event (a state of at most MAX_STATE_BYTES,
# however escaped) is far below it.
HISTORY_PAGE_BYTES = 5 * 1024 * 1024


def _response_bytes(event: dict[str, Any]) -> int:
    """What ``event`` adds to the Lambda response of its page: its JSON as
    ``web.json_response`` writes it (compact, non-ASCII as \\u escapes),
    written once more as a JSON string (the proxy response carries the body
    as one, where a quote or a backslash takes two bytes), and a comma."""
    text = json.dumps(event, separators=(",", ":"))
    return len(text) + text.count('"') + text.count("\\") + 1


@dataclass(frozen=True)
class HistoryPage:
    session_id: str
    events: Sequence[dict[str, Any]]
    next_before_version: int | None


class SessionService:
    def __init__(self, store: SessionStore, *, publisher: Publisher | None = None,
                 durable: DurableSessions | None = None, default_ttl: int = 3600) -> None:
        self.store = store
        self.publisher = publisher
        self.durable = durable
        self.default_ttl = default_ttl

    @metrics.timed_write("create")
    def create(self, request: CreateRequest) -> Session:
        """Raises SessionExists, ServiceUnavailable."""
        result = self.store.create(request.session_id, request.state_json,
                                   request.ttl_seconds or self.default_ttl)
        self._ship(result)
        return result.session

    def get(self, session_id: str) -> Read:
        """Raises SessionNotFound, RecoveryPending, ServiceUnavailable."""
        session = self.store.get(session_id)
        if session is not None:
            return Read(session)
        return Read(self._recover(session_id), recovered=True)

    @metrics.timed_write("update")
    def update(self, request: UpdateRequest) -> Session:
        """Compare-and-set.  Raises ConcurrencyError, SessionNotFound,
        RecoveryPending, ServiceUnavailable."""
        try:
            result = self.store.update(request.session_id, request.state_json,
                                       request.expected_version)
        except KeyMissing:
            self._recover(request.session_id)
            result = self.store.update(request.session_id, request.state_json,
                                       request.expected_version)
        self._ship(result)
        return result.session

    @metrics.timed_write("delete")
    def delete(self, session_id: str, expected_version: int | None = None) -> Session:
        """Tombstone the session.  Raises as ``update``."""
        try:
            result = self.store.delete(session_id, expected_version)
        except KeyMissing:
            self._recover(session_id)
            result = self.store.delete(session_id, expected_version)
        self._ship(result)
        return result.session

    def history(self, session_id: str, *, limit: int, before_version: int | None,
                max_bytes: int = HISTORY_PAGE_BYTES) -> HistoryPage:
        """Persisted events newest first: at most ``limit``, and a page stops
        before its response passes ``max_bytes`` (a Lambda response is
        capped), always holding at least one event; ``next_before_version``
        says whether there is more, whatever the page's length.

        Raises SessionNotFound when nothing is persisted and Redis does not
        know the session either (a session created a moment ago has an
        empty history until the pipeline persisted its first event).
        """
        if self.durable is None:
            raise SessionNotFound(session_id)
        # PostgreSQL bounds the page by an estimate (the state as jsonb
        # text), so it never ships much more than the budget; the exact
        # bound is measured here, on what the response will carry.
        events, more = self.durable.history_page(session_id, limit=limit, before_version=before_version,
                                                 max_bytes=max_bytes)
        if not events and self.store.marker(session_id) is None:
            raise SessionNotFound(session_id)
        kept, total = 0, 0
        for event in events:
            total += _response_bytes(event)
            if kept and total > max_bytes:
                break
            kept += 1
        more = more or kept < len(events)
        page = list(events[:kept])
        return HistoryPage(session_id, page, page[-1]["version"] if more else None)

    def _ship(self, result: WriteResult) -> None:
        """Send the committed change on; never fails the (acknowledged) write.

        The publisher is built on first use (a cold Lambda looks its queue URL
        up here, after the Redis commit): if that fails, answering 503 would
        make the client retry a write that succeeded (409 SessionExists or
        ConcurrencyError).  The outbox entry stays and the relay sends it.
        """
        if self.publisher is None:
            return
        try:
            self.publisher.publish(result)
        except SessionSyncError as exc:
            log.error("cannot reach the queue; the outbox relay will send the change",
                      extra={"event_id": result.event_id, "code": exc.code, "error": exc.message})

    def _recover(self, session_id: str) -> Session:
        """Bring a session whose Redis key is gone back from PostgreSQL.

        Timeline of the race this guards against::

            t0  PUT v7 acknowledged (Redis v7, marker 7, event queued)
            t1  Redis key expires / is evicted
            t2  GET: PostgreSQL still has v6 (consumer behind)  -> 503, not v6
            t3  consumer persists v7
            t4  GET: PostgreSQL v7 >= marker 7  -> restored, served
        """
        marker = self.store.marker(session_id)
        if marker is not None and marker[1]:
            raise SessionNotFound(session_id, deleted=True)
        if self.durable is None:
            raise SessionNotFound(session_id)
        persisted = self.durable.latest(session_id)
        acknowledged = marker[0] if marker else 0
        persisted_version = persisted.version if persisted else 0
        if acknowledged > persisted_version:
            raise RecoveryPending(session_id, acknowledged_version=acknowledged,
                                  persisted_version=persisted_version)
        if persisted is None:
            raise SessionNotFound(session_id)
        if persisted.deleted:
            raise SessionNotFound(session_id, deleted=True)
        try:
            restored = self.store.restore(persisted)
        except KeyBehind as exc:
            raise RecoveryPending(session_id, acknowledged_version=exc.marker_version,
                                  persisted_version=persisted.version) from None
        if restored is None:
            raise SessionNotFound(session_id)
        metrics.emit({"RecoveryReads": 1})
        return restored
