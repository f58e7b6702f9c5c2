"""The outbox relay: every committed change reaches SQS from here.

Every write records its event in the outbox of its hash slot and publishes
it on the store's Pub/Sub channel, in the same Lua script as the write
(``chalicelib.adapters.redis.store``), and answers: the request never waits
for SQS.  The relay runs continuously (docs/decisions/relay-off-the-request-path.md):

* one relay at a time holds a lease in Redis (``RelayLease``); the
  scheduled function is invoked every minute, and each run waits for the
  lease, holds it until the next run asks for it (or its time is up), then
  hands over.  A relay that dies stops renewing, and the next one takes
  over when the lease expires;
* while it holds the lease it listens on the channel: each event wakes it
  the moment its write committed, and it hands what arrived to its lanes
  (``Lanes``: a session's changes always in one, in commit order), which
  send in SendMessageBatch calls of up to 10, several at once, and ack the
  entries SQS took, while it listens on;
* Pub/Sub is fire-and-forget, so every ``sweep_interval`` it also reads the
  outbox itself for entries older than ``age_seconds`` (a wake-up missed
  while it reconnected, a send SQS refused), and all of it when it starts
  listening (what was committed while no relay listened).

Timeline of the cases it covers::

    normal      t0 Lua write + outbox entry + publish ─ reply ─ relay wakes, sends, acks (ms)
    relay dies  t0 write + entry ─ ✝ relay ... t0+lease: the next relay takes over, sweeps, sends
    SQS down    t0 write + entry ─ send fails: entry stays ... sweeps retry ... SQS back: sent
    slow send   t0 write + entry ─ send in flight > age ─ a sweep sends it too ─ both ack
                -> the event is in SQS twice: the consumer skips the duplicate
                   (one row per session and version), so a duplicate is harmless.
    two relays  the lease keeps one sending; a relay that lost it (paused past
                its expiry) sends at most what it had in hand: duplicates again.

The outbox is the record: an entry leaves it only once SQS took its
message, so nothing acknowledged is lost while Redis keeps its data.  A
relay that stops is an alarm (``OutboxOldestAgeSeconds``, emitted while a
relay runs: no relay, no data points, which the alarm treats as breaching).
"""
from __future__ import annotations

import logging
import re
import threading
import time
import uuid
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, Self

from chalicelib.adapters.aws import session_of
from chalicelib.adapters.redis.keys import BUCKETS, bucket_of
from chalicelib.constants import RELAY_SENDERS
from chalicelib.domain.errors import ServiceUnavailable
from chalicelib.observability import metrics

log = logging.getLogger("sessionsync.outbox")

DEFAULT_AGE_SECONDS = 5.0
PAGE = 500
#: SendMessageBatch's limit: a wake-up's events go in chunks of this many
SQS_BATCH = 10
#: the lease is renewed this often (it lasts RELAY_LEASE_SECONDS)
RENEW_SECONDS = 1.0
#: a relay waiting for the lease asks this often
LEASE_POLL_SECONDS = 0.1
#: the outbox is read directly this often, besides the wake-ups
SWEEP_SECONDS = 1.0
#: OutboxRelayed and OutboxOldestAgeSeconds are emitted this often
METRICS_SECONDS = 10.0
#: after handing over, how long a relay waits to see the successor hold the
#: lease before it takes it back (a successor that died as it was handed it)
HANDOVER_CONFIRM_SECONDS = 2.0
#: a lane holds at most this many SendMessageBatch calls' worth of changes;
#: beyond, the relay stops reading and Pub/Sub buffers (SQS slower than the writes)
LANE_QUEUE_CHUNKS = 50
#: a sweep due while the lanes hold more than a round of sends is tried again after this
SWEEP_DEFER_SECONDS = 0.05
#: a relay run that ends waits at most this long for its sends in flight,
#: within the margin it keeps before its Lambda's timeout
#: (SCHEDULE_MARGIN_SECONDS); a send still in flight then finishes, or not,
#: in the background: what is queued, or unacked, stays in the outbox
LANES_CLOSE_SECONDS = 4.0
#: after Redis failed the relay, it waits this long before listening again
REDIS_RETRY_SECONDS = 0.5
# the head of an event as write.lua builds it: the id comes second
_EVENT_ID = re.compile(rb'\{"schema_version":\d+,"event_id":"([^"]+)"')


