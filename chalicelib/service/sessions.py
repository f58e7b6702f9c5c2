"""The session service: what every route and CLI command calls.

It composes the hot store (the ``Store`` contract, chalicelib.domain.store),
and, when configured, PostgreSQL for recovery and history.  A write returns
once its script committed in Redis (the change event in the outbox with it):
the outbox relay ships it to SQS (chalicelib.pipeline.outbox).
It owns the rules for a Redis that forgot: Redis never serves, or accepts a
write on, a version older than PostgreSQL's, and never reuses an id.  The
store signals what it cannot decide (``KeyMissing``, ``IdUnknown``,
``EpochChanged``, ``RedisBehind``, ``MarkerAhead``) and each is resolved here
with PostgreSQL, once the changes acknowledged before Redis went back in
time had time to reach it (``_settle``).  Changes Redis lost before they
reached SQS cannot be saved: that is logged and counted
(``RedisEpochChanges``).  docs/guarantees.md, "How Redis forgetting is
handled", has the table.
"""
from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from chalicelib.config import Settings
from chalicelib.domain import validation
from chalicelib.domain.errors import (
    ConcurrencyError,
    KeptChanging,
    RecoveryPending,
    ServiceUnavailable,
    SessionExists,
    SessionExpired,
    SessionNotFound,
)
from chalicelib.domain.idempotency import Idempotency
from chalicelib.domain.session import Session
from chalicelib.domain.store import (
    EpochChanged,
    IdUnknown,
    KeyMissing,
    MarkerAhead,
    RedisBehind,
    Store,
    WriteResult,
)
from chalicelib.domain.validation import CreateRequest, MaxStale, PatchRequest, UpdateRequest
from chalicelib.observability import metrics

log = logging.getLogger("sessionsync.sessions")

# A write retried after recovering or reconciling with PostgreSQL; more
# attempts than this means Redis and PostgreSQL keep moving under it.
WRITE_ATTEMPTS = 3
# A PATCH that applies to whatever version is current reads, merges and
# writes with compare-and-set; each time another writer came first it reads
# again, at most this many times in all (attempts are counted, not time:
# docs/decisions/merge-patch.md), pausing a random time below a bound that
# doubles from PATCH_PAUSE_SECONDS up to PATCH_PAUSE_CAP_SECONDS so that
# writers racing on one session fall out of step.
PATCH_ATTEMPTS = 16
PATCH_PAUSE_SECONDS = 0.002
PATCH_PAUSE_CAP_SECONDS = 0.05
# Redis going back in time is logged at most this often per process (every
# bucket that sees it counts RedisEpochChanges).
REPORT_INTERVAL_SECONDS = 60.0


class DurableSessions(Protocol):
    """The read side of PostgreSQL that the service needs."""

    def latest(self, session_id: str) -> Session | None:
        """Latest persisted state (deleted ones included), or None."""

    def history_page(self, session_id: str, *, limit: int, before_version: int | None,
                     max_bytes: int) -> tuple[Sequence[dict[str, Any]], bool]:
        """Persisted events, newest first, versions below ``before_version``:
        at most ``limit``, stopping before their states pass about
        ``max_bytes`` (at least one), and whether older ones remain."""

    def owner_sessions(self, owner_id: str, *, after: str, limit: int, created_before: str,
                       ended_before: str) -> tuple[list[str], str | None]:
        """The ids among the owner's next ``limit`` rows after ``after`` that
        are live, created before ``created_before``, their lifetime not over
        before ``ended_before``; and the last id read (None: the end)."""


@dataclass(frozen=True)
class Read:
    session: Session
    #: served from PostgreSQL after the Redis key was gone
    recovered: bool = False
    #: served from PostgreSQL while Redis was unavailable, for a client that
    #: accepts a stale copy (``get_accepting_stale``): the copy's age in whole
    #: seconds (the HTTP ``Age``); None when served as usual
    stale_age: int | None = None


