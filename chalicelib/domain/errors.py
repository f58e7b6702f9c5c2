"""One error tree for sessionsync.

Every error a client or an operator can see is a ``SessionSyncError`` with a
stable machine-readable ``code`` (never renamed: clients switch on it), the
HTTP ``status`` it maps to, and its data in ``details`` (the body's), read
as attributes too (``Detail``: the expected and actual version of a
``ConcurrencyError``).  ``app.py`` turns
them into the one JSON error shape in one place (``chalicelib.api.web``).

Adapters (Redis, SQS, PostgreSQL) translate vendor exceptions into these with
``raise ... from exc`` so that domain code never catches a vendor type.
"""
from __future__ import annotations

from typing import Any, Generic, TypeVar, overload

T = TypeVar("T")


class SessionSyncError(Exception):
    """Base of every sessionsync error."""

    code = "InternalError"
    status = 500
    #: a client may retry the same request later and expect it to succeed
    retryable = False

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return body


class Detail(Generic[T]):
    """An error's attribute that reads its ``details`` entry (of the
    attribute's name, or ``key``): each value is stored once."""

    def __init__(self, key: str = "") -> None:
        self.key = key

    def __set_name__(self, owner: type, name: str) -> None:
        self.key = self.key or name

    @overload
    def __get__(self, error: None, owner: type) -> Detail[T]: ...
    @overload
    def __get__(self, error: SessionSyncError, owner: type) -> T: ...

    def __get__(self, error: SessionSyncError | None, owner: type) -> Detail[T] | T:
        if error is None:
            return self
        return error.details[self.key]

    def __set__(self, error: SessionSyncError, value: T) -> None:
        raise AttributeError(f"{self.key} is set by the error's constructor")


# --- client errors ---------------------------------------------------------

class ValidationError(SessionSyncError):
    """The request is malformed: bad JSON, wrong type, bad id, NUL in state..."""

    code = "ValidationError"
    status = 400


class PayloadTooLarge(ValidationError):
    code = "PayloadTooLarge"
    status = 413


class PreconditionRequired(ValidationError):
    """An update or delete came without expected_version / If-Match."""

    code = "PreconditionRequired"
    status = 428


class Unauthorized(SessionSyncError):
    code = "Unauthorized"
    status = 401


class Forbidden(SessionSyncError):
    code = "Forbidden"
    status = 403


class MissingScope(Forbidden):
    """The route needs a scope the caller's API key does not have (its
    scopes: chalicelib/domain/keys.py).  Answered before anything is read,
    so it says nothing about whether a session exists: another tenant's
    sessions are 404s, never 403s."""

    code = "MissingScope"
    scope: Detail[str] = Detail()

    def __init__(self, scope: str, granted: frozenset[str] | set[str]) -> None:
        super().__init__(f"this API key lacks the {scope!r} scope this route needs "
                         f"(it has: {', '.join(sorted(granted)) or 'none'})",
                         scope=scope, granted=sorted(granted))


class RouteNotFound(SessionSyncError):
    code = "RouteNotFound"
    status = 404


class MethodNotAllowed(SessionSyncError):
    code = "MethodNotAllowed"
    status = 405


class UnsupportedMediaType(SessionSyncError):
    """The request body is not declared as application/json."""

    code = "UnsupportedMediaType"
    status = 415


class SessionNotFound(SessionSyncError):
    code = "SessionNotFound"
    status = 404
    session_id: Detail[str] = Detail()
    deleted: Detail[bool] = Detail()

    def __init__(self, session_id: str, *, deleted: bool = False) -> None:
        message = (f"session {session_id!r} was deleted" if deleted
                   else f"session {session_id!r} does not exist")
        super().__init__(message, session_id=session_id, deleted=deleted)


class SessionExpired(SessionNotFound):
    """The session's lifetime ended (its TTL ran out with no write since):
    it is never served again, not even from PostgreSQL, and its id is not
    reused.  A 404 like any absent session, with a code of its own so that a
    client can tell "start a new session" from "wrong id"."""

    code = "SessionExpired"
    expires_at: Detail[str | None] = Detail()

    def __init__(self, session_id: str, *, expires_at: str | None = None) -> None:
        SessionSyncError.__init__(self, f"session {session_id!r} expired"
                                  + (f" at {expires_at}" if expires_at else "")
                                  + " (its lifetime ended; ids are never reused)",
                                  session_id=session_id, deleted=False, expires_at=expires_at)


class SessionExists(SessionSyncError):
    code = "SessionExists"
    status = 409
    session_id: Detail[str] = Detail()
    version: Detail[int] = Detail()
    deleted: Detail[bool] = Detail()

    def __init__(self, session_id: str, *, version: int, deleted: bool = False) -> None:
        super().__init__(
            f"session {session_id!r} already exists"
            + (" (deleted; ids are never reused)" if deleted else ""),
            session_id=session_id, version=version, deleted=deleted)


class ConcurrencyError(SessionSyncError):
    """The compare-and-set lost: the session is at another version."""

    code = "ConcurrencyError"
    status = 409
    session_id: Detail[str] = Detail()
    expected_version: Detail[int | None] = Detail()
    actual_version: Detail[int] = Detail()

    def __init__(self, session_id: str, *, expected_version: int | None, actual_version: int) -> None:
        super().__init__(
            f"session {session_id!r} is at version {actual_version}, "
            f"not the expected {expected_version}",
            session_id=session_id, expected_version=expected_version,
            actual_version=actual_version)


