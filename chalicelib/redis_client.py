"""Build the redis-py client sessionsync uses, single node or cluster.

Timeouts are short on purpose: an unreachable Redis must turn into a 503
within about a second, not a Lambda that hangs until its own timeout.
``rediss://`` (TLS) and ``redis://user:password@`` (RBAC / AUTH) URLs are
passed to redis-py unchanged, as ElastiCache in-transit encryption needs.
"""
from __future__ import annotations

from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException
from redis.retry import Retry

from chalicelib.config import Settings
from chalicelib.errors import ServiceUnavailable

RedisClient = redis.Redis | RedisCluster


def connect_redis(settings: Settings, **overrides: Any) -> RedisClient:
    """Return a client for ``settings.redis_url``.

    A single-node client connects lazily (no round trip at cold start); a
    cluster client reads the slot map now.  Raises ServiceUnavailable when
    a cluster cannot be reached.  ``overrides`` go to redis-py (tests use them).
    """
    options: dict[str, Any] = {
        "socket_connect_timeout": settings.redis_timeout,
        "socket_timeout": settings.redis_timeout,
        "health_check_interval": 30,
        "client_name": "sessionsync",
    }
    options.update(overrides)
    # redis-py does not re-send a command (no retry).  A command that failed
    # with a connection error or a timeout may have run: the connection can
    # break after Redis executed a CAS script and before its reply arrived,
    # and a re-sent script would then answer ConcurrencyError (or
    # SessionExists) for a write that succeeded, which a client's retry loop
    # would apply twice.  The caller gets a 503, outcome unknown, within the
    # one-second budget of guarantee 5.  Reads, which are safe to repeat,
    # retry a broken connection themselves (SessionStore.get).
    options.setdefault("retry", Retry(NoBackoff(), 0))
    if not settings.redis_cluster:
        return redis.Redis.from_url(settings.redis_url, **options)
    # Unlike redis.Redis, a cluster client connects as it is built (it reads
    # the slot map): an unreachable or non-cluster Redis must be a 503.
    try:
        return _Cluster.from_url(settings.redis_url, **options)
    except (RedisClusterException, redis.ConnectionError, redis.TimeoutError) as exc:
        raise ServiceUnavailable(f"Redis Cluster is unavailable: {type(exc).__name__}",
                                 dependency="redis") from exc


class _Cluster(RedisCluster):
    """RedisCluster that does not re-send a command after a timeout or a
    connection error (see above).  It still follows MOVED/ASK and retries
    CLUSTERDOWN (the command did not run), and after a connection error it
    has already reloaded the topology, so the next command finds the new
    primary."""

    ERRORS_ALLOW_RETRY = tuple(e for e in RedisCluster.ERRORS_ALLOW_RETRY
                               if not issubclass(e, (redis.TimeoutError, redis.ConnectionError)))
