"""Guarantee 5 for Redis: an outage is a fast, clear 503, and the service
recovers by itself when Redis returns.

Each test breaks a redis-server of its own (``throwaway_redis``): stopped
(connections refused) or paused with SIGSTOP (it keeps its port and answers
nothing: the hang a network partition or an overloaded node gives), or full
(maxmemory reached with noeviction: writes refused with OOM).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import pytest
import redis

from chalicelib.adapters.redis.client import connect_redis
from chalicelib.adapters.redis.store import SessionStore
from chalicelib.config import Settings
from chalicelib.domain.errors import ServiceUnavailable
from tests.support.app import app_client
from tests.support.constants import API_KEY, AUTH
from tests.support.servers import RedisServer, free_port

# REDIS_TIMEOUT is 1.0 s: the answer comes within it plus overhead.  The
# bound is several times that, for a busy machine; it catches a hang, and
# the waits counted below show how many timeouts a call sat through.
BUDGET_SECONDS = 5 * Settings().redis_timeout


@dataclass
class Wire:
    """What the store's connections did: commands sent, replies that timed out."""
    sent: list[str] = field(default_factory=list)
    waits: int = 0

    def clear(self) -> None:
        self.sent.clear()
        self.waits = 0


@pytest.fixture
def wire() -> Wire:
    return Wire()


@pytest.fixture
def outage_store(throwaway_redis, wire) -> SessionStore:
    class Recording(redis.Connection):
        def send_packed_command(self, command, *args, **kwargs):
            # every command reaches the socket here, through the pool or the
            # client's own connection: its name is the RESP array's first bulk
            head = bytes(command if isinstance(command, (bytes, str)) else command[0])
            if not (isinstance(command, str) or head.startswith(b"*")):
                raise AssertionError(f"unexpected packing {head[:40]!r}")
            wire.sent.append(head.split(b"\r\n")[2].decode().upper())
            return super().send_packed_command(command, *args, **kwargs)

        def read_response(self, *args, **kwargs):
            try:
                return super().read_response(*args, **kwargs)
            except redis.TimeoutError:
                wire.waits += 1
                raise

    client = connect_redis(Settings(redis_url=throwaway_redis.url), connection_class=Recording)
    yield SessionStore(client)
    client.close()


@pytest.fixture
def outage_api(throwaway_redis, use_settings):
    use_settings(Settings(redis_url=throwaway_redis.url, api_keys=(API_KEY,)))
    with app_client() as http:
        yield http


def timed(call):
    """(result or raised exception, seconds taken)."""
    start = time.monotonic()
    try:
        result = call()
    except Exception as exc:
        result = exc
    return result, time.monotonic() - start


def assert_unavailable_in_time(outcome) -> None:
    error, seconds = outcome
    assert isinstance(error, ServiceUnavailable), error
    assert error.dependency == "redis"
    assert seconds < BUDGET_SECONDS, f"took {seconds:.2f}s"


def assert_503_in_time(outcome) -> None:
    response, seconds = outcome
    assert response.status_code == 503, response.body
    assert response.json_body["error"]["code"] == "ServiceUnavailable"
    assert response.headers["Retry-After"] == "1"
    assert seconds < BUDGET_SECONDS, f"took {seconds:.2f}s"


def create(api, session_id: str, state: dict):
    return api.post("/sessions", headers=AUTH,
                    body=json.dumps({"session_id": session_id, "state": state}))


def test_a_stopped_redis_makes_the_store_raise_service_unavailable_at_once(
        throwaway_redis, outage_store, session_id, wire):
    outage_store.create(session_id, '{"a":1}', 60)  # a pooled connection exists
    throwaway_redis.stop()

    wire.clear()
    assert_unavailable_in_time(timed(lambda: outage_store.get(session_id)))
    assert_unavailable_in_time(timed(lambda: outage_store.update(session_id, '{"a":2}', 1)))
    assert_unavailable_in_time(timed(lambda: outage_store.create("other", "{}", 60)))
    assert wire.waits == 0, wire  # refused: nothing waited for a timeout


def test_a_hung_redis_makes_the_store_raise_service_unavailable_after_one_timeout(
        throwaway_redis, outage_store, session_id, wire):
    outage_store.create(session_id, '{"a":1}', 60)
    throwaway_redis.pause()

    wire.clear()
    assert_unavailable_in_time(timed(lambda: outage_store.update(session_id, '{"a":2}', 1)))
    # a write is not re-sent after a timeout: one wait, not two
    assert (wire.sent.count("EVALSHA"), wire.waits) == (1, 1), wire
    wire.clear()
    assert_unavailable_in_time(timed(lambda: outage_store.get(session_id)))
    assert wire.waits == 1, wire


def test_the_store_recovers_by_itself_when_a_stopped_redis_restarts(
        throwaway_redis, outage_store, session_id):
    outage_store.create(session_id, '{"a":1}', 60)
    throwaway_redis.stop()
    with pytest.raises(ServiceUnavailable):
        outage_store.get(session_id)

    throwaway_redis.start()  # same port, empty (the server keeps no data)
    assert outage_store.get(session_id) is None
    outage_store.create(session_id, '{"a":"again"}', 60)
    assert outage_store.get(session_id).state == {"a": "again"}


