"""The asynchronous client, on httpx (``pip install 'sessionsync-client[async]'``).

The same calls as ``Client``, awaited; the same rules, from the same
``_protocol`` (retries, Idempotency-Keys, the conflict loop, paging).
"""
from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

import httpx

from sessionsync_client._protocol import (
    Apply,
    CursorLoop,
    NoAnswer,
    Operation,
    Protocol,
    Reply,
    Request,
    RetryPolicy,
    Send,
    Sleep,
    Version,
)
from sessionsync_client.models import Event, EventPage, Health, RevokeResult, Session, SessionPage

T = TypeVar("T")
#: ``update``'s change may also be a coroutine function
AsyncChange = Callable[[dict[str, Any]], dict[str, Any] | Awaitable[dict[str, Any] | None] | None]


class AsyncClient:
    """``Client`` for asyncio: ``async with AsyncClient(url, key) as sessions: ...``."""

    def __init__(self, base_url: str, api_key: str | None, *, timeout: float = 10.0,
                 retry: RetryPolicy | None = None, idempotency_keys: bool = True,
                 headers: Mapping[str, str] | None = None, max_connections: int = 100,
                 _http: httpx.AsyncClient | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._protocol = Protocol(api_key, retry or RetryPolicy(), idempotency_keys, dict(headers or {}))
        self._http = _http or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout), follow_redirects=False,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=20))

    def with_headers(self, headers: Mapping[str, str]) -> AsyncClient:
        """A client on the same connections that adds ``headers`` to every request."""
        protocol = self._protocol
        return AsyncClient(self.base_url, protocol.api_key, timeout=self.timeout, retry=protocol.retry,
                           idempotency_keys=protocol.idempotency_keys,
                           headers={**protocol.headers, **headers}, _http=self._http)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- the driver -----------------------------------------------------------

    async def _send(self, request: Request) -> Reply:
        try:
            response = await self._http.request(request.method, self.base_url + request.path,
                                                content=request.body, headers=request.headers)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise NoAnswer(str(exc) or type(exc).__name__, sent=False) from exc
        except httpx.TransportError as exc:  # a read or write timeout, a reset connection
            raise NoAnswer(str(exc) or type(exc).__name__, sent=True) from exc
        return Reply(response.status_code, {k.lower(): v for k, v in response.headers.items()},
                     response.content)

    async def _run(self, operation: Operation[T]) -> T:
        try:
            effect = next(operation)
            while True:
                if isinstance(effect, Send):
                    try:
                        reply = await self._send(effect.request)
                    except NoAnswer as exc:
                        effect = operation.throw(exc)
                        continue
                    effect = operation.send(reply)
                elif isinstance(effect, Sleep):
                    await asyncio.sleep(effect.seconds)
                    effect = operation.send(None)
                elif isinstance(effect, Apply):
                    result = effect.change(effect.state)
                    if inspect.isawaitable(result):
                        result = await result
                    effect = operation.send(effect.state if result is None else result)
                else:  # pragma: no cover - the protocol yields nothing else
                    raise TypeError(f"unknown effect {effect!r}")
        except StopIteration as done:
            return done.value

    # --- the API (as Client's) ----------------------------------------------------

    async def create(self, state: Mapping[str, Any], *, session_id: str | None = None,
                     ttl_seconds: int | None = None, owner_id: str | None = None,
                     idempotency_key: str | None = None) -> Session:
        return await self._run(self._protocol.create(state, session_id=session_id, ttl_seconds=ttl_seconds,
                                                     owner_id=owner_id, idempotency_key=idempotency_key))

    async def get(self, session_id: str, *, max_stale: int | bool | None = None) -> Session:
        return await self._run(self._protocol.get(session_id, max_stale=max_stale))

    async def refresh(self, session: Session) -> Session:
        return await self._run(self._protocol.refresh(session))

    async def put(self, session_id: str, state: Mapping[str, Any], version: Version | None, *,
                  ttl_seconds: int | None = None, idempotency_key: str | None = None) -> Session:
        return await self._run(self._protocol.put(session_id, state, version=version,
                                                  ttl_seconds=ttl_seconds, idempotency_key=idempotency_key))

    async def create_if_absent(self, session_id: str, state: Mapping[str, Any], *,
                               ttl_seconds: int | None = None, owner_id: str | None = None,
                               idempotency_key: str | None = None) -> Session:
        return await self._run(self._protocol.put(session_id, state, version=None, if_absent=True,
                                                  ttl_seconds=ttl_seconds, owner_id=owner_id,
                                                  idempotency_key=idempotency_key))

    async def update(self, session_id: str, change: AsyncChange, *, attempts: int = 16,
                     ttl_seconds: int | None = None) -> Session:
        return await self._run(self._protocol.update(session_id, change,  # type: ignore[arg-type]
                                                     attempts=attempts, ttl_seconds=ttl_seconds))

    async def patch(self, session_id: str, state_patch: Mapping[str, Any] | None = None, *,
                    version: Version | None = None, ttl_seconds: int | None = None,
                    idempotency_key: str | None = None) -> Session:
        return await self._run(self._protocol.patch(session_id, state_patch, version=version,
                                                    ttl_seconds=ttl_seconds, idempotency_key=idempotency_key))

    async def delete(self, session_id: str, *, version: Version | None = None,
                     idempotency_key: str | None = None) -> None:
        await self._run(self._protocol.delete(session_id, version=version, idempotency_key=idempotency_key))

    async def touch(self, session_id: str, *, ttl_seconds: int | None = None,
                    version: Version | None = None, idempotency_key: str | None = None) -> Session:
        return await self._run(self._protocol.touch(session_id, ttl_seconds=ttl_seconds, version=version,
                                                    idempotency_key=idempotency_key))

    async def history_page(self, session_id: str, *, cursor: str | None = None,
                           limit: int = 50) -> EventPage:
        return await self._run(self._protocol.history_page(session_id, cursor=cursor, limit=limit))

    async def history(self, session_id: str, *, page_size: int = 50) -> AsyncIterator[Event]:
        loop, cursor = CursorLoop(), None
        while True:
            page = await self.history_page(session_id, cursor=cursor, limit=page_size)
            for event in page.events:
                yield event
            if not loop.follow(page.next_cursor):
                return
            cursor = page.next_cursor

    async def owner_sessions_page(self, owner_id: str, *, cursor: str | None = None,
                                  limit: int = 50) -> SessionPage:
        return await self._run(self._protocol.owner_sessions_page(owner_id, cursor=cursor, limit=limit))

    async def owner_sessions(self, owner_id: str, *, page_size: int = 50) -> AsyncIterator[Session]:
        loop, cursor = CursorLoop(), None
        while True:
            page = await self.owner_sessions_page(owner_id, cursor=cursor, limit=page_size)
            for session in page.sessions:
                yield session
            if not loop.follow(page.next_cursor):
                return
            cursor = page.next_cursor

    async def revoke_all(self, owner_id: str, *, max_calls: int = 100) -> RevokeResult:
        return await self._run(self._protocol.revoke_all(owner_id, max_calls=max_calls))

    async def health(self) -> Health:
        return await self._run(self._protocol.health())
