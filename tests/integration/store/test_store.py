"""The session store against real Redis.

Every test here runs twice through the ``store`` fixture: on the single node
(127.0.0.1:6379, db 1) and on the local 3-master Redis Cluster that the test
session starts.  Nothing is faked: the guarantees are the Lua scripts'.
"""
from __future__ import annotations

import json
import multiprocessing
import random
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from redis.cluster import RedisCluster
from redis.crc import key_slot

from chalicelib.adapters.redis.client import connect_redis
from chalicelib.adapters.redis.keys import bucket_of, marker_key, outbox_keys, session_keys
from chalicelib.adapters.redis.store import SessionStore
from chalicelib.config import Settings
from chalicelib.domain.errors import ConcurrencyError, SessionExists, SessionNotFound
from chalicelib.domain.events import CREATED, DELETED, EXPIRED, UPDATED
from chalicelib.domain.store import KeyMissing
from chalicelib.service.sessions import SessionService
from sessionsync.redis_views import subscribe
from tests.support.constants import TEST_CHANNEL
from tests.support.markers import marker_forms
from tests.support.pipeline import wait_until


def settings_for(client) -> Settings:
    """Settings that reach the same Redis as ``client`` (for child processes)."""
    if isinstance(client, RedisCluster):
        node = client.get_default_node()
        return Settings(redis_url=f"redis://{node.host}:{node.port}", redis_cluster=True,
                        redis_timeout=5.0)
    kwargs = client.connection_pool.connection_kwargs
    return Settings(redis_url=f"redis://{kwargs['host']}:{kwargs['port']}/{kwargs['db']}",
                    redis_timeout=5.0)


# -- compare-and-set ---------------------------------------------------------

def test_of_32_threads_updating_the_same_version_exactly_one_wins(store, session_id):
    store.create(session_id, '{"writer":null}', 600)
    start = threading.Barrier(32)

    def attempt(writer: int):
        start.wait(timeout=60)
        try:
            store.update(session_id, json.dumps({"writer": writer}), 1)
        except ConcurrencyError as exc:
            return exc
        return writer

    with ThreadPoolExecutor(max_workers=32) as pool:
        outcomes = list(pool.map(attempt, range(32), timeout=120))

    winners = [o for o in outcomes if isinstance(o, int)]
    losers = [o for o in outcomes if isinstance(o, ConcurrencyError)]
    assert len(winners) == 1 and len(losers) == 31
    assert {(e.expected_version, e.actual_version) for e in losers} == {(1, 2)}
    session = store.get(session_id)
    assert session.version == 2
    assert session.state == {"writer": winners[0]}


def _update_in_child(settings: Settings, channel: str, session_id: str, writer: int,
                     start, results) -> None:
    """One process of the 8: its own client, built from a URL like a Lambda's."""
    try:
        store = SessionStore(connect_redis(settings), channel=channel)
        store.ping()  # connected before the race starts
        start.wait(timeout=120)  # eight interpreters starting on a busy machine
        try:
            store.update(session_id, json.dumps({"writer": writer}), 1)
            results.put((writer, "won", None))
        except ConcurrencyError as exc:
            results.put((writer, "lost", (exc.expected_version, exc.actual_version)))
    except BaseException as exc:  # report instead of dying silently
        results.put((writer, "error", repr(exc)))


def test_of_8_processes_updating_the_same_version_exactly_one_wins(store, any_redis, session_id):
    store.create(session_id, '{"writer":null}', 600)
    ctx = multiprocessing.get_context("spawn")  # no fork of a threaded test process
    start, results = ctx.Barrier(8), ctx.Queue()
    procs = [ctx.Process(target=_update_in_child,
                         args=(settings_for(any_redis), store.channel, session_id, i, start, results))
             for i in range(8)]
    for proc in procs:
        proc.start()
    try:
        outcomes = [results.get(timeout=180) for _ in procs]
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()

    assert [o for o in outcomes if o[1] == "error"] == []
    winners = [writer for writer, status, _ in outcomes if status == "won"]
    assert len(winners) == 1
    assert sorted(versions for _, status, versions in outcomes if status == "lost") == [(1, 2)] * 7
    assert store.get(session_id).state == {"writer": winners[0]}


