"""Client for the sessionsync HTTP API.

``Client`` (synchronous, urllib3) and ``AsyncClient`` (asyncio, httpx: the
``async`` extra; imported on first use, so the synchronous client never
loads httpx).  Both retry safely (an Idempotency-Key on every write,
Retry-After honoured, a bounded budget), run the conflict loop as one call
(``update``), send merge patches, accept stale reads (``max_stale``) and
page with cursors.  Errors are one class per API problem code (``errors``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sessionsync_client._protocol import RetryPolicy
from sessionsync_client._version import __version__
from sessionsync_client.client import Client
from sessionsync_client.errors import (
    ConcurrencyError,
    ConfigurationError,
    ForbiddenError,
    IdempotencyKeyReusedError,
    InternalServerError,
    MethodNotAllowedError,
    MissingScopeError,
    PayloadTooLargeError,
    PreconditionFailedError,
    PreconditionRequiredError,
    RecoveryPendingError,
    RouteNotFoundError,
    ServiceUnavailableError,
    SessionExistsError,
    SessionExpiredError,
    SessionLimitReachedError,
    SessionNotFoundError,
    SessionSyncError,
    TransportError,
    UnauthorizedError,
    UnsupportedMediaTypeError,
    ValidationError,
)
from sessionsync_client.models import Event, EventPage, Health, RevokeResult, Session, SessionPage

if TYPE_CHECKING:
    from sessionsync_client.aio import AsyncClient

__all__ = [
    "AsyncClient", "Client", "ConcurrencyError", "ConfigurationError", "Event", "EventPage",
    "ForbiddenError", "Health", "IdempotencyKeyReusedError", "InternalServerError",
    "MethodNotAllowedError", "MissingScopeError", "PayloadTooLargeError", "PreconditionFailedError",
    "PreconditionRequiredError", "RecoveryPendingError", "RetryPolicy", "RevokeResult",
    "RouteNotFoundError", "ServiceUnavailableError", "Session", "SessionExistsError",
    "SessionExpiredError", "SessionLimitReachedError", "SessionNotFoundError", "SessionPage",
    "SessionSyncError",
    "TransportError", "UnauthorizedError", "UnsupportedMediaTypeError", "ValidationError",
    "__version__",
]


def __getattr__(name: str) -> Any:
    # httpx only for those who use the async client
    if name == "AsyncClient":
        from sessionsync_client.aio import AsyncClient
        return AsyncClient
    raise AttributeError(f"module 'sessionsync_client' has no attribute {name!r}")
