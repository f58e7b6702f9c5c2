"""``sessionsync migrate-markers`` (sessionsync.marker_migration): the
previous release's marker keys moved into the bucket hashes, in bounded
batches, on one node and on every primary of a cluster; only over an older
version; safe to run twice and beside live writes."""
from __future__ import annotations

import json
import re
import threading
import uuid

import pytest
import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot

from chalicelib.adapters.redis.keys import marker_key, session_keys
from chalicelib.adapters.redis.store import SessionStore
from chalicelib.config import Settings
from chalicelib.domain.errors import ConcurrencyError
from chalicelib.domain.store import Marker
from sessionsync import marker_migration
from tests.support.markers import legacy_marker_keys, marker_forms, to_previous_format
from tests.support.ops import cli_env, run_cli, run_cli_on_terminal
from tests.support.servers import RedisClusterServers, running


def _client(server) -> redis.Redis:
    return redis.Redis.from_url(server.url, socket_timeout=5)


def _dataset(store: SessionStore, prefix: str, n: int) -> dict[str, Marker]:
    """``n`` sessions as the previous release left them, in every state a
    marker can say (live, deleted, expired, evicted), and what their
    markers say."""
    expected = {}
    for i in range(n):
        sid = f"{prefix}-{i}"
        created = store.create(sid, '{"n":1}', 600).session
        if i % 4 == 1:
            store.update(sid, '{"n":2}', 1)
        elif i % 4 == 2:
            store.delete(sid, 1)
        elif i % 4 == 3:
            store.client.delete(session_keys(sid)[0])
            assert store.expire(sid, created)[0] == "expired"
        expected[sid] = store.marker(sid)
        to_previous_format(store.client, sid)
    return expected


def _check_moved(store: SessionStore, expected: dict[str, Marker]) -> None:
    for sid, marker in expected.items():
        assert store.client.exists(marker_key(sid)) == 0, sid
        assert store.marker(sid) == marker
        assert marker_forms(store.client, sid)[0] == f"{marker.version}|{marker.flag}".encode()


def test_a_migration_moves_every_marker_key_in_batches_and_a_second_run_finds_nothing(throwaway_redis):
    client = _client(throwaway_redis)
    store = SessionStore(client, channel="migrate")
    expected = _dataset(store, "m", 60)
    # the rollout's leftovers: a field ahead of its key (this release wrote
    # since), a key ahead of its field (the previous release wrote since),
    # and a key with a TTL (SESSION_MARKER_TTL's form: it stays)
    client.hset(session_keys("m-0")[1], "m-0", "5|L")
    expected["m-0"] = Marker(5, "L")
    client.hset(session_keys("m-1")[1], "m-1", "1|L")  # its key says 2|L
    SessionStore(client, marker_ttl=120, channel="migrate").create("with-ttl", "{}", 600)
    reports = []

    first = marker_migration.migrate(client, batch=7, report=lambda p: reports.append(p.to_dict()))

    assert (first.moved, first.already, first.kept, first.remaining) == (59, 1, 1, 0)
    assert first.scanned == 61 and first.batches >= 61 // 7
    assert len(reports) > 1 and reports[-1]["moved"] == 59  # progress after each page
    assert [r["moved"] + r["already"] for r in reports] == sorted(r["moved"] + r["already"] for r in reports)
    _check_moved(store, expected)
    assert marker_forms(client, "with-ttl") == (None, b"1|L") and client.ttl(marker_key("with-ttl")) > 0
    assert legacy_marker_keys(client) == [marker_key("with-ttl").encode()]

    second = marker_migration.migrate(client, batch=7)
    assert (second.moved, second.already, second.kept, second.remaining) == (0, 0, 1, 0)
    _check_moved(store, expected)


def test_a_migration_reaches_every_primary_of_a_cluster(redis_cluster):
    store = SessionStore(redis_cluster, channel="migrate")
    prefix = f"mc-{uuid.uuid4().hex[:8]}"
    expected = _dataset(store, prefix, 60)
    nodes = {redis_cluster.get_node_from_key(marker_key(sid)).name for sid in expected}
    assert len(nodes) == len(redis_cluster.get_primaries()) > 1

    result = marker_migration.migrate(redis_cluster, batch=5)

    assert result.moved >= 60 and result.remaining == 0  # other tests' keys may be moved too
    assert sorted(result.nodes) == sorted(n.name for n in redis_cluster.get_primaries())
    _check_moved(store, expected)
    assert not [k for k in legacy_marker_keys(redis_cluster) if k.decode().endswith(tuple(expected))]


