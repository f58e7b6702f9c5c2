"""Redis failovers as production sees them, with real servers.

Non-cluster endpoint: a primary + replica pair behind a proxy standing in for
the endpoint's DNS name (tests/support/servers.ReplicatedRedis).  A failover promotes
the replica and demotes the primary; the name moves, but a warm process keeps
its pooled connection to the demoted node, which answers READONLY.

Cluster: a 3-master cluster of this module's own, whose slots the tests
unassign (CLUSTERDOWN) or put in migration (TRYAGAIN).

Replies that mean the command did not run are retried a bounded number of
times; a connection error or timeout, after which a script may have run, is
never re-sent (see also test_failure_modes.py).
"""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis
from redis.crc import key_slot

from chalicelib.adapters.redis.client import CLUSTER_RETRIES, NOT_RUN_RETRIES, connect_redis
from chalicelib.adapters.redis.keys import session_keys
from chalicelib.adapters.redis.store import SessionStore
from chalicelib.config import Settings
from chalicelib.domain.errors import ServiceUnavailable
from tests.support.markers import marker_forms
from tests.support.servers import RedisClusterServers, RedisServer, ReplicatedRedis, running, wait_for

BUDGET_SECONDS = 1.5  # the one-second budget of a 503, with a margin for a busy machine


def error_count(client: redis.Redis, code: str) -> int:
    """Replies with error ``code`` this server has sent since it started."""
    return client.info("errorstats").get(f"errorstat_{code}", {}).get("count", 0)


def connections_received(client: redis.Redis) -> int:
    return client.info("stats")["total_connections_received"]


def timed_failure(action) -> tuple[Exception, float]:
    start = time.monotonic()
    with pytest.raises(ServiceUnavailable) as caught:
        action()
    return caught.value, time.monotonic() - start


# --- non-cluster endpoint: primary + replica behind a moving name -------------

@pytest.fixture
def pair_store(replicated_redis) -> SessionStore:
    client = connect_redis(Settings(redis_url=replicated_redis.proxy_url))
    yield SessionStore(client)
    client.close()


def test_a_warm_store_writes_at_once_on_the_new_primary_after_a_failover(
        replicated_redis, pair_store, session_id):
    pair_store.create(session_id, '{"n":0}', 60)
    pair_store.update(session_id, '{"n":1}', 1)  # a warm pooled connection to the primary
    demoted = ReplicatedRedis.admin(replicated_redis.primary)
    refused_before = error_count(demoted, "READONLY")

    replicated_redis.failover()

    version, outcomes = 2, []
    deadline = time.monotonic() + 5
    while version < 7 and time.monotonic() < deadline:
        try:
            version = pair_store.update(session_id, f'{{"n":{version}}}', version).session.version
            outcomes.append("ok")
        except ServiceUnavailable as exc:  # a wedged client stays here
            outcomes.append(str(exc))
            time.sleep(0.1)
    # the endpoint had already moved: no write needed to fail
    assert outcomes == ["ok"] * 5
    # the first one did meet the demoted node, and moved on
    assert error_count(demoted, "READONLY") - refused_before == 1
    promoted = SessionStore(ReplicatedRedis.admin(replicated_redis.primary))
    assert promoted.get(session_id).version == 7
    assert pair_store.get(session_id).state == {"n": 6}


def test_a_demoted_node_is_a_503_within_the_budget_and_writes_heal_once_the_name_moves(
        replicated_redis, pair_store, session_id):
    pair_store.create(session_id, '{"n":0}', 60)
    demoted = ReplicatedRedis.admin(replicated_redis.primary)
    replicated_redis.failover(move_endpoint=False)  # the name still points at the old node
    refused_before = error_count(demoted, "READONLY")
    connections_before = connections_received(demoted)

    error, seconds = timed_failure(lambda: pair_store.update(session_id, '{"n":1}', 1))

    assert error.dependency == "redis"
    assert seconds < BUDGET_SECONDS, f"took {seconds:.2f}s"
    # refused, then sent again NOT_RUN_RETRIES times, each on a new connection
    assert error_count(demoted, "READONLY") - refused_before == 1 + NOT_RUN_RETRIES
    assert connections_received(demoted) - connections_before == NOT_RUN_RETRIES
    promoted = SessionStore(ReplicatedRedis.admin(replicated_redis.primary))
    assert promoted.get(session_id).version == 1  # READONLY: it did not run

    replicated_redis.move_endpoint()
    attempts = 0
    deadline = time.monotonic() + 5
    while True:
        attempts += 1
        try:
            pair_store.update(session_id, '{"n":1}', 1)
            break
        except ServiceUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    assert attempts == 1  # the next write after the move reached the new primary
    assert promoted.get(session_id).version == 2