class KeptChanging(ConcurrencyError):
    """A write that applies to whatever version is current (a PATCH without
    If-Match, or with ``If-Match: *``) lost every one of its bounded
    compare-and-set attempts to other writers: still a 409
    ``ConcurrencyError`` (RFC 5789 section 2.2) with the details of the
    last attempt (the version it read, the version that beat it),
    retryable as any lost race, but no precondition of the client's failed."""

    def __init__(self, session_id: str, *, attempts: int, expected_version: int,
                 actual_version: int) -> None:
        SessionSyncError.__init__(
            self, f"session {session_id!r} kept changing: each of {attempts} attempts to apply the "
                  f"patch lost to another writer (the last read version {expected_version}, "
                  f"then found {actual_version}); retry",
            session_id=session_id, expected_version=expected_version, actual_version=actual_version)
        self.attempts = attempts  # in the message, not in details


class PreconditionFailed(ConcurrencyError):
    """A conditional header (RFC 9110 section 13) failed: ``If-Match`` named
    another version than the current one, ``If-Match: *`` found no live
    session, or ``If-None-Match: *`` found one.  A 412, where a body's
    ``expected_version`` that lost is a 409 ``ConcurrencyError``; a subclass
    of it, so that whoever retries a lost compare-and-set retries this too.
    ``actual_version`` is the current version, None when there is none."""

    code = "PreconditionFailed"
    status = 412
    actual_version: Detail[int | None] = Detail()  # type: ignore[assignment]
    precondition: Detail[str] = Detail()

    def __init__(self, session_id: str, *, precondition: str, expected_version: int | None,
                 actual_version: int | None, deleted: bool = False) -> None:
        current = (f"is at version {actual_version}" if actual_version is not None
                   else "was deleted" if deleted else "does not exist")
        SessionSyncError.__init__(
            self, f"{precondition} failed: session {session_id!r} {current}",
            session_id=session_id, precondition=precondition,
            expected_version=expected_version, actual_version=actual_version)


class IdempotencyKeyReused(SessionSyncError):
    """An Idempotency-Key already recorded for another request on this
    session (another method, body or precondition): nothing was written.
    A client must use a fresh key for a new request."""

    code = "IdempotencyKeyReused"
    status = 422
    session_id: Detail[str] = Detail()
    key: Detail[str] = Detail("idempotency_key")

    def __init__(self, session_id: str, key: str) -> None:
        super().__init__(f"Idempotency-Key {key!r} was already used for a different request on "
                         f"session {session_id!r}; send a new key for a new request",
                         session_id=session_id, idempotency_key=key)


class SessionLimitReached(SessionSyncError):
    """The tenant has TENANT_MAX_SESSIONS live sessions: a create waits
    until one ends (``retry_after_seconds``, the first lifetime to end) or
    is deleted.  Nothing was written."""

    code = "SessionLimitReached"
    status = 429
    retryable = True
    limit: Detail[int] = Detail()

    def __init__(self, tenant: str, *, limit: int, retry_after_seconds: float) -> None:
        super().__init__(f"tenant {tenant!r} has {limit} live sessions, its limit; a place frees "
                         f"up when one ends or is deleted (in {retry_after_seconds:.0f} s at most)",
                         tenant=tenant, limit=limit, retry_after_seconds=retry_after_seconds)


# --- dependency errors -----------------------------------------------------

class ServiceUnavailable(SessionSyncError):
    """A dependency (Redis, PostgreSQL, SQS) cannot be reached in time."""

    code = "ServiceUnavailable"
    status = 503
    retryable = True
    dependency: Detail[str] = Detail()

    def __init__(self, message: str, *, dependency: str, **details: Any) -> None:
        super().__init__(message, dependency=dependency, **details)


class RecoveryPending(ServiceUnavailable):
    """PostgreSQL has not yet persisted the last acknowledged version.

    Raised when a session's Redis key is gone and the durable copy is older
    than the version Redis last acknowledged: serving it would go back in
    time, so the client is told to retry once the pipeline caught up.
    """

    code = "RecoveryPending"

    def __init__(self, session_id: str, *, acknowledged_version: int, persisted_version: int) -> None:
        super().__init__(
            f"session {session_id!r} is being recovered: version "
            f"{acknowledged_version} is not persisted yet (have {persisted_version})",
            dependency="postgresql", session_id=session_id,
            acknowledged_version=acknowledged_version,
            persisted_version=persisted_version)


# --- configuration ---------------------------------------------------------

class ConfigurationError(SessionSyncError):
    """A setting is missing or malformed; ``setting`` names it."""

    code = "ConfigurationError"
    status = 500
    setting: Detail[str] = Detail()

    def __init__(self, setting: str, message: str, **details: Any) -> None:
        super().__init__(f"{setting}: {message}", setting=setting, **details)


# --- persistence (consumer side) -------------------------------------------

class PersistenceError(SessionSyncError):
    """A change could not be written to PostgreSQL.

    ``sqlstate`` and ``constraint`` come from the server when it gave them.
    """

    code = "PersistenceError"
    sqlstate: Detail[str | None] = Detail()
    constraint: Detail[str | None] = Detail()

    def __init__(self, message: str, *, sqlstate: str | None = None,
                 constraint: str | None = None, **details: Any) -> None:
        super().__init__(message, sqlstate=sqlstate, constraint=constraint, **details)


class RetryablePersistenceError(PersistenceError):
    """Connection lost, timeout, deadlock, serialization failure, shutdown."""

    code = "RetryablePersistenceError"
    retryable = True


class PermanentPersistenceError(PersistenceError):
    """Constraint violation (class 23), data exception (22): retrying cannot help."""

    code = "PermanentPersistenceError"


class MalformedMessage(PermanentPersistenceError):
    """An SQS message that is not a valid sessionsync change event."""

    code = "MalformedMessage"