class Outbox(Protocol):
    """What the relay reads (``store.SessionStore``)."""

    def outbox_pending(self, older_than_s: float, limit: int = ...,
                       start_bucket: int = ...) -> Iterable[tuple[str, str]]: ...

    def outbox_oldest_ms(self) -> float | None: ...


class Sender(Protocol):
    """What the relay sends with (``producer.SqsProducer``): sends, acks the
    outbox entries SQS accepted, and returns their ids."""

    def send_many(self, events: Iterable[tuple[str, str]]) -> list[str]: ...


class Lease(Protocol):
    """One relay at a time (``chalicelib.adapters.redis.lease.RelayLease``)."""

    def take(self, token: str) -> bool: ...

    def renew(self, token: str) -> tuple[bool, bool]: ...

    def release(self, token: str) -> None: ...

    def holder(self) -> str | None: ...


class Wakeups(Protocol):
    """The change events as published (``subscription.Subscription``)."""

    def raw(self, timeout: float) -> bytes | None: ...

    def close(self) -> None: ...


@dataclass
class RelayResult:
    found: int = 0
    sent: int = 0
    #: a drain stopped by its time budget with more old entries waiting
    more: bool = False

    def __iadd__(self, other: RelayResult) -> Self:
        self.found += other.found
        self.sent += other.sent
        return self


@dataclass
class RelayRun(RelayResult):
    """What one run of the continuous relay did (``OutboxRelay.serve``)."""

    #: seconds it waited for the lease, and held it
    waited: float = 0.0
    held: float = 0.0
    #: reads of the outbox itself, and the entries its wake-ups sent
    sweeps: int = 0
    woken: int = 0
    #: seconds from the run's start until it relayed (lease held, listening,
    #: first sweep done): its cold start, for a run that never waited
    ready: float = 0.0
    #: why it ended: "budget", "handed over", "lease lost", "stopped", "never held"
    ended: str = ""

    def to_dict(self) -> dict[str, object]:
        return {"found": self.found, "sent": self.sent, "waited_seconds": round(self.waited, 3),
                "held_seconds": round(self.held, 3), "sweeps": self.sweeps, "woken": self.woken,
                "ready_seconds": round(self.ready, 6), "ended": self.ended}


