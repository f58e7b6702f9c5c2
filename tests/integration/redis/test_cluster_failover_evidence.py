"""The failover promise on a Redis Cluster (REDIS_CLUSTER=true).

A real cluster of three shards of a master and a replica
(tests/support/servers.ReplicatedRedisCluster), the service with PostgreSQL
behind it and the DEFAULT settle time.  A planned failover is CLUSTER
FAILOVER (the master pauses its clients until its replica has every write,
then hands over); a lagging one is CLUSTER FAILOVER TAKEOVER by a replica
cut off before the last write.  On a cluster a demoted master answers
MOVED (the slot's new master), not READONLY: a warm client reloads its
slot map, and the masters it knew that are replicas now are the demoted
nodes it asks where their history ended (client.py); the promoted node's
master_replid2 / second_repl_offset say whether it holds all of it
(SETTLE_SCRIPT).
"""
from __future__ import annotations

import uuid

import pytest

from chalicelib.adapters.redis.client import connect_redis
from chalicelib.adapters.redis.keys import bucket_of, epoch_key, session_keys
from chalicelib.adapters.redis.store import SessionStore
from chalicelib.config import Settings
from chalicelib.domain.errors import ServiceUnavailable
from chalicelib.domain.validation import CreateRequest, UpdateRequest
from chalicelib.service.sessions import SessionService
from tests.integration.redis.test_failover_evidence import (
    PLANNED_BUDGET_SECONDS,
    _until_served,
    assert_proved_nothing,
)
from tests.support.servers import ReplicatedRedisCluster, running

pytestmark = pytest.mark.cluster


@pytest.fixture
def cluster(tmp_path):
    with running(ReplicatedRedisCluster(tmp_path / "cluster")) as servers:
        yield servers


@pytest.fixture
def warm(cluster, database):
    """A warm process: its own cluster client, the default settle time."""
    store = SessionStore(connect_redis(Settings(redis_url=cluster.url, redis_cluster=True)))
    service = SessionService(store, durable=database, settle_seconds=Settings.redis_settle)
    yield service
    store.client.close()


def _replication(cluster: ReplicatedRedisCluster, node) -> dict:
    with cluster.admin(node) as client:
        return client.info("replication")


def _sid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.mark.parametrize("reload_every", [0, 1], ids=["slot-moved", "map-reloaded"])
def test_a_planned_cluster_failover_is_proven_to_have_lost_nothing_and_costs_no_settle_time(
        cluster, warm, reload_every):
    """After MOVED redis-py moves the slot in its map, or, every
    ``reinitialize_steps`` MOVED, reloads the whole map: either way the
    demoted master is asked."""
    warm.store.client.reinitialize_steps = reload_every
    sid = _sid("planned")
    warm.create(CreateRequest(sid, '{"n":1}', None))
    warm.update(UpdateRequest(sid, '{"n":2}', 1))  # the client's map names the master
    master = cluster.master_of(session_keys(sid)[0])
    old = _replication(cluster, master)

    promoted = cluster.failover(master)  # caught up, promoted, every node agrees
    new = _replication(cluster, promoted)

    updated, refusals, seconds = _until_served(
        lambda: warm.update(UpdateRequest(sid, '{"n":3}', 2)))

    assert updated.version == 3
    assert refusals == [], f"{len(refusals)} 503s in {seconds:.2f}s: {refusals[0]}"
    assert seconds < PLANNED_BUDGET_SECONDS
    # the demoted node said where its history ended, and the new master holds it all
    assert (old["master_replid"], new["second_repl_offset"] - 1) in warm.store.client.ended_histories()
    assert new["master_replid2"] == old["master_replid"]
    assert warm.store.continuity_proven >= 1
    epoch, _, continued, _ = warm.store.client.get(epoch_key(sid)).decode().split("|")
    assert (epoch, continued) == (new["master_replid"][:8], old["master_replid"][:8])
    assert warm.get(sid).session.state == {"n": 3}


def test_a_process_that_did_not_see_the_cluster_failover_trusts_the_evidence_another_found(
        cluster, warm, database):
    """The evidence is passed on to every bucket's record (one pipeline over
    every master): a process connected after the failover trusts it."""
    first = _sid("seen")
    master = cluster.master_of(session_keys(first)[0])
    second = _sid("other")
    while bucket_of(second) == bucket_of(first) or cluster.master_of(session_keys(second)[0]) is not master:
        second = _sid("other")  # another bucket of the same shard: passed on, not shared
    for sid in (first, second):
        warm.create(CreateRequest(sid, '{"n":1}', None))

    cluster.failover(master)
    warm.update(UpdateRequest(first, '{"n":2}', 1))  # finds the evidence, passes it on
    cold_store = SessionStore(connect_redis(Settings(redis_url=cluster.url, redis_cluster=True)))
    cold = SessionService(cold_store, durable=database, settle_seconds=Settings.redis_settle)
    try:
        read, refusals, _ = _until_served(lambda: cold.get(second))
        assert (read.session.version, refusals) == (1, [])
        assert cold_store.client.ended_histories() == []
        assert cold_store.continuity_proven == 1  # the record's evidence, not its own
    finally:
        cold_store.client.close()


def test_a_process_that_meets_the_cluster_failover_before_the_evidence_is_told_to_come_back_soon(
        cluster, warm, database):
    sid = _sid("early")
    warm.create(CreateRequest(sid, '{"n":1}', None))
    master = cluster.master_of(session_keys(sid)[0])
    cluster.failover(master)
    cold_store = SessionStore(connect_redis(Settings(redis_url=cluster.url, redis_cluster=True)))
    cold = SessionService(cold_store, durable=database, settle_seconds=Settings.redis_settle)
    try:
        with pytest.raises(ServiceUnavailable) as early:
            cold.get(sid)  # its map never named the demoted master: no evidence
        # not the whole settle time: the evidence may come any moment
        assert early.value.details["retry_after_seconds"] <= 1.0

        warm.update(UpdateRequest(sid, '{"n":2}', 1))  # meets the demoted master: proves it
        assert warm.store.continuity_proven >= 1
        assert cold.get(sid).session.version == 2
    finally:
        cold_store.client.close()


def test_a_takeover_by_a_replica_that_lacked_writes_is_not_trusted_and_waits(cluster, warm):
    sid = _sid("lagging")
    warm.create(CreateRequest(sid, '{"n":1}', None))
    master = cluster.master_of(session_keys(sid)[0])
    cluster.stop_replication(master)
    warm.update(UpdateRequest(sid, '{"n":2}', 1))  # acknowledged, never replicated
    lost_at = _replication(cluster, master)["master_repl_offset"]

    promoted = cluster.failover(master, takeover=True)
    assert _replication(cluster, promoted)["second_repl_offset"] - 1 < lost_at  # it holds less

    assert_proved_nothing(warm, sid, lost_at)
