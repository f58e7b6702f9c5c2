"""The continuous relay (OutboxRelay.serve): woken by the change events as
they commit, one relay at a time through its lease, a dead relay taken
over, a running one handing over to the next scheduled run.  Real Redis,
LocalStack SQS; each assertion is on what the relay did (its run's
figures, who holds the lease, what reached the queue), every wait bounded."""
from __future__ import annotations

import json
import threading
import uuid
from typing import Any

import pytest

from chalicelib.adapters.redis.keys import RELAY_LEASE_KEYS
from chalicelib.pipeline.outbox import RelayRun
from tests.support.pipeline import outbox_entries_of, wait_until

pytestmark = [pytest.mark.localstack]

#: long enough that no sweep runs during a test: what is sent was woken
NO_SWEEP = 3600.0


class Serving:
    """A relay run in a thread, and what it returned."""

    def __init__(self, relay: Any, *, budget: float = 120.0) -> None:
        self.relay = relay
        self.stop = threading.Event()
        self.run: RelayRun | None = None
        #: filled as the run goes
        self.live = RelayRun()
        self.thread = threading.Thread(target=self._serve, args=(budget,), daemon=True)
        self.thread.start()

    def _serve(self, budget: float) -> None:
        self.run = self.relay.serve(budget_seconds=budget, stop=self.stop, run=self.live)

    def end(self, timeout: float = 20.0) -> RelayRun:
        self.stop.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the relay run did not end"
        assert self.run is not None
        return self.run


def queued_ids(pipeline, *expected: str, timeout: float = 30.0) -> set[str]:
    """Event ids of the messages on the test's queue, once every one of
    ``expected`` arrived (a run's first sweep and a wake-up may both send a
    change committed as the run starts: duplicates, which the consumer skips)."""
    ids: set[str] = set()

    def enough() -> bool:
        reply = pipeline.sqs.receive_message(QueueUrl=pipeline.queues.url, MaxNumberOfMessages=10,
                                             WaitTimeSeconds=1, VisibilityTimeout=300)
        ids.update(json.loads(m["Body"])["event_id"] for m in reply.get("Messages", []))
        return ids >= set(expected)
    wait_until(enough, timeout=timeout, what=f"{expected} on the queue", interval=0)
    return ids


@pytest.fixture(autouse=True)
def no_lease_left(pipeline):
    """The module's Redis is shared: each test starts with no relay's lease."""
    pipeline.store.client.delete(*RELAY_LEASE_KEYS)
    yield
    pipeline.store.client.delete(*RELAY_LEASE_KEYS)


def test_a_committed_write_wakes_the_relay_which_ships_it_without_a_sweep(pipeline):
    relay = pipeline.continuous_relay(sweep_seconds=NO_SWEEP, age_seconds=NO_SWEEP)
    serving = Serving(relay)
    holder = wait_until(lambda: relay.lease.holder(), timeout=10, what="the relay to hold its lease")
    # it listens, then sweeps once (everything pending): a write committed
    # from then on is shipped only if its wake-up is heard
    wait_until(lambda: serving.live.sweeps == 1, timeout=10, what="the relay's first sweep")
    sid = f"wake-{uuid.uuid4().hex[:8]}"
    pipeline.store.create(sid, '{"n":1}', 600)
    pipeline.store.update(sid, '{"n":2}', 1)
    assert queued_ids(pipeline, f"{sid}:1", f"{sid}:2") == {f"{sid}:1", f"{sid}:2"}
    wait_until(lambda: outbox_entries_of(pipeline.store, [sid]) == [], timeout=10,
               what="the entries acked once SQS took them")
    run = serving.end()
    assert run.sent >= 2 and run.ended == "stopped" and run.sweeps == 1, run
    assert relay.lease.holder() is None, f"the lease of {holder} was not released"


def test_two_relays_at_once_one_holds_the_lease_and_the_later_one_takes_over_by_hand_over(pipeline):
    first = Serving(pipeline.continuous_relay())
    wait_until(lambda: first.relay.lease.holder(), timeout=10, what="the first relay's lease")
    held_by_first = first.relay.lease.holder()
    second = Serving(pipeline.continuous_relay())
    # the first sees the second waiting at its next renewal and hands over
    wait_until(lambda: not first.thread.is_alive(), timeout=15, what="the first run to hand over")
    assert first.run is not None and first.run.ended == "handed over", first.run
    holder = wait_until(lambda: second.relay.lease.holder(), timeout=10, what="the second's lease")
    assert holder != held_by_first
    sid = f"two-{uuid.uuid4().hex[:8]}"
    pipeline.store.create(sid, '{"n":1}', 600)
    assert queued_ids(pipeline, f"{sid}:1") == {f"{sid}:1"}
    run = second.end()
    assert run.sent >= 1 and run.waited > 0


def test_a_relay_that_died_holding_the_lease_is_taken_over_when_it_expires(pipeline):
    relay = pipeline.continuous_relay(lease_seconds=1.5)
    # a relay died holding the lease: it never renews it, never releases it
    assert relay.lease.take("a-relay-that-died")
    sid = f"dead-{uuid.uuid4().hex[:8]}"
    pipeline.store.create(sid, '{"n":1}', 600)  # committed while no live relay listens
    serving = Serving(relay)
    assert queued_ids(pipeline, f"{sid}:1") == {f"{sid}:1"}
    run = serving.end()
    # it waited for the dead one's lease to expire, then swept what was pending
    assert run.waited >= 1.0, run
    assert run.sent >= 1