class OutboxRelay:
    """Sends outbox entries to SQS (store and producer given): ``serve`` is
    the continuous relay (lease and wake-ups given), ``drain`` one pass
    over what is pending (``sessionsync relay --once``, tests)."""

    def __init__(self, outbox: Outbox, sender: Sender, *, age_seconds: float = DEFAULT_AGE_SECONDS,
                 page: int = PAGE, clock: Callable[[], float] = time.monotonic,
                 lease: Lease | None = None, listen: Callable[[], Wakeups] | None = None,
                 senders: int = RELAY_SENDERS, sweep_seconds: float = SWEEP_SECONDS,
                 wall: Callable[[], float] = time.time) -> None:
        self.outbox = outbox
        self.sender = sender
        self.age_seconds = age_seconds
        self.page = page
        self.clock = clock
        self.lease = lease
        self.listen = listen
        self.senders = senders
        self.sweep_seconds = sweep_seconds
        self.wall = wall
        self._start_bucket = 0

    # -- one pass over what is pending -----------------------------------------

    def run_once(self, *, age_seconds: float | None = None,
                 lanes: Lanes | None = None) -> RelayResult:
        """One page: up to ``page`` entries older than ``age_seconds``
        (default ``self.age_seconds``), sent in SQS batches (with ``lanes``,
        several at once).

        Raises ServiceUnavailable when Redis cannot be read; SQS failures
        are not raised (the entries stay and the next pass tries again).
        """
        age = self.age_seconds if age_seconds is None else age_seconds
        pending = list(self.outbox.outbox_pending(age, self.page, start_bucket=self._start_bucket))
        if not pending:
            return RelayResult()
        # next time, start after the last bucket read: entries SQS keeps
        # refusing cannot fill every page and starve the other buckets
        self._start_bucket = (bucket_of(pending[-1][0].rsplit(":", 1)[0]) + 1) % BUCKETS
        sent = len(self.sender.send_many(pending)) if lanes is None else lanes.send(pending)
        result = RelayResult(found=len(pending), sent=sent)
        if result.sent < result.found:
            metrics.emit({"ShipFailures": result.found - result.sent})
            log.warning("outbox entries not sent; will retry",
                        extra={"unsent": result.found - result.sent})
        return result

    def drain(self, *, budget_seconds: float, age_seconds: float | None = None,
              report: bool = True, lanes: Lanes | None = None) -> RelayResult:
        """Pages until the outbox has nothing old left, a send fails, or the
        time budget is spent; ``report``: emit OutboxRelayed (a continuous
        relay reports its sweeps with its wake-ups instead).

        Raises ServiceUnavailable when Redis cannot be read.
        """
        deadline = self.clock() + budget_seconds
        total = RelayResult()
        while True:
            result = self.run_once(age_seconds=age_seconds, lanes=lanes)
            total += result
            # a short page means nothing older is left; an incomplete send
            # means SQS is failing: stop and let the next pass retry
            if result.found < self.page or result.sent < result.found or self.clock() >= deadline:
                total.more = result.found == self.page and result.sent == result.found
                if total.sent and report:
                    metrics.emit({"OutboxRelayed": total.sent})
                return total

    # -- the continuous relay ----------------------------------------------------

    def serve(self, *, budget_seconds: float, stop: threading.Event | None = None,
              run: RelayRun | None = None) -> RelayRun:
        """One run of the continuous relay: wait for the lease, then relay
        every change as it commits until the budget is spent, a successor
        asks for the lease, or ``stop`` is set.  Never raises: Redis or SQS
        trouble is logged and retried within the budget.  Returns ``run``
        (a new one if not given), filled as it goes."""
        assert self.lease is not None and self.listen is not None, "serve needs a lease and wake-ups"
        stop = stop or threading.Event()
        start = self.clock()
        deadline = start + budget_seconds
        token = uuid.uuid4().hex
        run = RelayRun() if run is None else run
        if not self._wait_for_lease(token, deadline, stop):
            run.waited, run.ended = self.clock() - start, "never held"
            return run
        held_from = self.clock()
        run.waited = held_from - start
        try:
            run.ended = self._hold(token, deadline, stop, run, start)
        finally:
            if run.ended != "handed over":
                try:
                    self.lease.release(token)
                except ServiceUnavailable:
                    pass  # it expires on its own
            run.held = self.clock() - held_from
        log.info("relay run ended", extra=run.to_dict())
        return run

    def _wait_for_lease(self, token: str, deadline: float, stop: threading.Event) -> bool:
        assert self.lease is not None
        while not stop.is_set() and self.clock() < deadline:
            try:
                if self.lease.take(token):
                    return True
            except ServiceUnavailable as exc:
                log.warning("relay cannot reach its lease", extra={"error": exc.message})
            stop.wait(LEASE_POLL_SECONDS)
        return False

    def _hold(self, token: str, deadline: float, stop: threading.Event, run: RelayRun,
              started: float) -> str:
        """Relay while holding the lease; returns why it stopped."""
        assert self.lease is not None
        renewed = self.clock()
        loop = _Loop(self, run, started)
        try:
            while not stop.is_set() and self.clock() < deadline:
                if self.clock() - renewed >= RENEW_SECONDS:
                    try:
                        held, successor = self.lease.renew(token)
                    except ServiceUnavailable as exc:
                        log.warning("relay cannot renew its lease", extra={"error": exc.message})
                        loop.redis_failed()
                        stop.wait(REDIS_RETRY_SECONDS)
                        continue
                    renewed = self.clock()
                    if not held:
                        log.warning("relay lost its lease (paused past it); another relay runs")
                        return "lease lost"
                    try:
                        if successor and self._hand_over(token, stop):
                            return "handed over"
                    except ServiceUnavailable:
                        continue  # the next renewal says whether it is still ours
                loop.step(min(RENEW_SECONDS, max(0.0, deadline - self.clock())))
        finally:
            loop.close()
        return "stopped" if stop.is_set() else "budget"

    def _hand_over(self, token: str, stop: threading.Event) -> bool:
        """Release to the successor waiting; True once it holds the lease,
        False (the lease taken back) if none took it in time."""
        assert self.lease is not None
        self.lease.release(token)
        until = self.clock() + HANDOVER_CONFIRM_SECONDS
        while self.clock() < until and not stop.is_set():
            holder = self.lease.holder()
            if holder is not None and holder != token:
                log.info("relay handed over to the next run")
                return True
            stop.wait(LEASE_POLL_SECONDS / 2)
        # the successor vanished (or we are stopping): keep relaying
        return not self.lease.take(token)