def test_16_workers_doing_200_read_modify_write_increments_lose_no_update(store, session_id):
    workers, increments = 16, 200
    store.create(session_id, '{"counter":0}', 3600)
    start = threading.Barrier(workers)

    def worker() -> int:
        conflicts = 0
        start.wait(timeout=60)
        for _ in range(increments):
            for _attempt in range(10_000):  # bounded: a livelock fails the test
                session = store.get(session_id)
                state = json.dumps({"counter": session.state["counter"] + 1})
                try:
                    store.update(session_id, state, session.version)
                    break
                except ConcurrencyError:
                    conflicts += 1
                    time.sleep(random.random() / 2000)  # jitter, as a real client would
            else:
                raise AssertionError("no increment succeeded in 10,000 attempts")
        return conflicts

    with ThreadPoolExecutor(max_workers=workers) as pool:
        conflicts = sum(f.result(timeout=240) for f in [pool.submit(worker) for _ in range(workers)])

    session = store.get(session_id)
    assert session.state["counter"] == workers * increments == 3200
    assert session.version - 1 == 3200
    assert conflicts > 0, "the workers never raced; the test proved nothing"


def test_an_update_with_a_stale_version_changes_nothing(store, any_redis, session_id):
    store.create(session_id, '{"a":1}', 60)
    store.update(session_id, '{"a":2}', 1)
    before = any_redis.get(session_keys(session_id)[0])
    with pytest.raises(ConcurrencyError) as caught:
        store.update(session_id, '{"a":3}', 1)
    assert (caught.value.expected_version, caught.value.actual_version) == (1, 2)
    assert any_redis.get(session_keys(session_id)[0]) == before


def test_an_update_without_an_expected_version_writes_over_whatever_version_is_current(store, session_id):
    # If-Match: * -- the version check is skipped, nothing else is
    store.create(session_id, '{"a":1}', 60)
    store.update(session_id, '{"a":2}', 1)

    result = store.update(session_id, '{"a":3}', None)

    assert (result.session.version, result.event_id) == (3, f"{session_id}:3")
    assert store.get(session_id).state == {"a": 3} and store.get(session_id).version == 3
    store.delete(session_id)
    with pytest.raises(SessionNotFound):
        store.update(session_id, '{"a":4}', None)


def test_a_create_with_an_existing_id_is_refused_and_keeps_the_session(store, session_id):
    store.create(session_id, '{"first":true}', 60)
    with pytest.raises(SessionExists) as caught:
        store.create(session_id, '{"second":true}', 60)
    assert caught.value.version == 1 and not caught.value.deleted
    assert store.get(session_id).state == {"first": True}


# -- TTL ---------------------------------------------------------------------

def test_a_write_refreshes_the_sliding_ttl(store, any_redis, session_id):
    key = session_keys(session_id)[0]
    store.create(session_id, "{}", 600)
    any_redis.pexpire(key, 1000)  # time passed: a second of the TTL is left
    store.update(session_id, '{"touched":1}', 1)
    # back to the session's whole TTL; the margin is for a busy machine
    assert 590_000 < any_redis.pttl(key) <= 600_000


def test_an_expired_session_reads_as_not_found(store, session_id):
    store.create(session_id, '{"a":1}', 1)
    wait_until(lambda: store.get(session_id) is None, timeout=15, what="the session to expire",
               interval=0.02)
    with pytest.raises(SessionNotFound) as caught:
        SessionService(store).get(session_id)  # no PostgreSQL configured: nothing to recover
    assert not caught.value.deleted
    with pytest.raises(KeyMissing) as missing:  # the marker remembers version 1
        store.update(session_id, '{"a":2}', 1)
    assert missing.value.marker_version == 1