def test_a_relay_that_lost_its_lease_stops(pipeline):
    serving = Serving(pipeline.continuous_relay(lease_seconds=1.5))
    token = wait_until(lambda: serving.relay.lease.holder(), timeout=10, what="the relay's lease")
    # another relay's lease in its place (it paused past the expiry and another took over)
    pipeline.store.client.set(RELAY_LEASE_KEYS[0], "another-relay", px=60_000)
    wait_until(lambda: not serving.thread.is_alive(), timeout=15, what="the relay to stop")
    assert serving.run is not None and serving.run.ended == "lease lost", serving.run
    assert token != "another-relay" and serving.relay.lease.holder() == "another-relay"


def test_a_hand_over_to_a_successor_that_vanished_keeps_the_relay_running(pipeline):
    serving = Serving(pipeline.continuous_relay())
    token = wait_until(lambda: serving.relay.lease.holder(), timeout=10, what="the relay's lease")
    # a successor marks itself, then dies before it takes the lease
    pipeline.store.client.set(RELAY_LEASE_KEYS[1], "a-successor-that-died", px=1500)
    sid = f"vanished-{uuid.uuid4().hex[:8]}"
    wait_until(lambda: pipeline.store.client.get(RELAY_LEASE_KEYS[1]) is None, timeout=5,
               what="the successor's mark to lapse")
    # it released to the successor, saw none take over, and took the lease back
    assert wait_until(lambda: serving.relay.lease.holder(), timeout=10,
                      what="the relay to hold again") == token
    pipeline.store.create(sid, '{"n":1}', 600)
    assert queued_ids(pipeline, f"{sid}:1") == {f"{sid}:1"}
    assert serving.thread.is_alive(), serving.run
    assert serving.end().ended == "stopped"


def test_changes_sqs_refuses_stay_in_the_outbox_and_the_relay_ships_them_once_sqs_takes_them(pipeline):
    from chalicelib.pipeline.producer import SqsProducer

    # the relay is the only client of SQS: what it cannot send waits in the
    # outbox, never lost, never acked before SQS took it
    refusing = SqsProducer(pipeline.sqs, pipeline.queues.url + "-gone", pipeline.store)
    relay = pipeline.continuous_relay(sender=refusing, sweep_seconds=0.5, age_seconds=0.5)
    serving = Serving(relay)
    wait_until(lambda: pipeline.store.client.pubsub_numsub(pipeline.store.channel)[0][1] >= 1,
               timeout=10, what="the relay's subscription")
    sid = f"refused-{uuid.uuid4().hex[:8]}"
    pipeline.store.create(sid, '{"n":1}', 600)
    pipeline.store.update(sid, '{"n":2}', 1)
    # woken, then swept again and again: every attempt refused
    wait_until(lambda: serving.live.found >= 4, timeout=20,
               what="the relay to try the changes more than once")
    assert outbox_entries_of(pipeline.store, [sid]) == [f"{sid}:1", f"{sid}:2"]
    run = serving.end()
    assert run.sent == 0

    # the next run, with SQS taking them, ships both from the outbox
    serving = Serving(pipeline.continuous_relay())
    assert queued_ids(pipeline, f"{sid}:1", f"{sid}:2") == {f"{sid}:1", f"{sid}:2"}
    wait_until(lambda: outbox_entries_of(pipeline.store, [sid]) == [], timeout=10,
               what="the entries acked")
    serving.end()


def test_a_slow_send_holds_only_its_own_lane_while_the_relay_ships_the_other_sessions(pipeline):
    import zlib

    from chalicelib.adapters.aws import session_of
    from chalicelib.constants import RELAY_SENDERS

    def lane(sid: str) -> int:
        return zlib.crc32(sid.encode()) % RELAY_SENDERS

    slow = f"slow-{uuid.uuid4().hex[:8]}"
    fast = next(sid for sid in (f"fast-{uuid.uuid4().hex[:8]}" for _ in range(200))
                if lane(sid) != lane(slow))
    held, release = threading.Event(), threading.Event()

    class SlowForOneSession:
        """SQS taking one session's send only once released (a call stuck
        in SQS's tail), every other at once."""

        def send_many(self, events):
            events = list(events)
            if any(session_of(eid) == slow for eid, _ in events):
                held.set()
                release.wait(30)
            return pipeline.producer.send_many(events)

    relay = pipeline.continuous_relay(sender=SlowForOneSession(), sweep_seconds=NO_SWEEP,
                                      age_seconds=NO_SWEEP)
    serving = Serving(relay)
    try:
        wait_until(lambda: serving.live.sweeps == 1, timeout=10, what="the relay's first sweep")
        pipeline.store.create(slow, '{"n":1}', 600)
        wait_until(held.is_set, timeout=10, what="the slow session's send to start")
        pipeline.store.create(fast, '{"n":1}', 600)
        # woken while the other lane's send hangs: shipped all the same
        assert f"{fast}:1" in queued_ids(pipeline, f"{fast}:1", timeout=10)
        assert outbox_entries_of(pipeline.store, [slow]) == [f"{slow}:1"]  # not acked: not sent yet
    finally:
        release.set()
    assert f"{slow}:1" in queued_ids(pipeline, f"{slow}:1")
    wait_until(lambda: outbox_entries_of(pipeline.store, [slow, fast]) == [], timeout=10,
               what="both entries acked")
    assert serving.end().ended == "stopped"