# A page (a session's history, an owner's sessions) stops before its
# response passes this: a Lambda response is capped at 6 MB, and the rest is
# headroom for the page's own fields and the response's headers.  One event
# or session (a state of at most MAX_STATE_BYTES, however escaped) is far
# below it.
PAGE_BYTES = 5 * 1024 * 1024


def response_bytes(text: str) -> int:
    """What a JSON text adds to the Lambda response of its page: the proxy
    response carries the body as a JSON string, where a quote, a backslash
    or a control character takes two bytes or more and a non-ASCII one six
    (twelve beyond the BMP), and a comma."""
    return len(json.dumps(text)) - 1


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
    def __init__(self, store: Store, *, durable: DurableSessions | None = None, default_ttl: int = 3600,
                 settle_seconds: float = Settings.redis_settle,
                 slide_on_read: bool = False) -> None:
        self.store = store
        #: SESSION_SLIDE_ON_READ: a GET gives the Redis key its full TTL again
        self.slide_on_read = slide_on_read
        self.durable = durable
        self.default_ttl = default_ttl
        self.settle_seconds = settle_seconds
        self._reported_at = float("-inf")

    @metrics.timed_write("create")
    def create(self, request: CreateRequest, idempotency: Idempotency | None = None) -> Session:
        """Raises SessionExists, ServiceUnavailable.

        Every write method takes ``idempotency`` (the request's
        Idempotency-Key): a write already recorded under the key is returned
        as it was (``Session.replayed``), committing nothing new; the
        store checks the record before anything else, so a replay needs
        neither PostgreSQL nor a settled Redis.  IdempotencyKeyReused when
        the key was recorded for another request.
        """
        ttl = request.ttl_seconds or self.default_ttl
        owner = request.owner_id
        if owner is not None:
            # BEFORE the create script: a revoke-all that reads the index
            # from now on sees the id (the timeline above store.owner_index_key)
            self.store.owner_register(owner, request.session_id)
        try:
            result = self.store.create(request.session_id, request.state_json, ttl, owner_id=owner,
                                       idempotency=idempotency,
                                       known_absent=self.durable is None)
        except IdUnknown:
            # ids are never reused, and Redis may have forgotten this one;
            # after a failover, its creation may still be in the queue
            self._settle(request.session_id, unrecorded_settled=True)
            assert self.durable is not None  # known_absent above: IdUnknown only with one
            persisted = self.durable.latest(request.session_id)
            if persisted is not None:
                raise SessionExists(request.session_id, version=persisted.version,
                                    deleted=persisted.deleted) from None
            result = self.store.create(request.session_id, request.state_json, ttl,
                                       idempotency=idempotency, owner_id=owner)
        return result.session

    def get(self, session_id: str) -> Read:
        """Raises SessionNotFound, RecoveryPending, ServiceUnavailable."""
        try:
            session = self.store.get(session_id, verify=self.durable is not None,
                                     slide=self.slide_on_read)
        except EpochChanged as exc:
            assert exc.session is not None  # store.get raises it with the value it read
            return self._confirm(exc.session, exc.epoch)
        if session is not None:
            return Read(session)
        return Read(self._recover(session_id), recovered=True)

    def get_accepting_stale(self, session_id: str, max_stale: MaxStale | None,
                            now: float | None = None) -> Read:
        """``get``; but when Redis is unavailable (a ``ServiceUnavailable``
        naming Redis: unreachable, timed out, or holding the session while
        it is reconciled after a failover or a restart) and the client said
        it accepts a stale copy (``Cache-Control: max-stale``), the last
        state PostgreSQL persisted.

        The copy's age is ``now`` (seconds since the epoch; the clock by
        default) minus its ``updated_at``, the time the persisted version
        was written in Redis, in whole seconds: how long ago the copy was
        current for sure.  It may be behind acknowledged writes (still in
        the queue, or lost with Redis): the client chose that.

        * older than ``max_stale.seconds``, or not persisted at all (it may
          exist, created a moment ago): Redis's 503 unchanged, with the
          copy's age in ``details`` when there is one.  (A 503, not RFC
          9111's 504: this service is the origin, and its clients already
          retry a 503 after its Retry-After.)
        * persisted as deleted: 404, as always (a deletion is final); as
          expired (``session_expired`` recorded): 404 ``SessionExpired``; its
          lifetime ended but no expiry recorded yet: Redis's 503 unchanged
          (a write in the queue may have slid it).
        * PostgreSQL down too: Redis's 503 unchanged.

        Any other error (RecoveryPending: PostgreSQL behind Redis; a 404
        from a Redis that answers) is raised as ``get`` raises it: the
        opt-in covers a Redis that cannot answer, nothing else.
        """
        if max_stale is None or self.durable is None:
            return self.get(session_id)
        try:
            return self.get(session_id)
        except ServiceUnavailable as exc:
            if exc.dependency != "redis":
                raise
            return self._persisted_copy(session_id, max_stale,
                                        time.time() if now is None else now, exc)

    def _persisted_copy(self, session_id: str, max_stale: MaxStale, now: float,
                        redis_down: ServiceUnavailable) -> Read:
        assert self.durable is not None  # get_accepting_stale: only with one
        try:
            persisted = self.durable.latest(session_id)
        except ServiceUnavailable:
            log.warning("Redis and PostgreSQL both unavailable: no stale copy to serve",
                        extra={"session_id": session_id})
            raise redis_down from None
        if persisted is None:
            raise redis_down
        if persisted.deleted:
            raise SessionNotFound(session_id, deleted=True)
        if persisted.expired:  # the expiry sweep recorded its end: final, as a deletion
            raise SessionExpired(session_id, expires_at=persisted.expires_at)
        if persisted.expired_at(now):
            # its lifetime ended as far as PostgreSQL knows; a write still in
            # the queue may have slid it: neither served nor called expired
            raise redis_down
        written = datetime.fromisoformat(persisted.updated_at).timestamp()
        age = max(0, int(now - written))  # a clock behind Redis's: not negative
        if max_stale.seconds is not None and age > max_stale.seconds:
            redis_down.details.update(persisted_age_seconds=age, max_stale_seconds=max_stale.seconds)
            raise redis_down
        metrics.emit({"StaleReads": 1})
        return Read(persisted, recovered=True, stale_age=age)

    @metrics.timed_write("update")
    def update(self, request: UpdateRequest, idempotency: Idempotency | None = None) -> Session:
        """Compare-and-set.  Raises ConcurrencyError, SessionNotFound,
        RecoveryPending, ServiceUnavailable; ``idempotency`` as ``create``."""
        result = self._write(request.session_id, lambda persisted: self.store.update(
            request.session_id, request.state_json, request.expected_version,
            persisted_version=persisted, ttl_seconds=request.ttl_seconds,
            idempotency=idempotency))
        return result.session

    @metrics.timed_write("touch")
    def touch(self, session_id: str, expected_version: int | None = None,
              ttl_seconds: int | None = None, idempotency: Idempotency | None = None) -> Session:
        """Extend the lifetime from now (with ``ttl_seconds`` as the new TTL
        if given) without changing the state: a new version and a
        ``session_touched`` event.  Raises as ``update`` (SessionExpired
        once the lifetime ended: a touch does not revive a session);
        ``idempotency`` as ``create``."""
        result = self._write(session_id, lambda persisted: self.store.touch(
            session_id, expected_version, persisted_version=persisted, ttl_seconds=ttl_seconds,
            idempotency=idempotency))
        return result.session

    @metrics.timed_write("patch")
    def patch(self, request: PatchRequest, idempotency: Idempotency | None = None) -> Session:
        """Apply a merge patch (RFC 7396) to the session's state atomically:
        read, merge, compare-and-set at the version read, so that the patch
        applies to exactly the state it was merged into and no concurrent
        change is lost.  With If-Match naming a version, only at that one
        (ConcurrencyError otherwise: the route makes it a 412); without, a
        lost race reads again (``PATCH_ATTEMPTS``).

        Timeline of the lost update this prevents::

            t0  A reads v5 {"a":1}        B reads v5 {"a":1}
            t1  A writes v6 {"a":1,"x":1} (expected 5: ok)
            t2  B writes {"a":1,"y":1} expected 5: refused (v6), so B reads
                v6 again and writes v7 {"a":1,"x":1,"y":1}; an unconditional
                write at t2 would have dropped A's "x"

        Raises ConcurrencyError (If-Match lost), KeptChanging (every attempt
        lost), PayloadTooLarge / ValidationError (the merged state), and as
        ``update``.

        With ``idempotency``, the record is looked up before the read (a
        retry of a patch that was applied would otherwise read the version
        it made and fail its If-Match, or find the session deleted since),
        and passed to the compare-and-set, whose script checks it again
        atomically (a concurrent retry)."""
        if idempotency is not None:
            done = self.store.recorded(request.session_id, idempotency)
            if done is not None:
                return done.session
        pinned = request.if_match.version if request.if_match is not None else None
        lost: ConcurrencyError | None = None
        for attempt in range(PATCH_ATTEMPTS):
            current = self.get(request.session_id).session
            if pinned is not None and current.version != pinned:
                raise ConcurrencyError(request.session_id, expected_version=pinned,
                                       actual_version=current.version)
            state_json = validation.merged_state(current.state, request.state_patch,
                                                 request.max_state_bytes)
            try:
                result = self._write(request.session_id, self._compare_and_set(
                    request.session_id, state_json, current.version, idempotency=idempotency,
                    ttl_seconds=request.ttl_seconds))
            except ConcurrencyError as exc:
                if pinned is not None:
                    raise
                lost = exc
                if attempt + 1 < PATCH_ATTEMPTS:
                    _pause(attempt)
                continue
            if attempt:
                metrics.emit({"PatchRetries": attempt})
            return result.session
        assert lost is not None  # every attempt lost
        raise KeptChanging(request.session_id, attempts=PATCH_ATTEMPTS,
                           expected_version=current.version, actual_version=lost.actual_version)

    def _compare_and_set(self, session_id: str, state_json: str, expected_version: int,
                         idempotency: Idempotency | None = None,
                         ttl_seconds: int | None = None) -> Callable[[int | None], WriteResult]:
        """The store write of a patch merged into ``expected_version``."""
        return lambda persisted: self.store.update(
            session_id, state_json, expected_version, persisted_version=persisted,
            ttl_seconds=ttl_seconds, idempotency=idempotency)

    @metrics.timed_write("delete")
    def delete(self, session_id: str, expected_version: int | None = None,
               idempotency: Idempotency | None = None) -> Session:
        """Tombstone the session.  Raises as ``update``."""
        result = self._write(session_id, lambda persisted: self.store.delete(
            session_id, expected_version, persisted_version=persisted, idempotency=idempotency))
        return result.session

    def _write(self, session_id: str, write: Callable[[int | None], WriteResult]) -> WriteResult:
        """Run a store write, recovering a missing key or reconciling a value
        of another epoch with PostgreSQL first when the store asks.  ``write``
        takes the version PostgreSQL holds (None: not asked yet)."""
        persisted = None if self.durable is not None else 0
        for _ in range(WRITE_ATTEMPTS):
            try:
                return write(persisted)
            except KeyMissing:
                self._recover(session_id)
            except (EpochChanged, RedisBehind) as exc:
                persisted = self._reconcile(session_id, exc.version,
                                            epoch=exc.epoch if isinstance(exc, EpochChanged) else None)
        raise ServiceUnavailable(f"session {session_id!r} kept changing while Redis was being "
                                 "reconciled with PostgreSQL; retry", dependency="redis")

    def history(self, session_id: str, *, limit: int, before_version: int | None,
                max_bytes: int = PAGE_BYTES) -> HistoryPage:
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

    def _reconcile(self, session_id: str, redis_version: int, *, epoch: str | None = None) -> int:
        """PostgreSQL's version of a session whose Redis value predates Redis's
        last jump back in time; Redis is repaired from PostgreSQL first when
        it is behind.  ``epoch``, the value's, lets a node proven to continue
        that epoch's history skip the wait (``_settle``).

        Timeline of the failover this guards against::

            t0  PUT v7 acknowledged on the primary, persisted; not replicated
            t1  failover: the replica (v6) is promoted; the epoch changes
            t2  PUT expected 6: the script sees a v6 of the old epoch -> here
                PostgreSQL has v7 > 6: Redis is repaired to v7, the PUT gets
                ConcurrencyError (actual 7) instead of writing a second v7

        The repair writes v7 back for what is left of its lifetime; a v7
        whose lifetime ended, or PostgreSQL's ``session_expired``, is over:
        the store drops the older value and raises SessionExpired (the
        marker names v7, final for a recorded end), never a revived session.
        """
        self._settle(session_id, value_epoch=epoch)
        assert self.durable is not None  # reconciling is only done with PostgreSQL
        persisted = self.durable.latest(session_id)
        if persisted is None:
            return 0
        if persisted.version > redis_version:
            metrics.emit({"RedisRepairs": 1})
            log.warning("Redis was behind PostgreSQL; repaired", extra={
                "session_id": session_id, "redis_version": redis_version,
                "persisted_version": persisted.version})
            try:
                self.store.restore(persisted, repair=True)
            except MarkerAhead as exc:  # Redis acknowledged a newer one meanwhile
                return exc.marker_version
        return persisted.version

    def _settle(self, session_id: str, *, unrecorded_settled: bool = False,
                value_epoch: str | None = None) -> None:
        """Raise ServiceUnavailable (503, retry later) while the changes sent
        before Redis went back in time may still be on their way to
        PostgreSQL; see the module docstring.  A failover that is proven to
        have lost nothing (the promoted node continues the history of
        ``value_epoch`` past where this process saw it end: SETTLE_SCRIPT)
        did not go back in time: no wait for that value.

        Timeline::

            t0  PUT v7 acknowledged (sent to SQS; not replicated)
            t1  failover: the promoted replica holds v6
            t2  PUT expected 6: PostgreSQL still at v6 (v7 in the queue);
                judged now, a second v7 would be accepted -> 503 instead
            t3  consumer persists v7
            t4  (t1 + settle) PUT expected 6: PostgreSQL v7 -> Redis
                repaired, ConcurrencyError (actual 7)
        """
        left, went_back = self.store.settle(session_id, self.settle_seconds,
                                            unrecorded_settled=unrecorded_settled,
                                            value_epoch=value_epoch)
        if went_back:
            metrics.emit({"RedisEpochChanges": 1})
        if went_back and not self._reported_at + REPORT_INTERVAL_SECONDS > time.monotonic():
            # once in a while, not once per bucket
            self._reported_at = time.monotonic()
            log.error("Redis went back in time (a failover, a restart without persistence, a "
                      "flush): sessions it may hold stale wait for PostgreSQL; acknowledged "
                      "changes whose outbox entries it lost before they reached SQS are lost",
                      extra={"session_id": session_id, "settle_seconds": self.settle_seconds})
        _retry_later(left, f"Redis failed over or restarted; session {session_id!r} is being "
                           "reconciled with PostgreSQL")

    def _confirm(self, session: Session, epoch: str | None = None) -> Read:
        """Serve a value of another epoch (``epoch``) once PostgreSQL
        confirmed it (or PostgreSQL's newer version, after repairing Redis
        with it)."""
        persisted = self._reconcile(session.session_id, session.version, epoch=epoch)
        if persisted > session.version:
            return self.get(session.session_id)  # repaired: the current epoch now
        try:
            self.store.vouch(session, persisted)
        except RedisBehind as exc:
            raise RecoveryPending(session.session_id, acknowledged_version=persisted,
                                  persisted_version=exc.version) from None
        return Read(session)

    def _recover(self, session_id: str) -> Session:
        """Bring a session whose Redis key is gone back from PostgreSQL.

        Timeline of the race this guards against::

            t0  PUT v7 acknowledged (Redis v7, marker 7, event queued)
            t1  Redis key expires / is evicted
            t2  GET: PostgreSQL still has v6 (consumer behind)  -> 503, not v6
            t3  consumer persists v7
            t4  GET: PostgreSQL v7 >= marker 7  -> restored, served

        Recovery is for a session Redis LOST while it was alive, never for
        one whose lifetime ended (SessionExpired): PostgreSQL's copy is
        judged only once it is known to be current (the marker checks and
        waits below), as a write still in the queue may have slid the
        lifetime::

            t0  PUT v7 (ttl 60) acknowledged at 12:00:00, queued
            t1  12:01:01 the key expired; PostgreSQL still has v6 (11:59:00 + 60)
            t2  GET: marker 7 > 6 -> 503 RecoveryPending, not SessionExpired
            t3  consumer persists v7; GET: v7 expired at 12:01:00 -> SessionExpired
        """
        marker = self.store.marker(session_id)
        if marker is not None and marker.deleted:
            raise SessionNotFound(session_id, deleted=True)
        if marker is not None and marker.expired:  # the expiry sweep's final marker
            raise SessionExpired(session_id)
        if self.durable is None:
            raise SessionNotFound(session_id)
        persisted = self.durable.latest(session_id)
        if persisted is not None and persisted.expired:  # final, as a deletion is: no wait
            raise SessionExpired(session_id)
        if marker is None and persisted is not None and not persisted.deleted:
            # Redis has no trace of a session PostgreSQL knows: it lost it
            # (flush, restart, eviction, a key deleted by hand), or the
            # marker outlived its TTL.  PostgreSQL may lack changes still in
            # the queue: wait as after a jump back in time, for the bucket
            # (and its report) and for this session, lost on its own.
            # (A deletion is final: it needs no wait.)
            self._settle(session_id)
            _retry_later(self.store.hold(session_id, self.settle_seconds),
                         f"Redis lost session {session_id!r}; it is being recovered from PostgreSQL")
        acknowledged = marker.version if marker else 0
        persisted_version = persisted.version if persisted else 0
        if marker is None and persisted is None:
            # a new id; or, if Redis just went back in time, one whose
            # creation is still in the queue
            self._settle(session_id, unrecorded_settled=True)
        if acknowledged > persisted_version:
            raise RecoveryPending(session_id, acknowledged_version=acknowledged,
                                  persisted_version=persisted_version)
        if persisted is None:
            raise SessionNotFound(session_id)
        if persisted.deleted:
            raise SessionNotFound(session_id, deleted=True)
        if persisted.expired_at(self.store.clock()):
            # PostgreSQL is current (above) and its lifetime ended: the key
            # expired, it was not lost (or it was lost after its end)
            raise SessionExpired(session_id, expires_at=persisted.expires_at)
        try:
            restored = self.store.restore(persisted)
        except MarkerAhead as exc:
            raise RecoveryPending(session_id, acknowledged_version=exc.marker_version,
                                  persisted_version=persisted.version) from None
        if restored is None:
            # Two readers of a session Redis lost, under eviction:
            #   t0  A and B miss; both read PostgreSQL v19 (not behind the marker)
            #   t1  A restores v19
            #   t2  B's restore finds A's key ('exists')
            #   t3  the key is evicted again before B reads it
            # B knows the session exists, not which version is current (a
            # write may have followed A's restore): a 503, never a 404.
            raise ServiceUnavailable(f"session {session_id!r} changed while it was being recovered; "
                                     "retry", dependency="redis", retry_after_seconds=1)
        metrics.emit({"RecoveryReads": 1})
        return restored


def _pause(attempt: int) -> None:
    """Sleep a random time below PATCH_PAUSE_SECONDS * 2**attempt (capped)."""
    time.sleep(random.uniform(0, min(PATCH_PAUSE_CAP_SECONDS, PATCH_PAUSE_SECONDS * 2 ** attempt)))


def _retry_later(left: float, why: str) -> None:
    """Raise ServiceUnavailable (503) saying when to come back, while ``left``
    seconds of a settle time or a hold remain."""
    if left > 0:
        raise ServiceUnavailable(f"{why}: retry in {left:.1f}s", dependency="redis",
                                 retry_after_seconds=round(left, 1))