def test_the_version_marker_outlives_its_session_even_when_configured_shorter(any_redis, session_id):
    store = SessionStore(any_redis, marker_ttl=60, channel=TEST_CHANNEL)
    # with a TTL the marker is a key of its own (a hash field has none)
    marker = marker_key(session_id)
    store.create(session_id, "{}", 3600)
    assert any_redis.ttl(marker) >= 3600
    store.update(session_id, "{}", 1)
    assert any_redis.ttl(marker) >= 3600
    store.delete(session_id)
    assert any_redis.ttl(marker) >= 3600
    assert marker_forms(any_redis, session_id) == (None, b"3|D")


# -- Pub/Sub -----------------------------------------------------------------

def test_a_subscriber_receives_create_update_and_delete_in_version_order(store, session_id):
    received = []
    with subscribe(store, timeout=0.1) as events:
        # published right after subscribe() returned: none may be lost
        store.create(session_id, '{"step":1}', 60)
        store.update(session_id, '{"step":2}', 1)
        store.delete(session_id, 2)
        deadline = time.monotonic() + 15
        while len(received) < 3 and time.monotonic() < deadline:
            event = next(events)
            if event is not None and event["session_id"] == session_id:
                received.append(event)

    assert [(e["event_type"], e["version"]) for e in received] == [
        (CREATED, 1), (UPDATED, 2), (DELETED, 3)]
    assert [e["state"] for e in received] == [{"step": 1}, {"step": 2}, None]
    assert [e["event_id"] for e in received] == [f"{session_id}:{v}" for v in (1, 2, 3)]
    assert all(e["occurred_at"].endswith("Z") and e["schema_version"] == 1 for e in received)


def test_a_subscriber_sees_nothing_from_another_channel(any_redis, session_id):
    mine = SessionStore(any_redis, channel=f"c-{uuid.uuid4().hex}")
    other = SessionStore(any_redis, channel=f"c-{uuid.uuid4().hex}")
    with subscribe(mine, timeout=0.05) as events:
        other.create(session_id, "{}", 60)
        assert [next(events) for _ in range(5)] == [None] * 5


# -- DELETE tombstone --------------------------------------------------------

def test_a_delete_leaves_a_tombstone_an_in_flight_update_cannot_pass(store, any_redis, session_id):
    store.create(session_id, '{"a":1}', 120)
    store.update(session_id, '{"a":2}', 1)
    deleted = store.delete(session_id, 2)
    assert deleted.session.version == 3 and deleted.session.deleted

    with pytest.raises(SessionNotFound) as in_flight:  # a writer that read version 2
        store.update(session_id, '{"a":3}', 2)
    assert in_flight.value.deleted
    with pytest.raises(SessionNotFound) as read:
        store.get(session_id)
    assert read.value.deleted
    with pytest.raises(SessionExists) as recreate:
        store.create(session_id, '{"a":"resurrected"}', 120)
    assert recreate.value.deleted and recreate.value.version == 3
    with pytest.raises(SessionNotFound):
        store.delete(session_id)

    session_key, marker_hash = session_keys(session_id)[:2]
    assert any_redis.ttl(session_key) >= 119  # the tombstone lives at least the session TTL
    assert any_redis.ttl(marker_hash) == -1  # never expires (SESSION_MARKER_TTL 0, the default)
    assert marker_forms(any_redis, session_id) == (b"3|D", None)


def test_a_deleted_id_stays_unusable_after_its_tombstone_expired(store, any_redis, session_id):
    store.create(session_id, '{"a":1}', 1)
    store.delete(session_id, 1)
    wait_until(lambda: not any_redis.exists(session_keys(session_id)[0]), timeout=15,
               what="the tombstone to expire", interval=0.02)
    with pytest.raises(SessionExists) as recreate:
        store.create(session_id, "{}", 60)
    assert recreate.value.deleted
    with pytest.raises(SessionNotFound) as update:
        store.update(session_id, "{}", 2)
    assert update.value.deleted


