"""The one reader of a session route's request (app.py): the body and the
headers the routes share.

A header is parsed when a route first asks for it, so a route answers 400
only for a header it honours: a PATCH ignores If-None-Match as before.
"""
from __future__ import annotations

from functools import cached_property
from typing import Any

from chalicelib.api import headers
from chalicelib.domain.idempotency import Idempotency, fingerprint
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
