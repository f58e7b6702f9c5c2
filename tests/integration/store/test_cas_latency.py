"""Compare-and-set stays atomic when every round trip is slow.

A check made in one round trip and a write made in another leave a window
as long as the round trip between them: on a slow network every racing
writer reads the same version before any of them writes.  Racing threads
on a fast loopback may happen to run one after another on a busy machine;
here the window is wide on purpose, so a non-atomic compare-and-set always
shows.  docs/guarantees.md: "CAS is atomic".
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from chalicelib.adapters.redis.store import SessionStore
from chalicelib.domain.errors import ConcurrencyError
from tests.support.constants import TEST_CHANNEL
from tests.support.servers import TcpProxy

WRITERS = 8
# each reply is held back this long: far longer than the spread of the
# writers' start on a loaded machine
REPLY_DELAY_SECONDS = 0.25


@pytest.fixture
def slow_store(redis_single):
    kwargs = redis_single.connection_pool.connection_kwargs
    proxy = TcpProxy(kwargs["port"], kwargs["host"])
    client = redis.Redis(port=proxy.port, db=kwargs["db"], socket_timeout=30,
                         max_connections=WRITERS + 2)
    # one open connection per writer, before the network turns slow: a
    # connection's handshake is several round trips, which would spread
    # the writers' start by more than the window
    pool = client.connection_pool
    connections = [pool.get_connection() for _ in range(WRITERS)]
    for connection in connections:
        pool.release(connection)
    yield SessionStore(client, channel=TEST_CHANNEL), proxy
    client.close()
    proxy.close()


def test_of_8_writers_on_a_slow_network_updating_the_same_version_exactly_one_wins(slow_store, session_id):
    store, proxy = slow_store
    store.create(session_id, '{"writer":null}', 600)
    proxy.reply_delay = REPLY_DELAY_SECONDS
    start = threading.Barrier(WRITERS)

    def attempt(writer: int):
        start.wait(timeout=60)
        try:
            store.update(session_id, '{"writer":%d}' % writer, 1)
        except ConcurrencyError as exc:
            return exc.actual_version
        return "won"

    with ThreadPoolExecutor(max_workers=WRITERS) as pool:
        outcomes = list(pool.map(attempt, range(WRITERS), timeout=120))

    assert sorted(outcomes, key=str) == [2] * (WRITERS - 1) + ["won"]
    proxy.reply_delay = 0
    assert store.get(session_id).version == 2