def test_a_delete_with_a_stale_version_is_refused(store, session_id):
    store.create(session_id, '{"a":1}', 60)
    store.update(session_id, '{"a":2}', 1)
    with pytest.raises(ConcurrencyError) as caught:
        store.delete(session_id, 1)
    assert caught.value.actual_version == 2
    assert store.get(session_id).version == 2


# -- outbox ------------------------------------------------------------------

def test_every_write_leaves_its_event_in_the_outbox_until_acknowledged(store, any_redis, session_id):
    created = store.create(session_id, '{"a":1}', 60)
    index, data = outbox_keys(bucket_of(session_id))
    assert any_redis.zscore(index, created.event_id) is not None
    assert json.loads(any_redis.hget(data, created.event_id)) == json.loads(created.event_json)
    store.outbox_ack([created.event_id])
    assert any_redis.zscore(index, created.event_id) is None
    assert any_redis.hget(data, created.event_id) is None


def test_every_write_answers_the_session_its_event_describes(store, session_id):
    """One reply shape and one decoder for every write (scripts/write.lua):
    each write's session is its event's, field for field, and the state is
    the bytes the client sent."""
    state = '{"b": [1, 2],  "a": "x,\\"y"}'  # spacing and escapes kept as sent
    ended = f"{session_id}-ended"
    writes = [store.create(session_id, state, 60, owner_id="u-1"),
              store.update(session_id, state, 1, ttl_seconds=90),
              store.touch(session_id, 2),
              store.delete(session_id, 3),
              store.block(f"{session_id}-blocked", "u-1", 30),
              store.create(ended, state, 30, owner_id="u-1")]
    store.client.delete(session_keys(ended)[0])  # as if its lifetime ended
    status, expired = store.expire(ended, writes[-1].session)
    writes.append(expired)

    assert status == "expired" and [w.session.version for w in writes] == [1, 2, 3, 4, 1, 1, 2]
    for write in writes:
        event = json.loads(write.event_json)
        session = write.session
        assert (session.session_id, session.version, session.created_at, session.updated_at,
                session.ttl_seconds, session.owner_id, session.deleted, session.expired) == (
            event["session_id"], event["version"], event["created_at"], event["occurred_at"],
            event["ttl_seconds"], event["owner_id"], event["event_type"] == DELETED,
            event["event_type"] == EXPIRED)
        assert write.event_id == event["event_id"] and not write.replayed
    assert [w.session.state_json for w in writes] == [state] * 3 + ["null"] * 2 + [state, "null"]


# -- Redis Cluster: one hash slot per script ---------------------------------

@pytest.mark.parametrize("sid", ["a", "t-" + "f" * 126, "x.y:z_1-2", "{tag}", "}{", "0"])
def test_every_key_of_a_script_is_in_one_hash_slot(sid):
    assert len({key_slot(key.encode()) for key in session_keys(sid)}) == 1


def test_sessions_spread_over_every_cluster_node(redis_cluster):
    # the hash tag keeps a session's keys together, not all sessions on one node
    nodes = {redis_cluster.get_node_from_key(session_keys(f"s-{i}")[0]).name for i in range(200)}
    assert len(nodes) == 3


def test_a_script_the_node_lost_runs_even_when_a_load_would_reach_another_node(
        store, session_id, monkeypatch):
    """After a failover, one pooled connection may be on the new primary and
    another still on the old: a SCRIPT LOAD could miss the node that runs
    the next EVALSHA.  (The chaos failover scenario, threads sharing a client.)"""
    store.create(session_id, '{"n":1}', 600)
    store.client.script_flush()  # the node lost its scripts
    # where a load would go: another node (it loads nothing here)
    monkeypatch.setattr(store.client, "script_load", lambda body: "0" * 40)

    assert store.update(session_id, '{"n":2}', 1).session.version == 2
    assert store.get(session_id, verify=True).version == 2