def test_a_failover_after_replication_stopped_loses_the_writes_made_since(replicated_redis):
    client = redis.Redis.from_url(replicated_redis.proxy_url, socket_timeout=5)
    try:
        client.set("h:kept", "1")
        replicated_redis.stop_replication()
        client.set("h:lost", "1")
        replicated_redis.failover()

        fresh = redis.Redis.from_url(replicated_redis.proxy_url, socket_timeout=5)
        assert fresh.get("h:kept") == b"1"
        assert fresh.get("h:lost") is None  # acknowledged, then lost
        assert fresh.info("replication")["role"] == "master"
        fresh.close()
        demoted = ReplicatedRedis.admin(replicated_redis.replica)
        assert demoted.get("h:lost") is None  # resynchronised from the new primary
        with pytest.raises(redis.exceptions.ReadOnlyError):
            demoted.set("h:other", "1")
    finally:
        client.close()


# --- cluster: CLUSTERDOWN and TRYAGAIN ----------------------------------------

@pytest.fixture(scope="module")
def own_cluster(tmp_path_factory) -> RedisClusterServers:
    """A cluster whose slots these tests may unassign or migrate."""
    with running(RedisClusterServers(tmp_path_factory.mktemp("failover-cluster"))) as servers:
        yield servers


@pytest.fixture
def cluster_store(own_cluster) -> SessionStore:
    client = connect_redis(Settings(redis_url=own_cluster.url, redis_cluster=True,
                                    redis_timeout=0.3))
    yield SessionStore(client)
    client.close()


def cluster_ok(servers: RedisClusterServers) -> bool:
    return all(b"cluster_state:ok" in redis.Redis(port=n.port).execute_command("CLUSTER", "INFO")
               for n in servers.nodes)


def node_of(servers: RedisClusterServers, session_id: str) -> tuple[RedisServer, int, list[RedisServer]]:
    """(node serving the session's slot, the slot, the other nodes)."""
    slot = key_slot(session_keys(session_id)[0].encode())
    any_node = redis.Redis(port=servers.nodes[0].port)
    for first, last, (_, port, *_), *_ in any_node.execute_command("CLUSTER", "SLOTS"):
        if first <= slot <= last:
            owner = next(n for n in servers.nodes if n.port == port)
            return owner, slot, [n for n in servers.nodes if n is not owner]
    raise AssertionError(f"slot {slot} is not served")


@pytest.fixture
def unserved_slot(own_cluster, cluster_store, session_id):
    """The session exists at version 1; its node then stops serving its slot
    (CLUSTER DELSLOTS): that node's cluster state is fail, and it answers
    CLUSTERDOWN.  Yields (node admin client, slot); the slot is served again after."""
    cluster_store.create(session_id, '{"n":0}', 60)
    owner, slot, _ = node_of(own_cluster, session_id)
    admin = redis.Redis(port=owner.port, socket_timeout=5)
    admin.execute_command("CLUSTER", "DELSLOTS", slot)
    wait_for(lambda: b"cluster_state:fail" in admin.execute_command("CLUSTER", "INFO"), 5,
             "CLUSTERDOWN")
    yield admin, slot
    if slot not in {s for first, last, *_ in admin.execute_command("CLUSTER", "SLOTS")
                    for s in range(first, last + 1)}:
        admin.execute_command("CLUSTER", "ADDSLOTS", slot)
    wait_for(lambda: cluster_ok(own_cluster), 20, "cluster healed")
    admin.close()


@pytest.mark.cluster
def test_a_cluster_write_refused_with_clusterdown_is_retried_and_lands_when_the_slot_is_back(
        unserved_slot, cluster_store, session_id):
    admin, slot = unserved_slot
    refused_before = error_count(admin, "CLUSTERDOWN")

    def serve_again_after_the_first_refusal() -> None:
        wait_for(lambda: error_count(admin, "CLUSTERDOWN") > refused_before, 5, "a refusal")
        admin.execute_command("CLUSTER", "ADDSLOTS", slot)

    healer = threading.Thread(target=serve_again_after_the_first_refusal, daemon=True)
    healer.start()
    try:
        result = cluster_store.update(session_id, '{"n":1}', 1)
    finally:
        healer.join(10)
    assert result.session.version == 2
    assert error_count(admin, "CLUSTERDOWN") - refused_before == 1  # refused once, then landed
    assert cluster_store.get(session_id).state == {"n": 1}


@pytest.mark.cluster
def test_a_cluster_that_stays_down_is_a_503_within_the_budget_after_a_bounded_retry(
        unserved_slot, cluster_store, own_cluster, session_id):
    admin, slot = unserved_slot
    refused_before = error_count(admin, "CLUSTERDOWN")

    error, seconds = timed_failure(lambda: cluster_store.update(session_id, '{"n":1}', 1))

    assert error.dependency == "redis"
    assert seconds < BUDGET_SECONDS, f"took {seconds:.2f}s"
    # at most CLUSTER_RETRIES more attempts (one fails in the client when the
    # reloaded slot map came from the node that dropped the slot)
    assert 1 <= error_count(admin, "CLUSTERDOWN") - refused_before <= 1 + CLUSTER_RETRIES

    admin.execute_command("CLUSTER", "ADDSLOTS", slot)
    wait_for(lambda: cluster_ok(own_cluster), 20, "cluster healed")
    # the refused write did not run: version 1 is still the one to update
    assert cluster_store.update(session_id, '{"n":1}', 1).session.version == 2


