"""One exception per problem code of the API, in the server's own tree.

Every error answer of sessionsync is RFC 9457 problem details with a stable
``code``; ``error_from_reply`` turns one into the class of that code (a code
this version does not know, or an answer that is not problem details, into
the base class with its HTTP status: the API may add codes in a minor
version).  ``TransportError`` is the one error that is not an answer: no
reply came within the retry budget.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


class SessionSyncError(Exception):
    """An error answer of the API (or, as ``TransportError``, none at all).

    ``status`` is the HTTP status, ``code`` the problem's stable code,
    ``details`` its ``error.details``, ``problem`` the whole body as parsed,
    ``request_id`` the answer's ``X-Request-Id`` (quote it to an operator).
    """

    #: the API's code for this class (the base class: any other)
    CODE: str | None = None

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 details: Mapping[str, Any] | None = None, problem: Mapping[str, Any] | None = None,
                 request_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code or self.CODE
        self.details: dict[str, Any] = dict(details or {})
        self.problem: dict[str, Any] = dict(problem or {})
        self.request_id = request_id

    def __str__(self) -> str:
        where = f" (request {self.request_id})" if self.request_id else ""
        return f"{self.code or self.status}: {self.message}{where}"


class TransportError(SessionSyncError):
    """No answer: a connection refused or reset, or a timeout, on the last
    attempt the retry budget allowed.  ``sent`` says whether the request may
    have reached the server (a write without an Idempotency-Key may then have
    happened)."""

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


class ValidationError(SessionSyncError):
    """400: the request is malformed; ``details["field"]`` names the culprit
    when there is one.  Nothing was written."""

    CODE = "ValidationError"


class PayloadTooLargeError(ValidationError):
    """413: the state is over the server's MAX_STATE_BYTES."""

    CODE = "PayloadTooLarge"


class PreconditionRequiredError(ValidationError):
    """428: an update named no version (neither If-Match nor expected_version)."""

    CODE = "PreconditionRequired"


class UnauthorizedError(SessionSyncError):
    """401: no API key was sent."""

    CODE = "Unauthorized"


class ForbiddenError(SessionSyncError):
    """403: the API key is not valid."""

    CODE = "Forbidden"


class MissingScopeError(ForbiddenError):
    """403: the API key is valid but lacks the scope the operation needs
    (``scope``; ``details["granted"]`` lists the key's).  Nothing was read
    or written."""

    CODE = "MissingScope"

    @property
    def scope(self) -> str | None:
        value = self.details.get("scope")
        return value if isinstance(value, str) else None


class RouteNotFoundError(SessionSyncError):
    """404 of a path the API does not have (check ``base_url``: a stage such
    as ``/dev`` belongs in it)."""

    CODE = "RouteNotFound"


class MethodNotAllowedError(SessionSyncError):
    """405: the path has no such method."""

    CODE = "MethodNotAllowed"


class UnsupportedMediaTypeError(SessionSyncError):
    """415: the body's Content-Type is not the one the route takes."""

    CODE = "UnsupportedMediaType"


class SessionNotFoundError(SessionSyncError):
    """404: no such session; ``deleted`` is true for a deleted one (ids are
    never reused)."""

    CODE = "SessionNotFound"

    @property
    def session_id(self) -> str | None:
        return self.details.get("session_id")

    @property
    def deleted(self) -> bool:
        return bool(self.details.get("deleted"))


class SessionExpiredError(SessionNotFoundError):
    """404: the session's lifetime ended (``expires_at``); start a new one."""

    CODE = "SessionExpired"

    @property
    def expires_at(self) -> str | None:
        return self.details.get("expires_at")


class SessionExistsError(SessionSyncError):
    """409 on a create: the id is taken, or was (``deleted``)."""

    CODE = "SessionExists"

    @property
    def session_id(self) -> str | None:
        return self.details.get("session_id")

    @property
    def deleted(self) -> bool:
        return bool(self.details.get("deleted"))