def lane_of(event_id: str, lanes: int) -> int:
    """The lane of a change: its session's, whatever its version."""
    return zlib.crc32(session_of(event_id).encode()) % lanes


class Batch:
    """Changes handed to the lanes together: ``done`` once each was sent
    (``sent`` counts those SQS took) or left in the outbox."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.left = size
        self.sent = 0
        self.done = threading.Event()
        if size == 0:
            self.done.set()


class Lanes:
    """``lanes`` senders beside the relay's loop, each a thread sending its
    lane's changes in the order they were handed over, SQS_BATCH per
    SendMessageBatch, the moment it is free: the loop hands a wake-up's
    changes over and goes back to listening, so a send stuck in SQS's tail
    holds its own lane only, not the next wake-up (the relay used to wait
    for every lane's send before it read on: the slowest call of each round
    became every change's wait).

    A session's changes always go to the same lane, so they are never sent
    concurrently and reach SQS in the order they committed: a FIFO queue
    (SESSION_QUEUE_FIFO) delivers each session's events in that order.  A
    lane whose chunk SQS did not take whole stops: what it held, and what
    it is handed until ``reset``, stays in the outbox, in order, for a
    sweep.  ``close`` leaves what is queued (it is in the outbox) and waits
    for the sends in flight.
    """

    def __init__(self, sender: Sender, lanes: int, *, limit: int | None = None) -> None:
        self.sender = sender
        self.queues: list[deque[tuple[str, str, Batch]]] = [deque() for _ in range(lanes)]
        self.failed = [False] * lanes
        #: changes queued or in flight; ``full`` at ``limit``
        self.pending = 0
        self.limit = limit if limit is not None else LANE_QUEUE_CHUNKS * SQS_BATCH * lanes
        self._cond = threading.Condition()
        self._closing = False
        self._threads = [threading.Thread(target=self._lane, args=(i,), daemon=True,
                                          name=f"relay-lane-{i}") for i in range(lanes)]
        for thread in self._threads:
            thread.start()

    def put(self, events: Sequence[tuple[str, str]]) -> Batch:
        """Hand ``events`` over, each to its session's lane; returns at once."""
        batch = Batch(len(events))
        with self._cond:
            dropped = 0
            for event in events:
                lane = lane_of(event[0], len(self.queues))
                if self.failed[lane] or self._closing:
                    dropped += 1  # it stays in the outbox, behind the change SQS refused
                    continue
                self.queues[lane].append((event[0], event[1], batch))
                self.pending += 1
            self._settle(batch, dropped)
            self._cond.notify_all()
        return batch

    def send(self, events: Sequence[tuple[str, str]]) -> int:
        """Hand ``events`` over and wait until each was sent or left: how
        many SQS took (a sweep's page)."""
        batch = self.put(events)
        batch.done.wait()
        return batch.sent

    def any_failed(self) -> bool:
        return any(self.failed)

    def full(self, wait: float) -> bool:
        """Whether the lanes hold ``limit`` changes, waiting up to ``wait``
        seconds for room (SQS slower than the writes: the relay reads no
        more meanwhile and Redis buffers the wake-ups)."""
        with self._cond:
            if self.pending >= self.limit:
                self._cond.wait(wait)
            return self.pending >= self.limit

    def reset(self) -> None:
        """Let the lanes that stopped send again (a sweep sent everything
        pending: what they left is in SQS now)."""
        with self._cond:
            self.failed = [False] * len(self.failed)

    def close(self, timeout: float) -> None:
        with self._cond:
            self._closing = True
            for queue in self.queues:
                while queue:
                    self._settle(queue.popleft()[2], 1)
                    self.pending -= 1
            self._cond.notify_all()
        until = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, until - time.monotonic()))

    def _settle(self, batch: Batch, count: int, sent: int = 0) -> None:
        batch.left -= count
        batch.sent += sent
        if batch.left <= 0:
            batch.done.set()

    def _lane(self, lane: int) -> None:
        queue = self.queues[lane]
        while True:
            with self._cond:
                while not queue and not self._closing:
                    self._cond.wait()
                if not queue:
                    return
                chunk = [queue.popleft() for _ in range(min(SQS_BATCH, len(queue)))]
            try:
                took = set(self.sender.send_many([(eid, body) for eid, body, _ in chunk]))
            except Exception:  # the lane must survive anything; the outbox keeps the changes
                log.exception("relay send failed")
                took = set()
            with self._cond:
                left: list[tuple[str, str, Batch]] = []
                if not all(eid in took for eid, _, _ in chunk):
                    # SQS is failing: the rest of the lane waits in the outbox, in order
                    self.failed[lane] = True
                    left = list(queue)
                    queue.clear()
                for eid, _, batch in chunk:
                    self._settle(batch, 1, int(eid in took))
                for _, _, batch in left:
                    self._settle(batch, 1)
                self.pending -= len(chunk) + len(left)
                self._cond.notify_all()


