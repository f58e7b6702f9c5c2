"""The single-node client's hot path (client._Redis): GET, EVALSHA,
EVAL and SCRIPT LOAD on one connection of its own, everything else through the pool.

What must hold: the same bytes on the wire as redis-py sends, one
connection per warm process, replies never crossed between threads, and a
connection the server dropped replaced before the next command (a write
must not fail, or be sent twice, because a warm connection went stale).
"""
from __future__ import annotations

import os
import threading
import uuid

import pytest
import redis

from chalicelib.adapters.redis.client import _pack, connect_redis
from chalicelib.adapters.redis.store import SessionStore
from chalicelib.config import Settings
from tests.support.constants import REDIS_TEST_URL

STATE = '{"name":"caf\u00e9 \u20ac \U0001f600","n":' + "1" * 1000 + "}"


@pytest.fixture
def client_name() -> str:
    return f"hot-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def hot_client(client_name):
    client = connect_redis(Settings(redis_url=REDIS_TEST_URL), client_name=client_name)
    yield client
    client.close()


def connections_named(admin: redis.Redis, name: str) -> list[dict]:
    return [c for c in admin.client_list() if c.get("name") == name]


@pytest.mark.parametrize("args", [
    ("GET", "ss:{0001}:s:a"),
    ("EVALSHA", "a" * 40, 4, "k1", "k2", "k3", "k4", "id", STATE, 7, "2026-11-29T10:00:00.000Z",
     1764410400000, 0, "session-updates", ""),
    ("SCRIPT LOAD", "return redis.call('GET', KEYS[1])"),
    ("EVALSHA", "b" * 40, 1, b"raw\x00bytes", -12, "x" * 300_000),
    ("EVALSHA", "c" * 40, 0, 1.5, 0.1, 2**70),
], ids=["get", "update-script", "script-load", "bytes-negative-large", "floats-big-int"])
def test_the_lean_packing_sends_exactly_the_bytes_redis_py_would(args):
    reference = b"".join(bytes(chunk) for chunk in redis.Connection().pack_command(*args))

    assert b"".join(_pack(args)) == reference


def test_the_packer_writes_resp_arrays_of_bulk_strings():
    assert _pack(("SCRIPT LOAD", "return 1")) == [
        b"*3\r\n$6\r\nSCRIPT\r\n$4\r\nLOAD\r\n$8\r\nreturn 1\r\n"]
    assert _pack(("GET", "caf\u00e9")) == [b"*2\r\n$3\r\nGET\r\n$5\r\ncaf\xc3\xa9\r\n"]


def test_an_argument_the_lean_packer_does_not_know_goes_through_redis_py(hot_client):
    sha = hot_client.script_load("return ARGV[1]")

    assert _pack(("EVALSHA", sha, 0, True)) is None
    assert _pack(("EVALSHA", sha, 0, None)) is None
    assert hot_client.evalsha(sha, 0, 1.5) == b"1.5"
    for refused in (True, None):  # redis-py refuses them, as before
        with pytest.raises(redis.DataError):
            hot_client.evalsha(sha, 0, refused)


def test_the_hot_commands_of_a_warm_process_share_one_connection_and_the_rest_use_the_pool(
        redis_single, hot_client, client_name, session_id):
    store = SessionStore(hot_client, channel=f"hot-{session_id}")
    store.create(session_id, STATE, 60)
    for version in range(1, 6):
        store.update(session_id, STATE, version)
        assert store.get(session_id, verify=True).version == version + 1
    # the script loads went on that connection too (NOSCRIPT, then EVAL)
    assert len(connections_named(redis_single, client_name)) == 1

    store.outbox_ack([f"{session_id}:{v}" for v in range(1, 7)])  # a pipeline: the pool

    assert len(connections_named(redis_single, client_name)) == 2


def test_threads_sharing_one_client_each_get_their_own_replies(redis_single, hot_client):
    keys = {f"hot-thread-{uuid.uuid4().hex}": f"value-{i}".encode() for i in range(8)}
    redis_single.mset(keys)
    sha = hot_client.script_load("return redis.call('GET', KEYS[1])")
    wrong: list[tuple[str, object]] = []

    def reader(key: str, expected: bytes) -> None:
        try:
            for i in range(300):
                got = hot_client.get(key) if i % 2 else hot_client.evalsha(sha, 1, key)
                if got != expected:
                    wrong.append((key, got))
        except Exception as exc:  # a reply read by the wrong thread breaks the protocol
            wrong.append((key, exc))

    threads = [threading.Thread(target=reader, args=item) for item in keys.items()]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        redis_single.delete(*keys)

    assert not any(thread.is_alive() for thread in threads)
    assert wrong == []


def test_a_write_after_the_server_closed_the_warm_connection_goes_through_on_a_new_one(
        redis_single, hot_client, client_name, session_id):
    store = SessionStore(hot_client, channel=f"hot-{session_id}")
    store.create(session_id, STATE, 60)
    [warm] = connections_named(redis_single, client_name)

    redis_single.client_kill_filter(_id=warm["id"])
    result = store.update(session_id, '{"n":2}', 1)

    assert result.session.version == 2
    assert store.get(session_id).state == {"n": 2}
    [fresh] = connections_named(redis_single, client_name)
    assert fresh["id"] != warm["id"]
    store.outbox_ack([f"{session_id}:1", f"{session_id}:2"])


def test_a_forked_child_talks_on_a_connection_of_its_own(redis_single, hot_client, client_name):
    key = f"hot-fork-{uuid.uuid4().hex}"
    redis_single.set(key, b"value")
    assert hot_client.get(key) == b"value"  # the parent's connection exists
    to_parent, from_child = os.pipe()
    to_child, from_parent = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: one GET, then wait until the parent counted
        try:
            answer = "ok" if hot_client.get(key) == b"value" else "wrong reply"
        except BaseException as exc:  # never back into pytest from the child
            answer = repr(exc)
        finally:
            os.write(from_child, answer.encode())
            os.read(to_child, 1)
            os._exit(0)
    try:
        child_answer = os.read(to_parent, 200).decode()
        # sharing the parent's socket, the two would read each other's replies
        connections = len(connections_named(redis_single, client_name))
        os.write(from_parent, b"1")
    finally:
        os.waitpid(pid, 0)
        redis_single.delete(key)

    assert (child_answer, connections) == ("ok", 2)
    assert hot_client.get(key) is None