class ConcurrencyError(SessionSyncError):
    """409: another writer changed the session after it was read: read it
    again and re-apply the change (``Client.update`` does).  ``actual_version``
    is the version it is at."""

    CODE = "ConcurrencyError"

    @property
    def session_id(self) -> str | None:
        return self.details.get("session_id")

    @property
    def expected_version(self) -> int | None:
        return self.details.get("expected_version")

    @property
    def actual_version(self) -> int | None:
        return self.details.get("actual_version")


class PreconditionFailedError(ConcurrencyError):
    """412: the version sent as If-Match is not the current one (or
    ``if_absent`` found a session, ``version="*"`` none)."""

    CODE = "PreconditionFailed"


class IdempotencyKeyReusedError(SessionSyncError):
    """422: this Idempotency-Key was used for another request on the
    session; nothing was written."""

    CODE = "IdempotencyKeyReused"


class SessionLimitReachedError(SessionSyncError):
    """429: the key's tenant has as many live sessions as the server allows
    (``details["limit"]``); a create succeeds once one ends or is deleted
    (``details["retry_after_seconds"]`` at most).  Nothing was written."""

    CODE = "SessionLimitReached"


class ServiceUnavailableError(SessionSyncError):
    """503: a dependency of the service is down or settling; the retry
    budget ran out.  ``retry_after`` is the server's Retry-After, seconds."""

    CODE = "ServiceUnavailable"

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after

    @property
    def dependency(self) -> str | None:
        return self.details.get("dependency")


class RecoveryPendingError(ServiceUnavailableError):
    """503: the session is being recovered from PostgreSQL, which has not
    yet persisted its last version; retry shortly."""

    CODE = "RecoveryPending"


class ConfigurationError(SessionSyncError):
    """500: the service is misconfigured (an operator's problem)."""

    CODE = "ConfigurationError"


class InternalServerError(SessionSyncError):
    """500: an unexpected error in the service."""

    CODE = "InternalError"


def _classes(base: type[SessionSyncError]) -> list[type[SessionSyncError]]:
    found = []
    for sub in base.__subclasses__():
        found += [sub, *_classes(sub)]
    return found


#: the API's problem codes and their exception classes
BY_CODE: dict[str, type[SessionSyncError]] = {
    cls.CODE: cls for cls in _classes(SessionSyncError) if cls.CODE is not None}
# An answer without a code (not problem details: a proxy's, API Gateway's):
# the class its status means.
_BY_STATUS: dict[int, type[SessionSyncError]] = {
    401: UnauthorizedError, 403: ForbiddenError, 413: PayloadTooLargeError,
    503: ServiceUnavailableError}


def error_from_reply(status: int, headers: Mapping[str, str], body: bytes,
                     retry_after: float | None = None) -> SessionSyncError:
    """The exception for an error answer (``headers`` with lower-case names)."""
    problem: dict[str, Any] = {}
    try:
        parsed = json.loads(body) if body else None
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        problem = parsed
    error = problem.get("error")
    if not isinstance(error, dict):
        error = {}
    code = problem.get("code") or error.get("code")
    message = (problem.get("detail") or error.get("message") or problem.get("message")
               or (body[:200].decode("utf-8", "replace") if body else "")
               or f"HTTP {status}")
    details = error.get("details") if isinstance(error.get("details"), dict) else {}
    cls = BY_CODE.get(code) if isinstance(code, str) else None
    if cls is None:
        cls = _BY_STATUS.get(status, SessionSyncError)
    common: dict[str, Any] = {"status": status, "code": code if isinstance(code, str) else None,
                              "details": details, "problem": problem,
                              "request_id": headers.get("x-request-id")}
    if issubclass(cls, ServiceUnavailableError):
        return cls(str(message), retry_after=retry_after, **common)
    return cls(str(message), **common)
