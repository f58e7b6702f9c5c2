"""More concurrent commands than redis-py's default pool size (100) wait for
nothing and fail nothing: ``sessionsync serve`` runs a thread per client
connection, and each thread's command needs a pooled connection of its own.
With redis-py's default the 101st concurrent command failed at once with
MaxConnectionsError (a 503 to the HTTP client)."""
from __future__ import annotations

import threading
import time
import uuid

import redis

from chalicelib.adapters.redis.client import POOL_MAX_CONNECTIONS, connect_redis
from chalicelib.config import Settings
from tests.support.constants import REDIS_TEST_URL

THREADS = 150  # past redis-py's default of 100
BLOCK_SECONDS = 4  # each command holds its connection this long


def test_more_concurrent_commands_than_redis_py_s_default_pool_all_get_a_connection():
    assert POOL_MAX_CONNECTIONS > THREADS
    client = connect_redis(Settings(redis_url=REDIS_TEST_URL, redis_timeout=10.0))
    key = f"pool-test-{uuid.uuid4().hex}"  # never pushed to: every BLPOP waits it out
    start = threading.Barrier(THREADS + 1)
    errors: list[BaseException] = []
    answers: list[object] = []

    def blocked_command() -> None:
        try:
            start.wait(timeout=30)
            answers.append(client.blpop([key], timeout=BLOCK_SECONDS))
        except BaseException as exc:  # every kind is reported below
            errors.append(exc)

    threads = [threading.Thread(target=blocked_command) for _ in range(THREADS)]
    try:
        for t in threads:
            t.start()
        start.wait(timeout=30)
        time.sleep(BLOCK_SECONDS / 2)
        # the commands do overlap: Redis sees them blocked at once
        blocked = _blocked_in_our_db()
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads)
        assert errors == []
        assert answers == [None] * THREADS
        assert blocked > 100
    finally:
        client.close()


def _blocked_in_our_db() -> int:
    probe = redis.Redis.from_url(REDIS_TEST_URL)
    try:
        db = str(probe.connection_pool.connection_kwargs.get("db", 0))
        return sum(1 for c in probe.client_list()
                   if c.get("cmd") == "blpop" and str(c.get("db")) == db)
    finally:
        probe.close()
