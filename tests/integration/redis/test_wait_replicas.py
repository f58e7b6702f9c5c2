"""REDIS_WAIT_REPLICAS: a write is acknowledged once a replica has it.

A real primary and replica behind a proxy standing in for the endpoint's
name (tests/support/servers.ReplicatedRedis).  With the mode on, what a
client was told is written is on the replica when it is told, so a failover
to that replica, planned or not, loses none of it; a write the replica does
not confirm in time is a 503 of unknown outcome, committed on the primary
with its outbox entry (the relay ships it).
"""
from __future__ import annotations

import pytest

from chalicelib.adapters.redis.client import connect_redis
from chalicelib.adapters.redis.keys import bucket_of, outbox_keys, session_keys
from chalicelib.adapters.redis.store import SessionStore
from chalicelib.config import REDIS_WAIT_REPLICAS, Settings, load_settings
from chalicelib.domain.errors import ConfigurationError, ServiceUnavailable
from chalicelib.domain.idempotency import Idempotency
from tests.support.servers import ReplicatedRedis

#: a healthy replica confirms within this even on a loaded machine; a write
#: that must time out (no replica) is given less
PATIENT_MS = 5000


@pytest.fixture
def waiting_store(replicated_redis):
    store = SessionStore(connect_redis(Settings(redis_url=replicated_redis.proxy_url)),
                         wait_replicas=1, wait_timeout_ms=PATIENT_MS)
    yield store
    store.client.close()


def _version_on(server, session_id: str) -> int | None:
    with ReplicatedRedis.admin(server) as node:
        raw = node.get(session_keys(session_id)[0])
    return None if raw is None else int(raw.split(b"|", 1)[0])


def test_an_acknowledged_write_is_on_the_replica_when_it_is_acknowledged(
        replicated_redis, waiting_store, session_id):
    # the replica's link is slowed by nothing here: what matters is that the
    # store asked (WAIT) before answering, so the replica's copy is checked
    # at once, with no wait of the test's own
    waiting_store.create(session_id, '{"n":1}', 60)
    for version in range(1, 6):
        waiting_store.update(session_id, f'{{"n":{version + 1}}}', version)
        assert _version_on(replicated_redis.replica, session_id) == version + 1

    with ReplicatedRedis.admin(replicated_redis.primary) as primary:
        assert primary.info("commandstats")["cmdstat_wait"]["calls"] == 6


def test_a_write_no_replica_confirms_is_a_503_of_unknown_outcome_committed_on_the_primary(
        replicated_redis, waiting_store, session_id):
    waiting_store.create(session_id, '{"n":1}', 60)
    replicated_redis.stop_replication()  # the primary has no replica from now on
    key = Idempotency("retry-1", "f" * 64)
    waiting_store.wait_timeout_ms = 100

    with pytest.raises(ServiceUnavailable) as unconfirmed:
        waiting_store.update(session_id, '{"n":2}', 1, idempotency=key)

    assert unconfirmed.value.dependency == "redis"
    assert unconfirmed.value.details["retry_after_seconds"] == 1
    assert "unknown" in str(unconfirmed.value)
    # committed on the primary, with its outbox entry: the relay ships it
    assert _version_on(replicated_redis.primary, session_id) == 2
    with ReplicatedRedis.admin(replicated_redis.primary) as primary:
        assert primary.hexists(outbox_keys(bucket_of(session_id))[1], f"{session_id}:2")
    # the retry with its key is the write's own outcome (a replay writes nothing to wait for)
    assert waiting_store.update(session_id, '{"n":2}', 1, idempotency=key).replayed
    # a refusal writes nothing and waits for nothing
    with pytest.raises(Exception) as refused:
        waiting_store.update(session_id, '{"n":3}', 1)
    assert type(refused.value).__name__ == "ConcurrencyError"


def test_an_unplanned_failover_after_acknowledged_writes_loses_none_of_them(
        replicated_redis, waiting_store, session_id):
    waiting_store.create(session_id, '{"n":1}', 60)
    for version in range(1, 4):
        waiting_store.update(session_id, f'{{"n":{version + 1}}}', version)

    # the primary's writes since the last acknowledged one are lost: none
    replicated_redis.failover(lose_unreplicated=True)

    assert _version_on(replicated_redis.primary, session_id) == 4


def test_the_mode_is_refused_on_a_cluster_endpoint():
    with pytest.raises(ConfigurationError) as refused:
        load_settings({"REDIS_URL": "redis://127.0.0.1:7000", "REDIS_CLUSTER": "true",
                       REDIS_WAIT_REPLICAS: "1"})
    assert refused.value.setting == REDIS_WAIT_REPLICAS
