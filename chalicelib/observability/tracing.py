"""DEBUG traces: each Redis command and SQL statement with its duration.

At DEBUG, ``instrument_redis`` and ``instrument_psycopg`` log each Redis
command and SQL statement with its duration (command names, keys and SQL
text only: never values, parameters or credentials).  Below DEBUG they
return the client untouched, so the hot path pays nothing.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from chalicelib.observability.logs import ROOT_LOGGER

_redis_log = logging.getLogger(f"{ROOT_LOGGER}.redis")
_sql_log = logging.getLogger(f"{ROOT_LOGGER}.sql")

# Commands whose first argument is a key.  Anything else is logged by name
# only, so that AUTH, HELLO or CONFIG arguments never reach a log line.
_KEYED = frozenset(
    "GET SET DEL UNLINK EXISTS EXPIRE PEXPIRE TTL PTTL TYPE MEMORY ZADD ZREM ZCARD ZRANGE "
    "ZRANGEBYSCORE ZSCORE HSET HGET HMGET HDEL HLEN HGETALL INCR DECR".split())


def _describe_command(args: tuple) -> dict[str, Any]:
    name = args[0].decode() if isinstance(args[0], bytes) else str(args[0])
    upper = name.upper()
    info: dict[str, Any] = {"command": upper}
    if upper in ("EVALSHA", "EVAL") and len(args) > 2:
        numkeys = int(args[2])
        info["keys"] = [k.decode() if isinstance(k, bytes) else str(k) for k in args[3:3 + numkeys]]
    elif upper in _KEYED and len(args) > 1:
        key = args[1]
        info["key"] = key.decode(errors="replace") if isinstance(key, bytes) else str(key)
    return info


def instrument_redis(client: Any, logger: logging.Logger = _redis_log) -> Any:
    """Log every command (and pipeline) ``client`` sends, with its duration.

    Only when ``logger`` is enabled for DEBUG at the time of the call;
    otherwise ``client`` is returned unchanged.  Works for ``redis.Redis``
    and ``RedisCluster`` by wrapping the instance's ``execute_command`` (which
    registered Lua scripts go through as EVALSHA) and ``pipeline``.
    """
    if not logger.isEnabledFor(logging.DEBUG):
        return client
    execute_command = client.execute_command
    make_pipeline = client.pipeline

    def timed_command(*args: Any, **options: Any) -> Any:
        start = time.perf_counter()
        failed = None
        try:
            return execute_command(*args, **options)
        except Exception as exc:
            failed = type(exc).__name__
            raise
        finally:
            logger.debug("redis command", extra={
                **_describe_command(args), "ms": round((time.perf_counter() - start) * 1000, 3),
                **({"error": failed} if failed else {})})

    def timed_pipeline(*args: Any, **kwargs: Any) -> Any:
        pipe = make_pipeline(*args, **kwargs)
        execute = pipe.execute

        def timed_execute(*eargs: Any, **ekwargs: Any) -> Any:
            commands = len(pipe)
            start = time.perf_counter()
            try:
                return execute(*eargs, **ekwargs)
            finally:
                logger.debug("redis pipeline", extra={
                    "command": "PIPELINE", "commands": commands,
                    "ms": round((time.perf_counter() - start) * 1000, 3)})

        pipe.execute = timed_execute
        return pipe

    client.execute_command = timed_command
    client.pipeline = timed_pipeline
    return client


def _sql_text(query: Any, conn: Any) -> str:
    if isinstance(query, bytes):
        text = query.decode(errors="replace")
    elif isinstance(query, str):
        text = query
    else:  # psycopg.sql.Composable
        try:
            text = query.as_string(conn)
        except Exception:
            text = repr(query)
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:297] + "..."


def instrument_psycopg(conn: Any, logger: logging.Logger = _sql_log) -> Any:
    """Log every statement run on ``conn`` (a psycopg 3 connection), and each
    commit, with its duration and row count; parameters are never logged.

    Only when ``logger`` is enabled for DEBUG; otherwise ``conn`` is returned
    unchanged.  It swaps the connection's ``cursor_factory`` for a subclass
    of the current one, which ``conn.execute`` and ``conn.cursor()`` use.
    """
    if not logger.isEnabledFor(logging.DEBUG):
        return conn
    base = conn.cursor_factory

    class TimedCursor(base):  # type: ignore[misc, valid-type]
        def execute(self, query, params=None, **kwargs):
            start = time.perf_counter()
            try:
                return super().execute(query, params, **kwargs)
            finally:
                logger.debug("sql", extra={
                    "sql": _sql_text(query, self.connection), "rows": self.rowcount,
                    "ms": round((time.perf_counter() - start) * 1000, 3)})

        def executemany(self, query, params_seq, **kwargs):
            start = time.perf_counter()
            try:
                return super().executemany(query, params_seq, **kwargs)
            finally:
                logger.debug("sql executemany", extra={
                    "sql": _sql_text(query, self.connection), "rows": self.rowcount,
                    "ms": round((time.perf_counter() - start) * 1000, 3)})

    TimedCursor.__name__ = f"Timed{base.__name__}"
    conn.cursor_factory = TimedCursor
    commit = conn.commit

    def timed_commit() -> None:
        start = time.perf_counter()
        try:
            commit()
        finally:
            logger.debug("sql commit", extra={"sql": "COMMIT",
                                              "ms": round((time.perf_counter() - start) * 1000, 3)})

    conn.commit = timed_commit
    return conn