def test_a_migration_beside_live_writes_never_moves_a_marker_back(throwaway_redis):
    """Writers update the sessions while the migration runs, a few keys a
    script: at the end each marker names its session's last acknowledged
    write, in the hash, and no key is left."""
    client = _client(throwaway_redis)
    store = SessionStore(client, channel="migrate")
    sids = [f"live-{i}" for i in range(40)]
    for sid in sids:
        store.create(sid, '{"n":1}', 600)
        to_previous_format(client, sid)
    acked = dict.fromkeys(sids, 1)
    stop = threading.Event()
    failures: list[BaseException] = []

    def write(mine: list[str]) -> None:
        own = SessionStore(_client(throwaway_redis), channel="migrate")
        try:
            for _ in range(200):  # bounded
                if stop.is_set():
                    return
                for sid in mine:
                    try:
                        acked[sid] = own.update(sid, '{"n":0}', acked[sid]).session.version
                    except ConcurrencyError:
                        pass
        except BaseException as exc:  # reported below
            failures.append(exc)

    writers = [threading.Thread(target=write, args=(sids[i::2],)) for i in range(2)]
    for t in writers:
        t.start()
    try:
        runs = [marker_migration.migrate(client, batch=3) for _ in range(3)]
    finally:
        stop.set()
        for t in writers:
            t.join(timeout=60)
    assert not failures and not any(t.is_alive() for t in writers)

    assert runs[-1].remaining == 0 and sum(r.moved + r.already + r.gone for r in runs) <= 40
    for sid in sids:
        assert store.marker(sid) == Marker(acked[sid], "L")
        assert marker_forms(client, sid) == (f"{acked[sid]}|L".encode(), None)


def test_sessionsync_migrate_markers_reports_what_it_moved_and_what_is_left(throwaway_redis):
    client = _client(throwaway_redis)
    store = SessionStore(client, channel="migrate")
    expected = _dataset(store, "cli", 12)
    env = cli_env(Settings(redis_url=throwaway_redis.url))

    dry = run_cli("migrate-markers", "--dry-run", "--format", "json", env=env)
    assert (dry.returncode, json.loads(dry.stdout)) == (1, {"dry_run": True, "remaining": 12}), dry
    shown = run_cli_on_terminal("migrate-markers", "--batch", "5", env=env)
    assert shown.returncode == 0, shown
    assert shown.stdout.strip() == "moved 12, already 0, gone 0, kept (with a TTL) 0, remaining 0"
    assert re.search(r"moved \d+, already \d+, scanned \d+ \.\.\.", shown.stderr)  # progress
    again = run_cli("migrate-markers", "--format", "json", env=env)
    assert again.returncode == 0 and json.loads(again.stdout)["moved"] == 0
    _check_moved(store, expected)


def test_sessionsync_migrate_markers_says_so_when_redis_is_unreachable():
    env = cli_env(Settings(redis_url="redis://127.0.0.1:1/0", redis_timeout=0.5))
    result = run_cli("migrate-markers", env=env)
    assert result.returncode == 1 and "migrate-markers failed" in result.stderr, result
    assert result.stdout == ""



@pytest.fixture(scope="module")
def resharded_cluster(tmp_path_factory):
    """A cluster of this module's own, whose slots the test migrates."""
    with running(RedisClusterServers(tmp_path_factory.mktemp("migrate-reshard"))) as servers:
        yield servers


def test_a_migration_during_a_resharding_skips_what_moves_and_says_to_run_again(resharded_cluster):
    cluster = RedisCluster.from_url(resharded_cluster.url, socket_timeout=5)
    store = SessionStore(cluster, channel="migrate")
    sid = f"reshard-{uuid.uuid4().hex[:8]}"
    store.create(sid, '{"n":1}', 600)
    store.update(sid, '{"n":2}', 1)
    to_previous_format(cluster, sid)
    slot = key_slot(marker_key(sid).encode())
    source = cluster.get_redis_connection(cluster.get_node_from_key(marker_key(sid)))
    target_node = next(n for n in cluster.get_primaries()
                       if n.name != cluster.get_node_from_key(marker_key(sid)).name)
    target = cluster.get_redis_connection(target_node)
    source_id, target_id = (n.execute_command("CLUSTER", "MYID") for n in (source, target))
    # a resharding half way: the slot migrating, the marker key moved, its hash not yet
    target.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
    source.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
    try:
        source.execute_command("MIGRATE", target_node.host, target_node.port, marker_key(sid), 0, 5000)
        result = marker_migration.migrate(cluster, batch=10)
        # nothing lost, nothing moved over: the key is what is left, for a run after the resharding
        assert result.remaining == 1
        probe = redis.Redis(host=target_node.host, port=target_node.port, socket_timeout=5,
                            single_connection_client=True)
        probe.execute_command("ASKING")  # the slot is importing there
        assert probe.get(marker_key(sid)) == b"2|L"
        probe.close()
    finally:
        for node in (source, target):
            node.execute_command("CLUSTER", "SETSLOT", slot, "STABLE")
        cluster.close()
