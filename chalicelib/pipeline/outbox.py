"""The outbox relay: re-send change events that never reached SQS.

Every write records its event in the outbox of its hash slot, in the same
Lua script as the write (``chalicelib.adapters.redis.store``); the request then sends it
to SQS and removes the entry (``chalicelib.pipeline.producer``).  An entry still
there after ``age_seconds`` means that the process died between the two
steps, or SQS (or the ack) failed.  The relay sends those again, on a
schedule (a Chalice scheduled Lambda every minute; ``sessionsync relay``
and the local server's relay thread every second).

Timeline of the cases it covers::

    normal      t0 Lua write + outbox entry ─ t0+2ms SQS send ─ ack (entry gone)
    died        t0 Lua write + outbox entry ─ ✝            ... t0+age relay sends, acks
    SQS down    t0 Lua write + entry ─ send fails ... relay fails ... SQS back: relay sends
    slow send   t0 Lua write + entry ─ send in flight > age ─ relay sends too ─ both ack
                -> the event is in SQS twice: the consumer skips the duplicate
                   (one row per session and version), so a duplicate is harmless.

The age keeps the relay from racing every in-flight request; it trades a
few seconds of delay for no duplicates in the common case.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from chalicelib.adapters.redis.keys import BUCKETS, bucket_of
from chalicelib.domain.errors import ServiceUnavailable
from chalicelib.observability import metrics

log = logging.getLogger("sessionsync.outbox")

DEFAULT_AGE_SECONDS = 5.0
PAGE = 500
# a local relay pass ends after this long even if entries keep coming, so
# that a stop request is seen
RUN_BUDGET_SECONDS = 30.0


class Outbox(Protocol):
    """What the relay reads (``store.SessionStore``)."""

    def outbox_pending(self, older_than_s: float, limit: int = ...,
                       start_bucket: int = ...) -> Iterable[tuple[str, str]]: ...


class Sender(Protocol):
    """What the relay sends with (``producer.SqsProducer``): sends, acks the
    outbox entries SQS accepted, and returns their ids."""

    def send_many(self, events: Iterable[tuple[str, str]]) -> list[str]: ...


@dataclass
class RelayResult:
    found: int = 0
    sent: int = 0

    def __iadd__(self, other: RelayResult) -> RelayResult:
        self.found += other.found
        self.sent += other.sent
        return self


class OutboxRelay:
    """Re-sends outbox entries older than ``age_seconds`` (store and producer given)."""

    def __init__(self, outbox: Outbox, sender: Sender, *, age_seconds: float = DEFAULT_AGE_SECONDS,
                 page: int = PAGE, clock: Callable[[], float] = time.monotonic) -> None:
        self.outbox = outbox
        self.sender = sender
        self.age_seconds = age_seconds
        self.page = page
        self.clock = clock
        self._start_bucket = 0

    def run_once(self) -> RelayResult:
        """One page: up to ``page`` old entries, sent in SQS batches.

        Raises ServiceUnavailable when Redis cannot be read; SQS failures
        are not raised (the entries stay and the next run tries again).
        """
        pending = list(self.outbox.outbox_pending(self.age_seconds, self.page,
                                                  start_bucket=self._start_bucket))
        if not pending:
            return RelayResult()
        # next time, start after the last bucket read: entries SQS keeps
        # refusing cannot fill every page and starve the other buckets
        self._start_bucket = (bucket_of(pending[-1][0].rsplit(":", 1)[0]) + 1) % BUCKETS
        sent = self.sender.send_many(pending)
        result = RelayResult(found=len(pending), sent=len(sent))
        metrics.emit({"OutboxRelayed": result.sent})
        log.info("outbox relayed", extra={"found": result.found, "sent": result.sent})
        if result.sent < result.found:
            log.warning("outbox entries not sent; will retry",
                        extra={"unsent": result.found - result.sent})
        return result

    def drain(self, *, budget_seconds: float) -> RelayResult:
        """Pages until the outbox has nothing old left, a send fails, or the
        time budget is spent (a scheduled Lambda must end before its timeout).

        Raises ServiceUnavailable when Redis cannot be read.
        """
        deadline = self.clock() + budget_seconds
        total = RelayResult()
        while True:
            result = self.run_once()
            total += result
            # a short page means nothing older is left; an incomplete send
            # means SQS is failing: stop and let the next schedule retry
            if result.found < self.page or result.sent < result.found or self.clock() >= deadline:
                return total

    def run(self, stop: threading.Event, *, interval: float = 1.0) -> None:
        """Drain every ``interval`` seconds until ``stop`` is set (local relay).

        Survives Redis outages (logs and tries again); never raises.
        """
        while not stop.is_set():
            try:
                self.drain(budget_seconds=RUN_BUDGET_SECONDS)
            except ServiceUnavailable as exc:
                log.warning("relay cannot read the outbox", extra={"error": exc.message})
            except Exception:  # a thread must not die silently: log, go on
                log.exception("relay run failed")
            stop.wait(interval)
