"""What a PostgreSQL error means for the change that met it.

Errors are classified by SQLSTATE (the psycopg error class), never by
message text:

* retryable -> ``RetryablePersistenceError``: connection failures (class
  08, or no SQLSTATE at all: the socket is gone), query_canceled 57014
  (statement_timeout), admin/crash shutdown and cannot-connect-now
  57P01-57P03, serialization failure 40001, deadlock 40P01, lock timeout
  55P03, insufficient resources (class 53, e.g. too many connections).
  Anything not known to be permanent is retryable: SQS retries it and the
  redrive policy moves it to the DLQ after maxReceiveCount, so nothing is
  lost and a transient error never dead-letters a good change.
* permanent -> ``PermanentPersistenceError`` with ``sqlstate`` and
  ``constraint``: integrity constraint violation (class 23), data exception
  (class 22, e.g. ``\\u0000`` in jsonb: 22P05), program limit exceeded
  (class 54: a row that can never fit).
"""
from __future__ import annotations

import psycopg

from chalicelib.domain.errors import (
    PermanentPersistenceError,
    PersistenceError,
    RetryablePersistenceError,
)

PERMANENT_CLASSES = ("22", "23", "54")


def classify(exc: psycopg.Error) -> PersistenceError:
    """Map a psycopg error to Retryable- or PermanentPersistenceError.

    Decided by SQLSTATE only; the result's ``__cause__`` is ``exc`` and its
    ``details["error_class"]`` the psycopg class name (e.g. CheckViolation).
    """
    sqlstate = exc.sqlstate
    constraint = exc.diag.constraint_name
    message = exc.diag.message_primary
    if not message:
        text = str(exc).strip()
        message = text.splitlines()[0] if text else type(exc).__name__
    cls = (PermanentPersistenceError if sqlstate and sqlstate[:2] in PERMANENT_CLASSES
           else RetryablePersistenceError)
    error = cls(message, sqlstate=sqlstate, constraint=constraint, error_class=type(exc).__name__)
    error.__cause__ = exc  # kept when the caller raises it later
    return error


# -- what /health may say about a PostgreSQL error ---------------------------------

# libpq reports a failed connection without a SQLSTATE; its message is
# matched here only to choose one of these phrases, never shown
_LIBPQ_FAILURES = (
    ("timeout expired", "timed out"),
    ("authentication failed", "refused the credentials"),
    ("no pg_hba.conf entry", "refused the credentials"),
    ("does not exist", "database does not exist"),
    ("starting up", "starting up"),
    ("shutting down", "shutting down"),
    ("too many clients", "too many connections"),
    ("remaining connection slots", "too many connections"),
)
_PG_SQLSTATES = {"28P01": "refused the credentials", "28000": "refused the credentials",
                 "3D000": "database does not exist", "57P01": "shutting down",
                 "57P02": "shutting down", "57P03": "starting up",
                 "53300": "too many connections", "57014": "timed out",
                 "25006": "read-only (a standby)"}


def phrase(exc: BaseException) -> str | None:
    """What a public health report may say about a psycopg error (never its
    own text: it may carry host, user and database names), or None when
    ``exc`` is not one."""
    if isinstance(exc, psycopg.errors.ConnectionTimeout):
        return "timed out"
    if not isinstance(exc, psycopg.Error):
        return None
    if exc.sqlstate in _PG_SQLSTATES:
        return _PG_SQLSTATES[exc.sqlstate]
    if isinstance(exc, psycopg.OperationalError) and not exc.sqlstate:
        text = str(exc)
        for fragment, said in _LIBPQ_FAILURES:
            if fragment in text:
                return said
        return "unreachable"
    if isinstance(exc, psycopg.ProgrammingError) and not exc.sqlstate:
        return "connection settings are malformed"  # libpq refused the conninfo
    return "refused the query"
