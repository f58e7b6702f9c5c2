"""Shared fixtures: real Redis (single node and a local 3-master cluster),
real PostgreSQL, LocalStack.  A missing service FAILS the test run; nothing
here skips.  Every fixture that creates something removes it in a finalizer.
"""
from __future__ import annotations

import os
import uuid

import pytest
import redis
from redis.cluster import RedisCluster

from chalicelib import runtime
from chalicelib.config import Settings
from chalicelib.store import SessionStore
from tests.servers import RedisClusterServers, RedisServer

# Tests use database 1 of the machine's Redis so that `make run` (db 0) and
# the test suite can share a machine.
REDIS_TEST_URL = os.environ.get("REDIS_TEST_URL", "redis://127.0.0.1:6379/1")
API_KEY = "test-key-0123456789abcdef"


@pytest.fixture(scope="session")
def redis_single() -> redis.Redis:
    client = redis.Redis.from_url(REDIS_TEST_URL, socket_timeout=5)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        pytest.fail(f"Redis is not reachable at {REDIS_TEST_URL}: {exc} (run scripts/services.sh)")
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture(scope="session")
def redis_cluster_servers(tmp_path_factory) -> RedisClusterServers:
    servers = RedisClusterServers(tmp_path_factory.mktemp("redis-cluster"))
    try:
        servers.start()
    except BaseException:
        servers.stop()
        raise
    yield servers
    servers.stop()


@pytest.fixture(scope="session")
def redis_cluster(redis_cluster_servers) -> RedisCluster:
    client = RedisCluster.from_url(redis_cluster_servers.url, socket_timeout=5)
    yield client
    client.close()


@pytest.fixture(params=["single", "cluster"])
def any_redis(request):
    """The same test against the single node and against the cluster."""
    if request.param == "single":
        return request.getfixturevalue("redis_single")
    return request.getfixturevalue("redis_cluster")


@pytest.fixture
def store(any_redis) -> SessionStore:
    return SessionStore(any_redis, channel=f"session-updates-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def throwaway_redis(tmp_path):
    """A redis-server of the test's own; the test may stop or pause it."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    if server.proc:
        server.resume()  # a paused server would ignore SIGTERM
    server.stop()


@pytest.fixture
def session_id() -> str:
    return f"t-{uuid.uuid4().hex}"


@pytest.fixture
def app_settings() -> Settings:
    """Settings for in-process app tests: test Redis, no pipeline."""
    return Settings(redis_url=REDIS_TEST_URL, api_keys=(API_KEY,))


@pytest.fixture
def use_settings():
    """Install settings (and objects) into the app's runtime; reset after."""
    def install(settings: Settings, **objects):
        runtime.reset()
        runtime.install(settings=settings, **objects)
    yield install
    runtime.reset()
