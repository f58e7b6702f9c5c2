"""Structured logs: one JSON object per line, the request id on every line.

Every sessionsync module logs through the standard library
(``logging.getLogger("sessionsync.<module>")``, extra fields in
``extra={...}``); ``configure()`` gives the ``sessionsync`` logger one handler
that writes each record as a JSON line at LOG_LEVEL.  ``request_context()``
binds a request id (and any other fields) to every line logged while a
request or an SQS batch is handled, including from helper threads started
with ``contextvars.copy_context()``.

At DEBUG, ``instrument_redis`` and ``instrument_psycopg`` log each Redis
command and SQL statement with its duration (command names, keys and SQL
text only: never values, parameters or credentials).  Below DEBUG they
return the client untouched, so the hot path pays nothing.

Why the standard library and not ``aws_lambda_powertools.Logger`` (measured
on this machine, Python 3.11, fresh processes, after importing chalice and
redis as app.py does): powertools' Logger and Metrics import in 7.6-8.2 ms,
this module and ``chalicelib.observability.metrics`` in 0.6 ms, out of about 77 ms for the
whole of app.py; an INFO line costs 19 us with powertools against 8 us with
the formatter below, a suppressed DEBUG call 0.7 us against 0.15 us.  What
we need from it (JSON lines, a level, a correlation id) is this module.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

ROOT_LOGGER = "sessionsync"
LOG_LEVEL_ENV = "LOG_LEVEL"  # chalicelib.config.LOG_LEVEL; read here without loading every setting

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_context: ContextVar[Mapping[str, Any]] = ContextVar("sessionsync_log_context", default=_EMPTY)

# LogRecord's own attributes; anything else on a record came from ``extra``.
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName"}


def current_context() -> Mapping[str, Any]:
    """The fields bound by the innermost ``request_context`` (empty outside one)."""
    return _context.get()


def request_id() -> str | None:
    return _context.get().get("request_id")


@contextlib.contextmanager
def request_context(request_id: str | None, **fields: Any) -> Iterator[Mapping[str, Any]]:
    """Bind ``request_id`` and ``fields`` to every log line (and EMF line)
    emitted inside the block; nested blocks add to the outer fields."""
    bound = {**_context.get(), **{k: v for k, v in fields.items() if v is not None}}
    if request_id:
        bound["request_id"] = request_id
    token = _context.set(bound)
    try:
        yield bound
    finally:
        _context.reset(token)


def invocation_ids(event: Any) -> tuple[str, dict[str, Any]]:
    """(request id, fields to bind) for a Chalice event object.

    HTTP: API Gateway's ``requestContext.requestId`` (the id a client sees as
    ``x-amzn-RequestId``), plus Lambda's ``aws_request_id`` and the route.
    Any other event (SQS, schedule): Lambda's ``aws_request_id``.  Neither
    exists under ``chalice local`` or a local worker's fake context: a
    random id then, so lines of one invocation still group together.
    """
    fields: dict[str, Any] = {}
    request_context = getattr(event, "context", None)
    lambda_context = getattr(event, "lambda_context", None)
    if isinstance(request_context, Mapping):  # an HTTP request
        api_id = request_context.get("requestId")
        aws_id = getattr(lambda_context, "aws_request_id", None)
        method = request_context.get("httpMethod")
        if method:
            fields["route"] = f"{method} {request_context.get('resourcePath', '')}"
    else:
        api_id = None
        aws_id = getattr(request_context, "aws_request_id", None)
    if aws_id:
        fields["aws_request_id"] = aws_id
    return str(api_id or aws_id or uuid.uuid4()), fields


_invocation_log = logging.getLogger(f"{ROOT_LOGGER}.invocation")


def around_invocation(event: Any, handle: Any) -> Any:
    """The body of app.py's middleware: run ``handle(event)`` inside the
    invocation's request context.

    HTTP responses get an ``X-Request-Id`` header with the id the lines
    carry.  At DEBUG one line per invocation gives its duration and status.
    An exception escaping the handler (a bug: routes answer errors
    themselves) is logged with the id, then re-raised for Lambda to report.
    """
    request_id, fields = invocation_ids(event)
    http = isinstance(getattr(event, "context", None), Mapping)
    with request_context(request_id, **fields):
        debug = _invocation_log.isEnabledFor(logging.DEBUG)
        start = time.perf_counter() if debug else 0.0
        try:
            response = handle(event)
        except Exception:
            _invocation_log.exception("invocation failed")
            raise
        if debug:
            _invocation_log.debug("invocation done", extra={
                "ms": round((time.perf_counter() - start) * 1000, 3),
                "status": getattr(response, "status_code", None)})
    if http and isinstance(getattr(response, "headers", None), dict):
        response.headers["X-Request-Id"] = request_id
    return response


def per_invocation(handler: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Wrap a handler so that each call binds a fresh request id, as each
    Lambda invocation has one (the local worker calls the consumer so)."""
    @functools.wraps(handler)
    def invoke(event: Any) -> Any:
        with request_context(str(uuid.uuid4())):
            return handler(event)
    return invoke


class JsonFormatter(logging.Formatter):
    """A record as one JSON object: timestamp, level, logger, message, the
    bound request context, the record's ``extra`` fields and any exception."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        doc.update(_context.get())
        for key, value in record.__dict__.items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exception_type"] = record.exc_info[0].__name__ if record.exc_info[0] else None
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, separators=(",", ":"), ensure_ascii=False)


class _StdStream(logging.StreamHandler):
    """Writes to whatever ``sys.stdout``/``sys.stderr`` is at emit time, so a
    test runner or the CLI that swaps them still gets the lines."""

    def __init__(self, name: str) -> None:
        super().__init__(getattr(sys, name))
        self._name = name

    @property
    def stream(self) -> Any:
        return getattr(sys, self._name)

    @stream.setter
    def stream(self, value: Any) -> None:  # StreamHandler.__init__ assigns it
        pass


def parse_level(value: str | None) -> int:
    """A LOG_LEVEL value as a logging level; an unknown value is INFO (the
    settings loader reports the bad value by name on first use)."""
    level = logging.getLevelName((value or "INFO").strip().upper())
    return level if isinstance(level, int) else logging.INFO


def configure(level: str | int | None = None, *, stream: Any = None) -> logging.Logger:
    """Make the ``sessionsync`` logger write JSON lines at ``level``.

    ``level`` defaults to the LOG_LEVEL environment variable (INFO).  Lines
    go to ``stream``, or to the current ``sys.stderr``.  Idempotent: it
    replaces the handlers already on the logger (Chalice's plain-text one
    included) and stops propagation to the root logger, whose Lambda
    handler would print each line a second time in its own format.
    """
    logger = logging.getLogger(ROOT_LOGGER)
    handler = logging.StreamHandler(stream) if stream is not None else _StdStream("stderr")
    handler.setFormatter(JsonFormatter())
    for old in list(logger.handlers):
        logger.removeHandler(old)
    logger.addHandler(handler)
    logger.propagate = False
    if level is None:
        level = os.environ.get(LOG_LEVEL_ENV)
    logger.setLevel(level if isinstance(level, int) else parse_level(level))
    return logger


# --- DEBUG: each Redis command and SQL statement with its duration ----------

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
