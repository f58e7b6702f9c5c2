"""The one reader of a session route's request (app.py): the body and the
headers the routes share.

A header is parsed when a route first asks for it, so a route answers 400
only for a header it honours: a PATCH ignores If-None-Match as before.
"""
from __future__ import annotations

from functools import cached_property
from typing import Any

from chalicelib import config
from chalicelib.api import headers
from chalicelib.domain.errors import MissingScope, Unauthorized
from chalicelib.domain.idempotency import Idempotency, fingerprint
from chalicelib.domain.keys import FULL_ACCESS, Caller
from chalicelib.domain.validation import IfMatch, IfNoneMatch, MaxStale


class Request:
    """One HTTP request, as a session route reads it."""

    def __init__(self, request: Any) -> None:
        """``request``: Chalice's ``app.current_request``."""
        self.method: str = request.method
        self.body: bytes | None = request.raw_body
        #: API Gateway's request context (the stage in its ``path``)
        self.context: dict[str, Any] = request.context
        self._headers = request.headers  # case-insensitive

    def caller(self, scope: str) -> Caller:
        """Who sent the request (the authorizer's context: its key's tenant,
        id and scopes), once it is known to hold ``scope``: MissingScope
        (403) otherwise, before the route reads or writes anything.  Behind
        IAM (SESSIONSYNC_AUTH=iam) there is no key: the caller is the
        default tenant's, with every scope (IAM policies decide)."""
        caller = Caller.from_context(self.context.get("authorizer") or {})
        if caller is None:
            if config.auth_mode() != "iam":
                # the authorizer always sets it; without, nothing is known
                raise Unauthorized("no API key identified this request")
            caller = FULL_ACCESS
        if scope not in caller.scopes:
            raise MissingScope(scope, caller.scopes)
        return caller

    @cached_property
    def if_match(self) -> IfMatch | None:
        return headers.if_match(self._headers.get(headers.IF_MATCH))

    @cached_property
    def if_none_match(self) -> IfNoneMatch | None:
        return headers.if_none_match(self._headers.get(headers.IF_NONE_MATCH))

    @cached_property
    def max_stale(self) -> MaxStale | None:
        return headers.max_stale(self._headers.get(headers.CACHE_CONTROL))

    def merge_patch(self) -> bytes | None:
        """The body, declared as a merge patch (415 otherwise)."""
        headers.require_merge_patch(self._headers.get(headers.CONTENT_TYPE))
        return self.body

    def idempotency(self, path: str, *conditions: IfMatch | IfNoneMatch | None) -> Idempotency | None:
        """The write's Idempotency-Key (None: it sent none) with the
        fingerprint of the request: the method, ``path`` (the session id as
        validated), the body and the ``conditions`` the route honours."""
        key = headers.idempotency_key(self._headers.get(headers.IDEMPOTENCY_KEY))
        if key is None:
            return None
        # the names are part of the fingerprint recorded with a write: a
        # retry after a deploy must find the same one
        preconditions = {"if_match" if isinstance(c, IfMatch) else "if_none_match": c.header
                         for c in conditions if c is not None}
        return Idempotency(key, fingerprint(self.method, path, self.body, **preconditions))