class _Loop:
    """The body of a held lease: listen, hand what wakes it to the lanes, sweep."""

    def __init__(self, relay: OutboxRelay, run: RelayRun, started: float) -> None:
        self.relay = relay
        self.run = run
        self.started = started
        self.lanes = Lanes(relay.sender, relay.senders)
        self.wakeups: Wakeups | None = None
        self.swept = float("-inf")
        self.reported = relay.clock()
        self.relayed = 0
        # wake-ups handed to the lanes, until they are sent (or left)
        self.in_lanes: deque[Batch] = deque()
        # a send failed: wake-ups are left to the sweeps (which then take
        # every entry, not only old ones) until one sends all it found
        self.failing = False

    def step(self, wait: float) -> None:
        relay = self.relay
        try:
            if self.wakeups is None:
                # listen BEFORE reading the outbox: a change committed
                # after the read is then heard, one committed before is read
                assert relay.listen is not None  # serve checked it
                self.wakeups = relay.listen()
                self.swept = float("-inf")
                self.failing = True  # the first sweep takes everything pending
            self._settle()
            if relay.clock() - self.swept < relay.sweep_seconds:
                wait = min(wait, self.swept + relay.sweep_seconds - relay.clock())
            elif self.lanes.pending <= SQS_BATCH * relay.senders:
                # a backlog (SQS was down, a relay was away) is drained a
                # budget at a time, with the wake-ups read in between, and
                # no pause: the next sweep follows at once
                wait = 0.0 if self._sweep() else min(wait, relay.sweep_seconds)
            else:
                # the lanes are behind: a sweep would wait for all they hold
                # (and read again what they hold, if it is old): soon
                wait = min(wait, SWEEP_DEFER_SECONDS)
            # lanes full: the lease is renewed meanwhile, and the loop comes back here
            if not self.lanes.full(wait):
                events = self._collect(wait)
                if events and not self.failing:
                    self._send(events)
            # reported however far behind SQS is: the lag alarm needs the figure
            if relay.clock() - self.reported >= METRICS_SECONDS:
                self._report()
        except ServiceUnavailable as exc:
            log.warning("relay cannot reach Redis; listening again", extra={"error": exc.message})
            self.redis_failed()
            time.sleep(REDIS_RETRY_SECONDS)

    def redis_failed(self) -> None:
        if self.wakeups is not None:
            try:
                self.wakeups.close()
            except Exception:  # the connection is already gone
                pass
            self.wakeups = None

    def _sweep(self) -> bool:
        """Whether it left old entries behind (its budget ran out)."""
        relay = self.relay
        if self.failing:
            # everything pending is read from here on, in commit order: the
            # lanes that stopped at a refused change may send again
            self.lanes.reset()
        age = 0.0 if self.failing else relay.age_seconds
        result = relay.drain(budget_seconds=relay.sweep_seconds * 5, age_seconds=age, report=False,
                             lanes=self.lanes)
        self.swept = relay.clock()
        self.run += result
        self.run.sweeps += 1
        if self.run.sweeps == 1:
            self.run.ready = relay.clock() - self.started
        self.relayed += result.sent
        if result.sent == result.found:
            self.failing = False
        if result.more:
            self.swept = float("-inf")
        return result.more

    def _collect(self, timeout: float) -> list[tuple[str, str]]:
        """The events published until ``timeout`` passes without one: the
        first waited for, then what has already arrived (at most a round
        of sends)."""
        assert self.wakeups is not None
        events: list[tuple[str, str]] = []
        data = self.wakeups.raw(timeout)
        limit = SQS_BATCH * self.relay.senders
        while data is not None:
            match = _EVENT_ID.match(data)
            if match:  # another publisher's message: not ours to send
                events.append((match.group(1).decode(), data.decode()))
            if len(events) >= limit:
                break
            data = self.wakeups.raw(0)
        return events

    def _send(self, events: Sequence[tuple[str, str]]) -> None:
        """Hand the events to the lanes, and listen on at once."""
        self.run.found += len(events)
        self.in_lanes.append(self.lanes.put(events))
        self._settle()

    def _settle(self, *, closing: bool = False) -> None:
        """Count what the lanes sent of the wake-ups; a refusal leaves the
        changes to the sweeps, from the outbox."""
        while self.in_lanes and self.in_lanes[0].done.is_set():
            batch = self.in_lanes.popleft()
            self.run.sent += batch.sent
            self.run.woken += batch.sent
            self.relayed += batch.sent
            if batch.sent < batch.size and not closing:
                metrics.emit({"ShipFailures": batch.size - batch.sent})
                log.warning("SQS refused changes; the relay retries them from the outbox",
                            extra={"unsent": batch.size - batch.sent})
        if self.lanes.any_failed():
            self.failing = True

    def _report(self) -> None:
        """OutboxRelayed and the oldest entry's age: the lag alarm."""
        relay = self.relay
        oldest = relay.outbox.outbox_oldest_ms()
        age = 0.0 if oldest is None else max(0.0, relay.wall() - oldest / 1000)
        metrics.emit({"OutboxRelayed": self.relayed, "OutboxOldestAgeSeconds": round(age, 3)})
        log.info("relay running", extra=self.run.to_dict())
        self.relayed = 0
        self.reported = relay.clock()

    def close(self) -> None:
        self.redis_failed()
        # what is queued stays in the outbox for the next run; the sends in
        # flight are waited for (each bounded by the SQS client's timeouts)
        self.lanes.close(LANES_CLOSE_SECONDS)
        self._settle(closing=True)