def test_the_store_recovers_by_itself_when_a_hung_redis_resumes(
        throwaway_redis, outage_store, session_id):
    outage_store.create(session_id, '{"a":1}', 60)
    throwaway_redis.pause()
    with pytest.raises(ServiceUnavailable):
        outage_store.update(session_id, '{"a":2}', 1)

    throwaway_redis.resume()
    session = outage_store.get(session_id)
    # The timed-out update reached the server's socket before the hang ended:
    # its outcome was unknown to the client (hence the 503), but the session
    # is whole: version 1 with the old state, or version 2 with the new one.
    assert (session.version, session.state) in [(1, {"a": 1}), (2, {"a": 2})]


def test_the_api_answers_503_while_redis_is_stopped_and_recovers_by_itself(
        throwaway_redis, outage_api, session_id):
    assert create(outage_api, session_id, {"a": 1}).status_code == 201
    throwaway_redis.stop()

    assert_503_in_time(timed(lambda: outage_api.get(f"/sessions/{session_id}", headers=AUTH)))
    assert_503_in_time(timed(lambda: outage_api.put(
        f"/sessions/{session_id}", headers={**AUTH, "If-Match": '"1"'}, body='{"state":{"a":2}}')))
    assert_503_in_time(timed(lambda: create(outage_api, "another-one", {})))
    assert_503_in_time(timed(lambda: outage_api.delete(f"/sessions/{session_id}", headers=AUTH)))
    health, seconds = timed(lambda: outage_api.get("/health"))
    assert health.status_code == 503 and seconds < BUDGET_SECONDS
    assert health.json_body["checks"]["redis"]["status"] == "down"

    throwaway_redis.start()
    assert create(outage_api, session_id, {"a": "again"}).status_code == 201
    assert outage_api.get(f"/sessions/{session_id}", headers=AUTH).json_body["state"] == {"a": "again"}
    assert outage_api.get("/health").status_code == 200


def test_the_api_answers_503_while_redis_hangs_and_recovers_by_itself(
        throwaway_redis, outage_api, session_id):
    assert create(outage_api, session_id, {"a": 1}).status_code == 201
    throwaway_redis.pause()

    assert_503_in_time(timed(lambda: outage_api.get(f"/sessions/{session_id}", headers=AUTH)))
    assert_503_in_time(timed(lambda: create(outage_api, "another-one", {})))
    health, seconds = timed(lambda: outage_api.get("/health"))
    assert health.status_code == 503 and seconds < BUDGET_SECONDS
    assert health.json_body["checks"]["redis"]["status"] == "down"

    throwaway_redis.resume()
    response = outage_api.get(f"/sessions/{session_id}", headers=AUTH)
    assert response.status_code == 200 and response.json_body["state"] == {"a": 1}
    assert outage_api.get("/health").status_code == 200


@pytest.fixture
def full_redis(tmp_path):
    """A redis-server of the test's own that refuses writes when full."""
    server = RedisServer(tmp_path / "full", None, "--maxmemory-policy", "noeviction").start()
    admin = redis.Redis(port=server.port, socket_timeout=5)
    yield admin
    admin.close()
    server.stop()


def test_a_full_redis_answers_writes_with_503_and_still_serves_reads(full_redis, use_settings, session_id):
    port = full_redis.connection_pool.connection_kwargs["port"]
    use_settings(Settings(redis_url=f"redis://127.0.0.1:{port}/0", api_keys=(API_KEY,)))
    with app_client() as api:
        assert create(api, session_id, {"a": 1}).status_code == 201
        full_redis.config_set("maxmemory", 1)  # every write is now over the limit

        for response in (create(api, "another-one", {}),
                         api.put(f"/sessions/{session_id}", headers={**AUTH, "If-Match": '"1"'},
                                 body='{"state":{"a":2}}'),
                         api.delete(f"/sessions/{session_id}", headers=AUTH)):
            assert response.status_code == 503, response.body
            error = response.json_body["error"]
            assert error["code"] == "ServiceUnavailable" and "OOM" in error["message"]
        assert api.get(f"/sessions/{session_id}", headers=AUTH).json_body["state"] == {"a": 1}

        full_redis.config_set("maxmemory", 0)
        response = api.put(f"/sessions/{session_id}", headers={**AUTH, "If-Match": '"1"'},
                           body='{"state":{"a":2}}')
        assert response.status_code == 200 and response.json_body["version"] == 2


def test_an_unreachable_redis_cluster_is_a_503_on_health_and_on_every_route_not_a_500(use_settings):
    # a cluster client reads the slot map as it is built: that must fail as a 503 too
    use_settings(Settings(redis_url=f"redis://127.0.0.1:{free_port()}", redis_cluster=True,
                          api_keys=(API_KEY,)))
    with app_client() as http:
        start = time.monotonic()
        health = http.get("/health")
        assert health.status_code == 503
        assert json.loads(health.body)["checks"]["redis"]["status"] == "down"
        reply = http.get("/sessions/anything", headers={"Authorization": f"Bearer {API_KEY}"})
        assert reply.status_code == 503
        assert json.loads(reply.body)["error"]["code"] == "ServiceUnavailable"
        assert time.monotonic() - start < 2 * BUDGET_SECONDS  # two requests, neither hangs
