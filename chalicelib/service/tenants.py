"""One tenant's view of the sessions: the one place where a client's ids
become internal ids and back (chalicelib/domain/tenants.py has the grammar).

Every route calls ``TenantSessions`` for the tenant of its caller's key.
In: a session id ``s1`` and an owner id ``u1`` become ``acme/s1`` and
``acme/u1`` (the default tenant's stay as they are).  Out: sessions,
pages, history and errors show the client's ids again.  Isolation follows
from the mapping, not from checks scattered over the routes: tenant B's
``s1`` is ``b/s1``, another key than ``acme/s1``, so B's read of it finds
nothing (404, never 403: existence does not leak), B's owner index holds
only ``b/...`` ids, and a revoke-all walks only its own owner's index and
PostgreSQL rows (``sync_sessions.owner_id`` is ``b/u1``).
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from chalicelib.domain import tenants
from chalicelib.domain.errors import SessionLimitReached, SessionSyncError
from chalicelib.domain.idempotency import Idempotency
from chalicelib.domain.session import Session, iso_to_ms
from chalicelib.domain.validation import CreateRequest, MaxStale, PatchRequest, UpdateRequest
from chalicelib.observability import metrics
from chalicelib.service.sessions import HistoryPage, Read, SessionService

if TYPE_CHECKING:  # imported where they are used (cold start)
    from chalicelib.adapters.redis.tenant_counts import Reservation, TenantCounts
    from chalicelib.service.owners import OwnerPage, RevokeResult

log = logging.getLogger("sessionsync.tenants")

#: the details of an error that hold an id (shown to the client as its own)
_ID_DETAILS = ("session_id", "owner_id")


class TenantSessions:
    """``SessionService`` (and the owner routes) for one tenant's ids."""

    def __init__(self, service: SessionService, tenant: str, *, counts: TenantCounts | None = None,
                 max_sessions: int = 0) -> None:
        self.service = service
        self.tenant = tenant
        self._prefix = tenants.prefix(tenant)
        #: TENANT_MAX_SESSIONS: the tenant's live sessions are counted and
        #: capped (None: neither, and no Redis call is added to a write)
        self.counts = counts if max_sessions > 0 else None
        self.max_sessions = max_sessions

    # --- the mapping -----------------------------------------------------

    def inward(self, client_id: str) -> str:
        return self._prefix + client_id

    def outward(self, internal: str) -> str:
        return tenants.client_id(self.tenant, internal)

    def _session(self, session: Session) -> Session:
        if not self._prefix:
            return session
        return dataclasses.replace(session, session_id=self.outward(session.session_id),
                                   owner_id=session.owner_id and self.outward(session.owner_id))

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """An error raised inside names the client's ids, in its details
        and its message (ids are quoted there: ``'acme/s1'``)."""
        try:
            yield
        except SessionSyncError as exc:
            if self._prefix:
                for name in _ID_DETAILS:
                    value = exc.details.get(name)
                    if isinstance(value, str):
                        exc.details[name] = self.outward(value)
                exc.message = exc.message.replace("'" + self._prefix, "'")
                exc.args = (exc.message,)
            raise

    # --- the routes' calls -------------------------------------------------

    def create(self, request: CreateRequest, idempotency: Idempotency | None = None) -> Session:
        inner = dataclasses.replace(request, session_id=self.inward(request.session_id),
                                    owner_id=request.owner_id and self.inward(request.owner_id))
        with self._errors():
            if self.counts is None:
                return self._session(self.service.create(inner, idempotency))
            place = self._reserve(inner)
            try:
                session = self.service.create(inner, idempotency)
            except SessionSyncError as exc:
                if place.added and exc.status < 500:  # certainly not created: give the place back
                    self.counts.release(self.tenant, inner.session_id)
                raise
            return self._session(session)

    def _reserve(self, request: CreateRequest) -> Reservation:
        """A place for the new session among the tenant's live ones, or 429."""
        assert self.counts is not None
        ttl = request.ttl_seconds or self.service.default_ttl
        ends = int(self.service.store.clock() * 1000) + ttl * 1000
        place = self.counts.reserve(self.tenant, request.session_id, ends, self.max_sessions)
        if not place.reserved:
            metrics.emit({"SessionLimitRefusals": 1}, dimensions={"tenant": self.tenant})
            raise SessionLimitReached(self.tenant, limit=self.max_sessions,
                                      retry_after_seconds=max(1.0, place.wait_ms / 1000))
        metrics.emit({"TenantSessions": place.live}, dimensions={"tenant": self.tenant})
        return place

    def _counted(self, session: Session, *, ended: bool = False) -> Session:
        """Keep the count with a write that moved the lifetime (or ended it).
        Never fails the acknowledged write: a lost update is logged (the
        count then ends the session early, or keeps it until its old end)."""
        if self.counts is not None:
            try:
                if ended:
                    self.counts.release(self.tenant, session.session_id)
                else:
                    self.counts.slide(self.tenant, session.session_id, iso_to_ms(session.expires_at))
            except SessionSyncError as exc:
                log.warning("the tenant's session count missed a write", extra={
                    "code": exc.code, "session_id": session.session_id})
        return session

    def get_accepting_stale(self, session_id: str, max_stale: MaxStale | None) -> Read:
        with self._errors():
            read = self.service.get_accepting_stale(self.inward(session_id), max_stale)
        return dataclasses.replace(read, session=self._session(read.session))

    def update(self, request: UpdateRequest, idempotency: Idempotency | None = None) -> Session:
        inner = dataclasses.replace(request, session_id=self.inward(request.session_id))
        with self._errors():
            return self._session(self._counted(self.service.update(inner, idempotency)))

    def patch(self, request: PatchRequest, idempotency: Idempotency | None = None) -> Session:
        inner = dataclasses.replace(request, session_id=self.inward(request.session_id))
        with self._errors():
            return self._session(self._counted(self.service.patch(inner, idempotency)))

    def delete(self, session_id: str, expected_version: int | None = None,
               idempotency: Idempotency | None = None) -> Session:
        with self._errors():
            return self._session(self._counted(self.service.delete(
                self.inward(session_id), expected_version, idempotency), ended=True))

    def touch(self, session_id: str, expected_version: int | None = None,
              ttl_seconds: int | None = None, idempotency: Idempotency | None = None) -> Session:
        with self._errors():
            return self._session(self._counted(self.service.touch(
                self.inward(session_id), expected_version, ttl_seconds, idempotency)))

    def history(self, session_id: str, *, limit: int, before_version: int | None) -> HistoryPage:
        with self._errors():
            page = self.service.history(self.inward(session_id), limit=limit,
                                        before_version=before_version)
        # the events hold no id: only the page's own
        return dataclasses.replace(page, session_id=session_id)

    def owner_sessions(self, owner_id: str, *, limit: int, after: str | None) -> OwnerPage:
        from chalicelib.service import owners

        with self._errors():
            page = owners.list_sessions(self.service, self.inward(owner_id), limit=limit,
                                        after=after and self.inward(after))
        return owners.OwnerPage(owner_id, [self._session(s) for s in page.sessions],
                                page.next_after and self.outward(page.next_after))

    def revoke_owner(self, owner_id: str, *, budget_seconds: float) -> RevokeResult:
        from chalicelib.service import owners

        with self._errors():
            result = owners.revoke_all(self.service, self.inward(owner_id),
                                       budget_seconds=budget_seconds)
        return dataclasses.replace(result, owner_id=owner_id)
