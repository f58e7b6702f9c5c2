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
from redis.retry import Retry

from chalicelib.config import Settings

RedisClient = redis.Redis | RedisCluster


def connect_redis(settings: Settings, **overrides: Any) -> RedisClient:
    """Return a lazily connecting client for ``settings.redis_url``.

    Nothing is sent until the first command, so building it costs no round
    trip at cold start.  ``overrides`` go to redis-py (tests use them).
    """
    options: dict[str, Any] = {
        "socket_connect_timeout": settings.redis_timeout,
        "socket_timeout": settings.redis_timeout,
        "health_check_interval": 30,
        "client_name": "sessionsync",
    }
    options.update(overrides)
    # One immediate retry on a connection error covers a pooled connection
    # that died (Redis restarted, failover).  A timeout is never retried: a
    # second wait would double the one-second budget of guarantee 5, and the
    # command may have run (a re-sent write would then answer 409 or 404 for
    # a change that succeeded).  The caller gets a 503: outcome unknown.
    options.setdefault("retry", Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)))
    if settings.redis_cluster:
        return _Cluster.from_url(settings.redis_url, **options)
    return redis.Redis.from_url(settings.redis_url, **options)


class _Cluster(RedisCluster):
    """RedisCluster that does not re-send a command after a timeout (see above);
    it still retries connection errors, MOVED/ASK and CLUSTERDOWN."""

    ERRORS_ALLOW_RETRY = tuple(e for e in RedisCluster.ERRORS_ALLOW_RETRY
                               if e is not redis.TimeoutError)
