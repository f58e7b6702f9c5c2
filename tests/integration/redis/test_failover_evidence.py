"""A failover that lost nothing costs no settle time; one that lost writes still does.

A real primary and replica behind a proxy standing in for the endpoint's DNS
name (tests/support/servers.ReplicatedRedis), the service with PostgreSQL
behind it and the DEFAULT settle time.  The evidence is the demoted node's
own account of where its history ended (asked on the pooled connection that
meets its READONLY: client.ended_history) against the promoted node's
master_replid2 / second_repl_offset (SETTLE_SCRIPT).  The tests assert on
what the code did (the evidence accepted or not, the bucket's record, the
answers), not on wall-clock time alone.
"""
from __future__ import annotations

import time
import uuid

import pytest
import redis

from chalicelib.adapters.redis.client import connect_redis
from chalicelib.adapters.redis.keys import bucket_of, epoch_key
from chalicelib.adapters.redis.store import SessionStore
from chalicelib.config import Settings
from chalicelib.domain.errors import ServiceUnavailable
from chalicelib.domain.validation import CreateRequest, UpdateRequest
from chalicelib.service.sessions import SessionService
from tests.support.servers import ReplicatedRedis

#: the most 503s a planned failover may cost a client (the failover promise of
#: docs/guarantees.md)
PLANNED_BUDGET_SECONDS = 2.0


def _service(replicated_redis, database) -> SessionService:
    """A warm process: its own client through the endpoint, the default settle time."""
    store = SessionStore(connect_redis(Settings(redis_url=replicated_redis.proxy_url)))
    return SessionService(store, durable=database, settle_seconds=Settings.redis_settle)


def _sid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def _until_served(call, budget: float = 20.0):
    """(what ``call`` returned, the 503s it answered first, seconds they lasted)."""
    refusals, start = [], time.monotonic()
    while True:
        try:
            return call(), refusals, time.monotonic() - start
        except ServiceUnavailable as exc:
            refusals.append(exc)
            if time.monotonic() - start > budget:
                raise
            time.sleep(0.05)


def _replication(server) -> dict:
    with ReplicatedRedis.admin(server) as client:
        return client.info("replication")


@pytest.fixture
def warm(replicated_redis, database):
    service = _service(replicated_redis, database)
    yield service
    service.store.client.close()


@pytest.fixture
def newcomer(replicated_redis, database):
    """A process that connects when called (after a failover: it saw nothing end)."""
    made: list[SessionService] = []

    def connect() -> SessionService:
        made.append(_service(replicated_redis, database))
        return made[-1]
    yield connect
    for service in made:
        service.store.client.close()


def test_a_planned_failover_is_proven_to_have_lost_nothing_and_costs_no_settle_time(
        replicated_redis, warm, database):
    sid = _sid("planned")
    warm.create(CreateRequest(sid, '{"n":1}', None))
    warm.update(UpdateRequest(sid, '{"n":2}', 1))  # a pooled connection to the primary
    old = _replication(replicated_redis.primary)

    replicated_redis.failover()  # caught up, promoted, the name moved
    new = _replication(replicated_redis.primary)

    updated, refusals, seconds = _until_served(
        lambda: warm.update(UpdateRequest(sid, '{"n":3}', 2)))

    assert updated.version == 3
    assert refusals == [], f"{len(refusals)} 503s in {seconds:.2f}s: {refusals[0]}"
    # the demoted node said where its history ended, and the new primary holds it all
    assert warm.store.client.ended_histories() == [(old["master_replid"], new["second_repl_offset"] - 1)]
    assert new["master_replid2"] == old["master_replid"]
    assert warm.store.continuity_proven >= 1
    # the bucket's record says so, for every process: the old epoch continues here
    epoch, _, continued, _ = warm.store.client.get(epoch_key(sid)).decode().split("|")
    assert (epoch, continued) == (new["master_replid"][:8], old["master_replid"][:8])
    assert warm.get(sid).session.state == {"n": 3}


def test_a_process_that_did_not_see_the_failover_trusts_the_evidence_another_found(
        replicated_redis, warm, newcomer):
    first, second = _sid("seen"), _sid("other")
    while bucket_of(second) == bucket_of(first):  # another bucket: passed on, not shared
        second = _sid("other")
    for sid in (first, second):
        warm.create(CreateRequest(sid, '{"n":1}', None))

    replicated_redis.failover()
    warm.update(UpdateRequest(first, '{"n":2}', 1))  # finds the evidence, passes it on
    cold = newcomer()

    read, refusals, _ = _until_served(lambda: cold.get(second))
    assert (read.session.version, refusals) == (1, [])
    assert cold.store.client.ended_histories() == []
    assert cold.store.continuity_proven == 1  # the record's evidence, not its own
    updated, refusals, _ = _until_served(lambda: cold.update(UpdateRequest(second, '{"n":2}', 1)))
    assert (updated.version, refusals) == (2, [])


