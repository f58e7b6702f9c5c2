"""The expiry sweep: one ``session_expired`` event per session whose lifetime ended.

Redis expires a session's key by itself; nothing tells PostgreSQL (Redis
keyspace notifications are fire-and-forget: a subscriber that is down
misses them for good).  So, on a schedule (a Chalice scheduled Lambda every
minute; ``sessionsync serve``'s worker and ``sessionsync sweep`` locally),
the sweep asks PostgreSQL which live sessions' lifetimes ended more than
``grace_seconds`` ago, in bounded batches, and for each runs EXPIRE_SCRIPT
in the session's slot (``chalicelib.adapters.redis.store``).  The script
writes only if Redis agrees the lifetime ended: the key is gone and the
marker names exactly PostgreSQL's version.  Its write is a final marker one
version on (the id is never reused; a read answers SessionExpired) and a
``session_expired`` event in the outbox: a normal outboxed write, so the
pipeline persists it exactly once (one row per session and version).

The races, and why each is safe::

    PostgreSQL lags      t0 PUT v8 slides the lifetime (queued); PostgreSQL has v7, expired
                         t1 sweep: marker 8 > 7 -> 'ahead', skipped; a later run sees v8
    kept alive by reads  SESSION_SLIDE_ON_READ: PostgreSQL's expires_at passed, the key is
                         alive -> 'alive', skipped (every run: it is no candidate to write)
    two sweeps           both read the candidate; the first script writes marker 8|E,
                         the second finds it final -> 'final': one event
    a write racing       before the script: the key exists -> 'alive'; after it: the
                         write finds marker E -> SessionExpired, nothing written
    crash midway         the script is atomic; its outbox entry is relayed if the
                         inline send never happened
    Redis lost it all    no key, no marker: PostgreSQL may lack a write still in the
                         queue, so the session is held for the settle time first (as
                         recovery does), then PostgreSQL is read again and trusted
    Redis went back      the bucket's settle time after a failover: skipped until then
    many skipped early   a run cut by its budget keeps its position (the store's): the
                         next goes on from there and round, so later ids get their turn
    two sweeps, one position  each saves where it stopped; the last one wins: at worst
                         a stretch is walked twice or waits one lap more, none for ever
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from chalicelib.domain.session import Session
from chalicelib.domain.store import Store, WriteResult
from chalicelib.observability import metrics

log = logging.getLogger("sessionsync.expiry")

BATCH = 100
# a local sweep pass ends after this long, so that a stop request is seen
RUN_BUDGET_SECONDS = 30.0


class Candidates(Protocol):
    """What the sweep reads from PostgreSQL (``database.Database``)."""

    def expiry_candidates(self, cutoff: datetime, *, after: str = ..., limit: int = ...) -> list[Session]: ...

    def latest(self, session_id: str) -> Session | None: ...


class Publisher(Protocol):
    def publish(self, result: WriteResult) -> bool: ...


@dataclass
class SweepResult:
    #: sessions PostgreSQL named as past their lifetime
    candidates: int = 0
    #: session_expired events written (each exactly once)
    expired: int = 0
    #: why the others were left alone this time (the script's reply, or
    #: ``settling`` / ``held`` / ``changed``): a later run looks again
    skipped: dict[str, int] = field(default_factory=dict)
    #: the ids expired (what ``sessionsync sweep`` prints)
    expired_ids: list[str] = field(default_factory=list)
    #: the whole candidate list was walked (not cut by the time budget)
    complete: bool = True

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


class ExpirySweep:
    """Store, PostgreSQL and (optionally) the producer given; see the module docstring."""

    def __init__(self, store: Store, durable: Candidates, *, publisher: Publisher | None = None,
                 settle_seconds: float, grace_seconds: float, batch: int = BATCH,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.durable = durable
        self.publisher = publisher
        self.settle_seconds = settle_seconds
        self.grace_seconds = grace_seconds
        self.batch = batch
        self.clock = clock

    def run(self, *, budget_seconds: float, dry_run: bool = False) -> SweepResult:
        """Walk the candidates by id, one batch at a time, from where the last
        run stopped (the store keeps the position), on to the last id, then
        from the first up to that position, until none is left or the budget
        is spent.  With ``dry_run`` nothing is written, the position neither:
        the candidates are counted only, all of them.  Raises
        ServiceUnavailable.

        A run cut by its budget leaves its position to the next.  Skipped
        candidates (kept alive by reads, PostgreSQL behind, held) are met
        again by every run; each starting from the first id, enough of them
        early in id order filled every run's budget, and no later session's
        end was ever recorded."""
        deadline = self.clock() + budget_seconds
        cutoff = datetime.fromtimestamp(self.store.clock() - self.grace_seconds, UTC)
        result = SweepResult()
        start = "" if dry_run else self.store.sweep_position()
        after, wrapped = start, False
        while True:
            batch = self.durable.expiry_candidates(cutoff, after=after, limit=self.batch)
            last = len(batch) < self.batch
            if wrapped:  # the second lap ends where the first began
                ours = [c for c in batch if c.session_id <= start]
                last = last or len(ours) < len(batch)
                batch = ours
            result.candidates += len(batch)
            for candidate in batch:
                if not dry_run:
                    self._one(candidate, result)
            if last and (wrapped or not start):
                break
            after, wrapped = ("", True) if last else (batch[-1].session_id, wrapped)
            if self.clock() >= deadline:
                result.complete = False
                break
        if not dry_run:
            self.store.set_sweep_position("" if result.complete else after)
        if result.expired or result.skipped:
            metrics.emit({"SessionsExpired": result.expired})
            log.info("expiry sweep", extra={"candidates": result.candidates, "expired": result.expired,
                                            "skipped": result.skipped})
        return result

    def _one(self, candidate: Session, result: SweepResult) -> None:
        sid = candidate.session_id
        left, _ = self.store.settle(sid, self.settle_seconds, unrecorded_settled=True)
        if left > 0:  # Redis went back in time here: PostgreSQL is not the judge yet
            result.skip("settling")
            return
        status, write = self.store.expire(sid, candidate)
        if status == "unknown":
            # no key and no marker: Redis lost the session; a write may be
            # on its way to PostgreSQL, so wait as recovery does
            if self.store.hold(sid, self.settle_seconds) > 0:
                result.skip("held")
                return
            persisted = self.durable.latest(sid)
            if (persisted is None or persisted.deleted or persisted.expired
                    or not persisted.expired_at(self.store.clock() - self.grace_seconds)):
                result.skip("changed")
                return
            status, write = self.store.expire(sid, persisted, marker_absent_ok=True)
        if write is None:
            result.skip(status)
            return
        result.expired += 1
        result.expired_ids.append(sid)
        self._ship(write)

    def _ship(self, write: WriteResult) -> None:
        """Send the event on now; never fails the sweep (the outbox entry
        stays, and the relay sends it)."""
        if self.publisher is None:
            return
        try:
            self.publisher.publish(write)
        except Exception as exc:  # deliberately broad: the write is committed
            metrics.emit({"ShipFailures": 1})
            log.error("could not ship a session_expired event; the outbox relay will send it",
                      extra={"event_id": write.event_id, "error": str(exc)})


