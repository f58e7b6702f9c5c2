"""Redis errors, translated: what the store raises for them, and what a
public health report may say about them.

redis-py's connection trouble and the refusals of a node that cannot serve
now become ``ServiceUnavailable`` (a fast 503 the client retries); anything
else is a bug and stays what it is.
"""
from __future__ import annotations

from typing import Literal

import redis

from chalicelib.domain.errors import ServiceUnavailable


def unavailable(exc: BaseException) -> ServiceUnavailable | None:
    """The ServiceUnavailable ``exc`` means, or None when it means none."""
    # ClusterError: still refused after the cluster client's own retries
    # (CLUSTERDOWN, or MOVED/ASK/TRYAGAIN until its "TTL exhausted").
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError,
                        redis.exceptions.ClusterError,
                        redis.exceptions.SlotNotCoveredError,
                        redis.exceptions.TryAgainError)):
        return ServiceUnavailable(f"Redis is unavailable: {type(exc).__name__}", dependency="redis")
    if isinstance(exc, redis.ResponseError):
        # redis-py strips the code off the errors it has classes for
        # (OutOfMemoryError, ReadOnlyError...) and keeps it in status_code
        code = getattr(exc, "status_code", None) or str(exc).split(" ", 1)[0]
        if code in ("LOADING", "MASTERDOWN", "READONLY", "BUSY", "OOM", "CLUSTERDOWN"):
            return ServiceUnavailable(f"Redis refused the command: {code}", dependency="redis")
    return None


class redis_errors:
    """``with redis_errors():`` raises ``unavailable(exc)`` for the Redis
    trouble it means."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> Literal[False]:
        if exc is None:
            return False
        translated = unavailable(exc)
        if translated is not None:
            raise translated from exc
        return False


# -- what /health may say about a Redis error ----------------------------------

_REDIS_RESPONSES = (  # (redis-py class name, phrase), most specific first
    ("NoPermissionError", "permission denied (ACL)"),
    ("AuthenticationWrongNumberOfArgsError", "refused the credentials"),
    ("ReadOnlyError", "read-only (a replica)"),
    ("OutOfMemoryError", "out of memory"),
    ("MasterDownError", "primary down"),
    ("ClusterDownError", "cluster down"),
    ("TryAgainError", "cluster resharding"),
    ("ResponseError", "refused the command"),
)


def phrase(exc: BaseException) -> str | None:
    """What a public health report may say about a redis-py error (never its
    own text: it may carry host names), or None when ``exc`` is not one."""
    r = redis.exceptions
    if isinstance(exc, r.TimeoutError):
        return "timed out"
    if isinstance(exc, r.AuthenticationError):
        return "refused the credentials"
    if isinstance(exc, r.BusyLoadingError):
        return "loading its data"
    if isinstance(exc, r.ConnectionError):
        return "unreachable"
    if isinstance(exc, r.RedisClusterException):
        return "unreachable"
    for name, text in _REDIS_RESPONSES:
        if isinstance(exc, getattr(r, name)):
            return text
    return "failed" if isinstance(exc, r.RedisError) else None