@contextmanager
def _slot_migrating(own_cluster, session_id: str) -> Iterator[tuple[redis.Redis, redis.Redis, int]]:
    """The session's slot MIGRATING from its node (source) to another
    (target), no key moved yet; STABLE again after.  Yields both nodes and
    the source's TRYAGAIN refusals so far."""
    owner, slot, others = node_of(own_cluster, session_id)
    source = redis.Redis(port=owner.port, socket_timeout=5)
    target = redis.Redis(port=others[0].port, socket_timeout=5)
    refused_before = error_count(source, "TRYAGAIN")
    target.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING",
                           source.execute_command("CLUSTER", "MYID"))
    source.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING",
                           target.execute_command("CLUSTER", "MYID"))
    try:
        yield source, target, refused_before
    finally:
        for node in (source, target):
            node.execute_command("CLUSTER", "SETSLOT", slot, "STABLE")


@pytest.mark.cluster
def test_a_cluster_write_that_keeps_getting_tryagain_during_a_migration_is_a_503_not_a_500(
        own_cluster, cluster_store, session_id):
    created = cluster_store.create(session_id, '{"n":0}', 60)
    cluster_store.outbox_ack([created.event_id])  # the slot now holds 2 of the script's 4 keys
    # slot migrating from source to target, keys not moved yet: a script over
    # keys of which some exist is refused with TRYAGAIN until it ends
    with _slot_migrating(own_cluster, session_id) as (source, target, refused_before):
        error, seconds = timed_failure(lambda: cluster_store.update(session_id, '{"n":1}', 1))
    assert error.dependency == "redis"
    assert seconds < BUDGET_SECONDS, f"took {seconds:.2f}s"
    assert error_count(source, "TRYAGAIN") - refused_before > 1  # retried, and bounded
    assert cluster_store.update(session_id, '{"n":1}', 1).session.version == 2  # did not run
    source.close()
    target.close()


@pytest.mark.cluster
def test_a_cluster_script_that_timed_out_is_not_sent_again(
        own_cluster, cluster_store, session_id):
    cluster_store.create(session_id, '{"n":0}', 60)
    cluster_store.update(session_id, '{"n":1}', 1)  # the node has the script now
    owner, _, _ = node_of(own_cluster, session_id)
    admin = redis.Redis(port=owner.port, socket_timeout=5)
    calls_before = admin.info("commandstats")["cmdstat_evalsha"]["calls"]

    owner.pause()  # shorter than the cluster's node timeout: no failover
    try:
        timed_failure(lambda: cluster_store.update(session_id, '{"n":2}', 2))
    finally:
        owner.resume()

    # the script reached the node and ran once it resumed: sent once, not twice
    wait_for(lambda: SessionStore(admin).get(session_id).version == 3, 5, "the update ran")
    calls = admin.info("commandstats")["cmdstat_evalsha"]["calls"]
    assert calls - calls_before == 1
    admin.close()
    wait_for(lambda: cluster_ok(own_cluster), 20, "cluster ok")


@pytest.mark.cluster
@pytest.mark.parametrize("write", ["update", "delete", "touch"])
def test_a_write_during_a_slot_migration_commits_whole_or_not_at_all(
        own_cluster, cluster_store, session_id, write):
    # the create's event is still in the outbox: the slot holds all 4 of the
    # write's declared keys, so the script runs on the migrating node (no
    # TRYAGAIN before it); the marker's key form (not declared) is on no node
    cluster_store.create(session_id, '{"n":0}', 60)
    calls = {"update": lambda: cluster_store.update(session_id, '{"n":1}', 1),
             "delete": lambda: cluster_store.delete(session_id, 1),
             "touch": lambda: cluster_store.touch(session_id, 1)}
    with _slot_migrating(own_cluster, session_id) as (source, target, refused_before):
        error, seconds = timed_failure(calls[write])
    # refused as a declared key is (TRYAGAIN, retried, bounded: a 503), and
    # nothing written: no version 2 without its event
    assert error.dependency == "redis"
    assert seconds < BUDGET_SECONDS, f"took {seconds:.2f}s"
    assert error_count(source, "TRYAGAIN") - refused_before > 1
    assert cluster_store.get(session_id).version == 1
    assert marker_forms(source, session_id) == (b"1|L", None)
    assert source.hkeys(session_keys(session_id)[3]) == [f"{session_id}:1".encode()]
    source.close()
    target.close()
