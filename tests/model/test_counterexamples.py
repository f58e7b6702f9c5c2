"""Counterexamples the model test found, shrunk, kept as named regression
tests: each replays the steps hypothesis printed, on the same world, and
fails (teardown raises the model's violation) while its defect is there.

How many examples the search took to find each, from scratch: docs/guarantees.md,
"The model".
"""
from __future__ import annotations

import pytest

from tests.model.machine import LONG_TTL

pytestmark = [pytest.mark.model, pytest.mark.localstack]


def test_a_session_recovered_after_its_key_was_evicted_ends_when_its_lifetime_ends(machine):
    state = machine()
    state.create(i=0, owned=False, ttl=8, via_put=False)
    state.pipeline_catches_up()
    state.time_passes(seconds=3.0)
    state.key_evicted(i=0)
    state.get(i=0, max_stale=False)  # recovered: restored with EX ttl_seconds, not the time left
    state.time_passes(seconds=3.0)
    state.time_passes(seconds=3.0)
    state.get(i=0, max_stale=False)  # past expires_at: 200 with an expires_at in the past
    state.teardown()


def test_a_failover_repair_never_revives_an_expired_session(machine):
    state = machine()
    state.create(i=0, owned=False, ttl=8, via_put=False)
    state.redis_forgets(kind="replica-falls-behind", i=0)
    state.put(i=0, precondition="body-version", stale=False, ttl=1)
    state.pipeline_catches_up()
    state.time_passes(seconds=1.5)  # the sweep: v3 session_expired
    state.redis_forgets(kind="failover", i=0)  # to the replica holding v1 (8 s lifetime)
    state.get(i=0, max_stale=False)  # 503: the settle time
    state.time_passes(seconds=1.5)
    state.get(i=0, max_stale=False)  # repaired from the session_expired row: 200, state null
    state.teardown()


def test_a_lagging_replica_that_takes_over_never_brings_back_a_session_a_shorter_lifetime_ended(machine):
    """Found from scratch (a survey, the fix reverted): a session whose
    lifetime a touch shortened, expired and recorded so, while the replica
    that takes over at the end still holds its first version, live."""
    state = machine()
    state.create(i=0, owned=False, ttl=LONG_TTL, via_put=False)
    state.redis_forgets(kind="replica-falls-behind", i=0)  # the replica keeps v1, live for a minute
    state.touch(i=0, ttl=4)  # v2, 4 s left
    state.time_passes(seconds=3.0, memory_pressure=False)
    # the end: time passes, the sweep records v3 session_expired, the
    # replica takes over; the repair wrote v3 back as live: 200, state null
    state.teardown()


def test_a_revoke_all_spares_a_session_created_after_it_began(machine):
    state = machine()
    state.create(i=0, owned=True, ttl=8, via_put=False)
    state.revoke_all_while_creating(n=1)  # the late session is deleted by the index walk
    state.teardown()


def test_a_revoke_all_of_an_owner_with_an_expired_session_finishes(machine):
    state = machine()
    state.create(i=0, owned=True, ttl=1, via_put=False)
    state.pipeline_catches_up()
    state.time_passes(seconds=1.5)
    state.revoke_until_done()  # remaining: true for ever
    state.teardown()
