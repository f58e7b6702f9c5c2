"""Structured logs: one JSON object per line, the request id on every line.

Every sessionsync module logs through the standard library
(``logging.getLogger("sessionsync.<module>")``, extra fields in
``extra={...}``); ``configure()`` gives the ``sessionsync`` logger one handler
that writes each record as a JSON line at LOG_LEVEL.  ``request_context()``
binds a request id (and any other fields) to every line logged while a
request or an SQS batch is handled, including from helper threads started
with ``contextvars.copy_context()``.

DEBUG traces of Redis commands and SQL statements are in ``tracing``; the
JSON line itself in ``formatter``.

Why the standard library and not ``aws_lambda_powertools.Logger``: its
import cost at every cold start, for what this module does (JSON lines, a
level, a correlation id); docs/decisions/no-powertools.md, figures in
docs/performance.md ("Observability without Powertools").
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any

from chalicelib.config import LOG_LEVEL
from chalicelib.observability.formatter import JsonFormatter

ROOT_LOGGER = "sessionsync"

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_context: ContextVar[Mapping[str, Any]] = ContextVar("sessionsync_log_context", default=_EMPTY)


def current_context() -> Mapping[str, Any]:
    """The fields bound by the innermost ``request_context`` (empty outside one)."""
    return _context.get()


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


# A caller's X-Request-Id: visible ASCII, no space, at most 128 characters
# (what goes into every log line and back into a header); anything else is
# ignored, never refused: a proxy on the way may have set it.
_CALLER_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")
# W3C Trace Context's traceparent: version, trace-id, parent-id, flags, in
# lower-case hex; version ff and all-zero ids are invalid, and a version
# after 00 may append fields (which a version 00 header may not).
_TRACEPARENT = re.compile(
    r"(?!ff)(?P<version>[0-9a-f]{2})-(?!0{32})(?P<trace_id>[0-9a-f]{32})"
    r"-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}(?P<more>-[\x21-\x7e]*)?")


def caller_ids(headers: Mapping[str, str] | None) -> tuple[str | None, str | None]:
    """(the caller's X-Request-Id, the caller's traceparent), each None when
    absent or malformed."""
    if not headers:
        return None, None
    request_id = (headers.get("x-request-id") or "").strip(" \t")
    traceparent = (headers.get("traceparent") or "").strip(" \t")
    trace = _TRACEPARENT.fullmatch(traceparent)
    if trace is not None and trace["version"] == "00" and trace["more"]:
        trace = None
    return (request_id if _CALLER_REQUEST_ID.fullmatch(request_id) else None,
            traceparent if trace is not None else None)


def invocation_ids(event: Any) -> tuple[str, dict[str, Any]]:
    """(request id, fields to bind) for a Chalice event object.

    HTTP: the caller's ``X-Request-Id`` when it sent one, else the trace id
    of its W3C ``traceparent`` (then also bound as ``trace_id``), else API
    Gateway's ``requestContext.requestId`` (the id a client sees as
    ``x-amzn-RequestId``, bound as ``api_request_id`` when the caller's id
    is used); plus Lambda's ``aws_request_id`` and the route.
    Any other event (SQS, schedule): Lambda's ``aws_request_id``.  Neither
    exists under ``chalice local`` or a local worker's fake context: a
    random id then, so lines of one invocation still group together.
    """
    fields: dict[str, Any] = {}
    request_context = getattr(event, "context", None)
    lambda_context = getattr(event, "lambda_context", None)
    caller_id = None
    if isinstance(request_context, Mapping):  # an HTTP request
        api_id = request_context.get("requestId")
        aws_id = getattr(lambda_context, "aws_request_id", None)
        method = request_context.get("httpMethod")
        if method:
            fields["route"] = f"{method} {request_context.get('resourcePath', '')}"
        caller_id, traceparent = caller_ids(getattr(event, "headers", None))
        if traceparent is not None:
            fields["trace_id"] = traceparent.split("-")[1]
            caller_id = caller_id or fields["trace_id"]
        if caller_id and api_id:
            fields["api_request_id"] = api_id
        # the caller's key (the authorizer's context): its tenant and key id
        # on every line of the request, never the key
        authorizer = request_context.get("authorizer")
        if isinstance(authorizer, Mapping):
            for name in ("tenant", "key_id"):
                if isinstance(authorizer.get(name), str):
                    fields[name] = authorizer[name]
    else:
        api_id = None
        aws_id = getattr(request_context, "aws_request_id", None)
    if aws_id:
        fields["aws_request_id"] = aws_id
    return str(caller_id or api_id or aws_id or uuid.uuid4()), fields


_invocation_log = logging.getLogger(f"{ROOT_LOGGER}.invocation")


def around_invocation(event: Any, handle: Any) -> Any:
    """The body of app.py's middleware: run ``handle(event)`` inside the
    invocation's request context.

    HTTP responses get an ``X-Request-Id`` header with the id the lines
    carry, and the caller's ``traceparent`` back when it sent a valid one
    (so that a client can tie the answer to its trace).  At DEBUG one line
    per invocation gives its duration and status.
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
        traceparent = caller_ids(getattr(event, "headers", None))[1]
        if traceparent is not None:
            response.headers["traceparent"] = traceparent
    return response


def per_invocation(handler: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Wrap a handler so that each call binds a fresh request id, as each
    Lambda invocation has one (the local worker calls the consumer so)."""
    @functools.wraps(handler)
    def invoke(event: Any) -> Any:
        with request_context(str(uuid.uuid4())):
            return handler(event)
    return invoke


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
    handler.setFormatter(JsonFormatter(current_context))
    for old in list(logger.handlers):
        logger.removeHandler(old)
    logger.addHandler(handler)
    logger.propagate = False
    if level is None:
        level = os.environ.get(LOG_LEVEL)  # alone: a bad other setting must not stop the logs
    logger.setLevel(level if isinstance(level, int) else parse_level(level))
    return logger