def test_a_process_that_meets_the_failover_before_the_evidence_is_told_to_come_back_soon(
        replicated_redis, warm, newcomer):
    sid = _sid("early")
    warm.create(CreateRequest(sid, '{"n":1}', None))
    replicated_redis.failover()
    cold = newcomer()

    with pytest.raises(ServiceUnavailable) as early:
        cold.get(sid)
    # not the whole settle time: the evidence may come any moment
    assert early.value.details["retry_after_seconds"] <= 1.0

    warm.update(UpdateRequest(sid, '{"n":2}', 1))  # meets the demoted node: proves it
    assert warm.store.continuity_proven >= 1
    assert cold.get(sid).session.version == 2


def test_a_failover_to_a_replica_that_lacked_writes_is_not_trusted_and_waits(
        replicated_redis, warm, database):
    sid = _sid("lagging")
    warm.create(CreateRequest(sid, '{"n":1}', None))
    replicated_redis.stop_replication()
    warm.update(UpdateRequest(sid, '{"n":2}', 1))  # acknowledged, never replicated
    lost_at = _replication(replicated_redis.primary)["master_repl_offset"]

    replicated_redis.failover()
    new = _replication(replicated_redis.primary)
    assert new["second_repl_offset"] - 1 < lost_at  # the new primary holds less

    assert_proved_nothing(warm, sid, lost_at)


def assert_proved_nothing(warm: SessionService, sid: str, lost_at: int) -> None:
    """After a failover to a node that lacks writes (acknowledged up to
    ``lost_at``): whatever the demoted node said (where its history ended,
    beyond what the new primary holds, or nothing after its full resync),
    it proved nothing: the bucket's clock runs, past the planned failover's
    budget, and no write is served meanwhile."""
    start = time.monotonic()
    with pytest.raises(ServiceUnavailable):
        warm.update(UpdateRequest(sid, '{"n":"forked"}', 1))
    assert warm.store.continuity_proven == 0
    assert all(offset >= lost_at for _, offset in warm.store.client.ended_histories())
    assert warm.store.client.get(epoch_key(sid)).decode().split("|")[2] == ""  # continues nothing
    time.sleep(max(0.0, PLANNED_BUDGET_SECONDS + 0.5 - (time.monotonic() - start)))
    with pytest.raises(ServiceUnavailable):
        warm.update(UpdateRequest(sid, '{"n":"forked"}', 1))
    assert warm.store.continuity_proven == 0


def test_evidence_the_new_primary_contradicts_is_refused(replicated_redis, warm, newcomer):
    """Seen ending one byte beyond what the promoted node holds: its last
    write may be lost, so the settle time holds."""
    sid = _sid("contradicted")
    warm.create(CreateRequest(sid, '{"n":1}', None))
    old = _replication(replicated_redis.primary)
    replicated_redis.failover()
    new = _replication(replicated_redis.primary)
    # a process that saw the old history end where it says (connected after the move)
    store = newcomer().store
    seen = store.client._ended
    epoch = old["master_replid"][:8]
    seen[old["master_replid"]] = (new["second_repl_offset"], time.monotonic())
    left, went_back = store.settle(sid, 10.0, value_epoch=epoch)
    # a wait (asked again soon: evidence may still come), and the record continues nothing
    assert (left > 0, went_back, store.continuity_proven) == (True, True, 0)
    assert store.client.get(epoch_key(sid)).decode().split("|")[2] == ""

    # the old history's own clock still ran (it had gone back in time
    # itself a second ago): it carries over, for values older than it
    seconds, micros = store.client.time()
    store.client.set(epoch_key(sid), f"{epoch}|{seconds * 1000 + micros // 1000 - 1000}||")
    seen[old["master_replid"]] = (new["second_repl_offset"] - 1, time.monotonic())
    assert store.settle(sid, 10.0, value_epoch=epoch) == (0.0, False)  # exactly enough
    assert store.continuity_proven == 1
    left, went_back = store.settle(sid, 10.0, value_epoch="deadbeef")
    assert (7 < left < 9.5, went_back) == (True, False)


def test_a_demoted_node_reports_where_its_history_ended(replicated_redis):
    client = connect_redis(Settings(redis_url=replicated_redis.proxy_url))
    try:
        client.set("k", "1")  # a pooled connection to the primary
        old = _replication(replicated_redis.primary)
        replicated_redis.failover()
        client.set("k", "2")  # READONLY on the demoted node, then the new primary

        [(replid, offset)] = client.ended_histories()
        assert replid == old["master_replid"]
        assert offset == _replication(replicated_redis.primary)["second_repl_offset"] - 1
    finally:
        client.close()
    with redis.Redis.from_url(replicated_redis.proxy_url) as fresh:
        assert fresh.get("k") == b"2"
